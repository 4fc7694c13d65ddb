"""numpy arrays <-> lm_tensor."""
import ctypes

import numpy as np

F32, F16, BF16, F64 = 0, 1, 2, 3
_NUMPY_CODES = {np.dtype(np.float32): F32, np.dtype(np.float16): F16,
                np.dtype(np.float64): F64}
_CODE_NUMPY = {F32: np.float32, F16: np.float16, F64: np.float64,
               BF16: np.uint16}


class BFloat16Array(np.ndarray):
    """bfloat16 values stored as their 16-bit patterns (dtype uint16).

    numpy has no bfloat16; this subclass marks uint16 storage as bf16 so
    libmerge reads it as such. Make one with `libmerge.to_bfloat16(x)` or
    `BFloat16Array.from_bits(u16)`; read values with
    `libmerge.from_bfloat16(a)`."""

    @classmethod
    def from_bits(cls, bits):
        bits = np.asarray(bits)
        if bits.dtype != np.uint16:
            raise TypeError("BFloat16Array.from_bits needs uint16 bit "
                            "patterns, got %s" % bits.dtype)
        return bits.view(cls)

    def __array_finalize__(self, obj):
        pass


def is_ml_dtypes_bf16(dtype):
    return dtype.name == "bfloat16" and dtype.itemsize == 2


def dtype_code(name, array):
    """libmerge dtype code for an array, or TypeError naming the tensor."""
    if isinstance(array, BFloat16Array):
        return BF16
    if is_ml_dtypes_bf16(array.dtype):
        return BF16
    code = _NUMPY_CODES.get(array.dtype)
    if code is not None:
        return code
    if array.dtype == np.uint16:
        raise TypeError(
            "tensor %r is uint16: ambiguous; wrap bfloat16 bit patterns with "
            "libmerge.BFloat16Array.from_bits(...)" % name)
    raise TypeError("tensor %r has dtype %s; libmerge takes float32, "
                    "float16, float64 and bfloat16" % (name, array.dtype))


def prepare(name, value):
    """A C-contiguous, aligned array ready to wrap (a copy only if needed)
    and its dtype code."""
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    code = dtype_code(name, array)
    if not (array.flags.c_contiguous and array.flags.aligned):
        array = array.copy(order="C")
    return array, code


def to_numpy(lib, tensor, like):
    """Copy an lm_tensor into a new numpy array; bf16 results take the
    kind of the base array `like` (BFloat16Array or ml_dtypes)."""
    code = lib.lm_tensor_dtype(tensor)
    shape_ptr = lib.lm_tensor_shape(tensor)
    shape = tuple(shape_ptr[i] for i in range(lib.lm_tensor_ndim(tensor)))
    out = np.empty(shape, dtype=_CODE_NUMPY[code])
    nbytes = lib.lm_tensor_nbytes(tensor)
    # The copy below trusts the library's size; a disagreement is a bug.
    if nbytes != lib.lm_tensor_numel(tensor) * lib.lm_dtype_size(code) or nbytes != out.nbytes:
        raise RuntimeError("libmerge: tensor of %s %s reports %d bytes" % (
            lib.lm_dtype_name(code).decode(), shape, nbytes))
    if nbytes:
        ctypes.memmove(out.ctypes.data, lib.lm_tensor_cdata(tensor), nbytes)
    if code == BF16:
        if like is not None and is_ml_dtypes_bf16(like.dtype):
            return out.view(like.dtype)
        return out.view(BFloat16Array)
    return out
