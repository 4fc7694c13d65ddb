"""Model files from Python: `load` any format libmerge reads and `save` to
safetensors, GGUF or .npz (chosen by the file extension)."""
import ctypes
import os

from . import _build_model, _Context, _L, _model_to_dict

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
    keep = []
    with _Context(threads=1) as ctx:
        model = _build_model(ctx, tensors, "tensors", keep)
        try:
            # The library's format table picks the writer by extension.
            ctx.check(_model_save()(ctx.ptr, model, os.fsencode(path),
                                    _SAVE_COMPRESS if compress else 0))
        finally:
            _L.lm_model_destroy(model)


_SAVE_COMPRESS = 1  # LM_SAVE_COMPRESS


def _model_save():
    fn = _L.lm_model_save
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p,
                   ctypes.c_uint]
    return fn
