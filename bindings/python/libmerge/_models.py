"""Mappings of numpy arrays <-> lm_model (marshalling only)."""
import ctypes

import numpy as np

from ._context import L
from ._tensor import prepare, to_numpy


def build_model(ctx, mapping, what, keep):
    """An lm_model wrapping the arrays of `mapping` without copying them;
    the arrays are appended to `keep` so they outlive the model."""
    model = ctypes.c_void_p()
    ctx.check(L.lm_model_create(ctx.ptr, ctypes.byref(model)))
    try:
        for name, value in mapping.items():
            if not isinstance(name, str):
                raise TypeError("%s: tensor names must be str, got %r" %
                                (what, name))
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
