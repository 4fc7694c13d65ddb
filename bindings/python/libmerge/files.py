"""Model files from Python: `load` any format libmerge reads and `save` to
safetensors, GGUF or .npz (chosen by the file extension); `describe` a file
without reading its data; `open_input` for a path that may hold a model or
a LoRA adapter."""
import ctypes
import os

from . import _build_model, _Context, _L, _lib, _model_to_dict
from ._context import options as _options
from ._models import LazyTensor  # noqa: F401  (libmerge.files.LazyTensor)

__all__ = ["load", "save"]

_READERS = {"safetensors": "lm_safetensors_read", "gguf": "lm_gguf_read",
            "npz": "lm_npz_read"}


def _open(ctx, path, format):
    model = ctypes.c_void_p()
    if format is None:
        reader = _L.lm_model_open  # the library's format table
    elif format in _READERS:
        reader = getattr(_L, _READERS[format])
    else:
        raise ValueError("format must be None or one of %s" % sorted(_READERS))
    ctx.check(reader(ctx.ptr, os.fsencode(path), ctypes.byref(model)))
    return model


def load(path, *, format=None, names=None):
    """name -> numpy array (copies) from a safetensors file or sharded
    directory, a GGUF file or an .npz archive. bfloat16 tensors come back as
    libmerge.BFloat16Array. format: "safetensors", "gguf" or "npz" reads the
    file as that whatever its name (default: recognised by the library).
    names: only these tensors (the others' data is never read); a missing
    name raises NotFoundError."""
    with _Context(threads=1) as ctx:
        model = _open(ctx, path, format)
        try:
            if names is None:
                return _model_to_dict(model, {})
            from ._tensor import to_numpy
            out = {}
            for name in names:
                t = ctypes.c_void_p()
                ctx.check(_L.lm_model_find(model, name.encode(), ctypes.byref(t)))
                out[name] = to_numpy(_L, t, None)
            return out
        finally:
            _L.lm_model_destroy(model)


def describe(path, *, format=None):
    """What a model file holds, without reading tensor data: a dict with
    "tensors" (name -> {"dtype": "f32"|..., "shape": tuple, "gguf_type":
    the GGUF storage type such as "Q8_0", or None}) and "metadata" (the
    file's string key/values: safetensors __metadata__, GGUF string keys)."""
    with _Context(threads=1) as ctx:
        model = _open(ctx, path, format)
        try:
            tensors = {}
            for i in range(_L.lm_model_count(model)):
                name = _L.lm_model_name_at(model, i)
                t = _L.lm_model_at(model, i)
                gtype = _L.lm_gguf_tensor_type(model, name)
                tensors[name.decode()] = {
                    "dtype": _L.lm_dtype_name(_L.lm_tensor_dtype(t)).decode(),
                    "shape": tuple(_L.lm_tensor_dim(t, d) for d in range(_L.lm_tensor_ndim(t))),
                    "gguf_type": gtype.decode() if gtype else None}
            return {"tensors": tensors, "metadata": _metadata(ctx, model)}
        finally:
            _L.lm_model_destroy(model)


def _metadata(ctx, model):
    out = {}
    for i in range(_L.lm_model_metadata_count(model)):
        k, v = ctypes.c_char_p(), ctypes.c_char_p()
        ctx.check(_L.lm_model_metadata_at(model, i, ctypes.byref(k), ctypes.byref(v)))
        out[k.value.decode()] = v.value.decode(errors="replace")
    return out


def metadata_value(path, key, *, format=None):
    """One metadata value of a model file, or None when absent."""
    with _Context(threads=1) as ctx:
        model = _open(ctx, path, format)
        try:
            v = ctypes.c_char_p()
            if _L.lm_model_metadata_find(model, key.encode(), ctypes.byref(v)):
                _L.lm_context_clear_error(ctx.ptr)
                return None
            return v.value.decode(errors="replace")
        finally:
            _L.lm_model_destroy(model)


def open_input(path):
    """A path as the library's input opener sees it (lm_input_open): a
    model file or directory gives a name -> array dict, a LoRA adapter (a
    PEFT directory, a GGUF adapter) a libmerge.LoraAdapter."""
    from .nsc import LoraAdapter
    with _Context(threads=1) as ctx:
        model, lora = ctypes.c_void_p(), ctypes.c_void_p()
        ctx.check(_L.lm_input_open(ctx.ptr, os.fsencode(path), ctypes.byref(model),
                                   ctypes.byref(lora)))
        try:
            if lora:
                return LoraAdapter._from_c(lora)
            return _model_to_dict(model, {})
        finally:
            _L.lm_model_destroy(model)
            _L.lm_lora_destroy(lora)


def save(path, tensors, *, compress=False, metadata=None):
    """Write name -> array to `path`: ".safetensors", ".gguf" or ".npz"
    (compress=True deflates the members, like np.savez_compressed; bfloat16
    is widened to float32 there). metadata: string key/values stored with
    the tensors (safetensors __metadata__, GGUF string keys; .npz has no
    room for them). Written under a temporary name and renamed, so a
    failure leaves no partial file."""
    keep = []
    p = os.fsencode(path)
    with _Context(threads=1) as ctx:
        model = _build_model(ctx, tensors, "tensors", keep)
        try:
            if not metadata:
                # The library's format table picks the writer by extension.
                ctx.check(_L.lm_model_save(ctx.ptr, model, p,
                                           _SAVE_COMPRESS if compress else 0))
                return
            keys = [str(k).encode() for k in metadata]
            values = [str(v).encode() for v in metadata.values()]
            karr = (ctypes.c_char_p * len(keys))(*keys)
            varr = (ctypes.c_char_p * len(values))(*values)
            if p.endswith(b".safetensors"):
                opts = _options(_lib._SafetensorsSinkOptions)
                writer = _L.lm_safetensors_write
            elif p.endswith(b".gguf"):
                opts = _options(_lib._GgufOptions)
                writer = _L.lm_gguf_write
            else:
                raise ValueError("%s: metadata is written to .safetensors and .gguf "
                                 "files only" % os.fsdecode(path))
            opts.metadata_keys, opts.metadata_values = karr, varr
            opts.n_metadata = len(keys)
            ctx.check(writer(ctx.ptr, model, p, ctypes.byref(opts)))
        finally:
            _L.lm_model_destroy(model)


def save_npz(path, tensors, *, compress=False):
    """Write name -> array to an .npz archive whatever the name of `path`
    (lm_npz_write)."""
    keep = []
    with _Context(threads=1) as ctx:
        model = _build_model(ctx, tensors, "tensors", keep)
        try:
            opts = _options(_lib._NpzOptions)
            opts.compress = 1 if compress else 0
            ctx.check(_L.lm_npz_write(ctx.ptr, model, os.fsencode(path), ctypes.byref(opts)))
        finally:
            _L.lm_model_destroy(model)


_SAVE_COMPRESS = 1  # LM_SAVE_COMPRESS
