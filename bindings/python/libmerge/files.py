"""Model files from Python: `load` any format libmerge reads and `save` to
safetensors, GGUF or .npz (chosen by the file extension)."""
import ctypes
import os

from . import _build_model, _Context, _L, _lib, _model_to_dict

__all__ = ["load", "save"]


def load(path):
    """name -> numpy array (copies) from a safetensors file or sharded
    directory, a GGUF file or an .npz archive. bfloat16 tensors come back as
    libmerge.BFloat16Array."""
    with _Context(threads=1) as ctx:
        model = ctypes.c_void_p()
        ctx.check(_L.lm_model_open(ctx.ptr, os.fsencode(path), ctypes.byref(model)))
        try:
            return _model_to_dict(model, {})
        finally:
            _L.lm_model_destroy(model)


def save(path, tensors, *, compress=False):
    """Write name -> array to `path`: ".safetensors", ".gguf" or ".npz"
    (compress=True deflates the members, like np.savez_compressed; bfloat16
    is widened to float32 there). Written under a temporary name and
    renamed, so a failure leaves no partial file."""
    ext = os.path.splitext(os.fspath(path))[1]
    writers = {".safetensors": "lm_safetensors_write", ".gguf": "lm_gguf_write",
               ".npz": "lm_npz_write"}
    if ext not in writers:
        raise ValueError("save: unknown extension %r (use .safetensors, .gguf "
                         "or .npz)" % ext)
    keep = []
    with _Context(threads=1) as ctx:
        model = _build_model(ctx, tensors, "tensors", keep)
        try:
            opts = None
            if ext == ".npz":
                opts = ctypes.byref(_lib._NpzOptions(ctypes.sizeof(_lib._NpzOptions),
                                                     int(bool(compress))))
            ctx.check(getattr(_L, writers[ext])(ctx.ptr, model, os.fsencode(path), opts))
        finally:
            _L.lm_model_destroy(model)
