"""Mappings of numpy arrays <-> lm_model (marshalling only)."""
import ctypes
import logging

import numpy as np

from . import _lib
from ._context import L
from ._tensor import BF16, F16, F32, F64, prepare, to_numpy


class LazyTensor:
    """A tensor whose values are read only when the library merges it
    (lm_model_add_lazy): `read(name)` returns an array of `shape` and
    `dtype` (numpy float32/float16/float64, or "bf16" for bfloat16 bit
    patterns as uint16). Use it as a value of a model mapping to keep a
    large model out of memory: each tensor is read once per use, from the
    library's worker threads, and dropped after its merge."""

    _CODES = {"f32": F32, "float32": F32, "f16": F16, "float16": F16,
              "bf16": BF16, "bfloat16": BF16, "f64": F64, "float64": F64}

    def __init__(self, shape, dtype, read):
        self.shape = tuple(int(d) for d in shape)
        key = dtype if isinstance(dtype, str) else np.dtype(dtype).name
        if key not in self._CODES:
            raise TypeError("LazyTensor dtype must be float32, float16, float64 or "
                            "bf16, got %r" % (dtype,))
        self.code = self._CODES[key]
        self.read = read


def _add_lazy(ctx, model, name, lazy, keep):
    def on_read(c_name, dst, nbytes, user):
        try:
            values = np.ascontiguousarray(lazy.read(c_name.decode()))
            if values.nbytes != nbytes or values.shape != lazy.shape:
                raise ValueError("read returned shape %s (%d bytes), declared %s "
                                 "(%d bytes)" % (values.shape, values.nbytes, lazy.shape,
                                                 nbytes))
            ctypes.memmove(dst, values.ctypes.data, nbytes)
            return 0
        except BaseException as e:
            msg = ("lazy tensor %r: %s: %s" % (c_name.decode(errors="replace"),
                                               type(e).__name__, e))
            # The library reports which tensor failed; the Python reason
            # goes to the "libmerge" logger as well, in case the library's
            # message does not carry it.
            logging.getLogger("libmerge").error("%s", msg)
            return L.lm_context_set_error(ctx.ptr, -11, b"%s", msg.encode("utf-8", "replace"))

    callback = _lib.TENSOR_READ_FN(on_read)
    keep.append(callback)
    shape = (ctypes.c_int64 * max(len(lazy.shape), 1))(*lazy.shape)
    ctx.check(L.lm_model_add_lazy(model, name.encode(), lazy.code, len(lazy.shape), shape,
                                  callback, None))


def build_model(ctx, mapping, what, keep):
    """An lm_model wrapping the arrays of `mapping` without copying them;
    the arrays are appended to `keep` so they outlive the model. A
    LazyTensor value is read on demand."""
    model = ctypes.c_void_p()
    ctx.check(L.lm_model_create(ctx.ptr, ctypes.byref(model)))
    try:
        for name, value in mapping.items():
            if not isinstance(name, str):
                raise TypeError("%s: tensor names must be str, got %r" %
                                (what, name))
            if isinstance(value, LazyTensor):
                _add_lazy(ctx, model, name, value, keep)
                continue
            array, code = prepare(name, value)
            keep.append(array)
            shape = (ctypes.c_int64 * max(array.ndim, 1))(*array.shape)
            tensor = ctypes.c_void_p()
            ctx.check(L.lm_tensor_wrap(
                ctx.ptr, code, array.ndim, shape,
                ctypes.c_void_p(array.ctypes.data), array.nbytes,
                ctypes.byref(tensor)))
            st = L.lm_model_add(model, name.encode(), tensor)
            if st:
                L.lm_tensor_destroy(tensor)
                ctx.check(st)
    except BaseException:
        L.lm_model_destroy(model)
        raise
    return model


def model_to_dict(model, base):
    """name -> new numpy array for every tensor of an lm_model; bf16
    results take the kind of the same-named array of `base`."""
    result = {}
    for i in range(L.lm_model_count(model)):
        name = L.lm_model_name_at(model, i).decode()
        like = base[name] if isinstance(base.get(name), np.ndarray) else None
        result[name] = to_numpy(L, L.lm_model_at(model, i), like)
    return result
