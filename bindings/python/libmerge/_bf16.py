"""bfloat16 conversions (numpy has no bfloat16; see BFloat16Array)."""
import ctypes

import numpy as np

from ._context import L
from ._errors import error_for
from ._tensor import BF16, F32, F64, BFloat16Array


def to_bfloat16(values):
    """Round float values to bfloat16 (nearest, ties to even; float64 is
    rounded once, not through float32). Returns a BFloat16Array."""
    src = np.asarray(values)
    src_code = F64 if src.dtype == np.float64 else F32
    src = np.ascontiguousarray(src, dtype=np.float64 if src_code == F64
                               else np.float32)
    out = np.empty(src.shape, dtype=np.uint16)
    st = L.lm_convert(ctypes.c_void_p(src.ctypes.data), src_code,
                      ctypes.c_void_p(out.ctypes.data), BF16, src.size)
    if st:
        raise error_for(st, L.lm_strerror(st).decode())
    return out.view(BFloat16Array)


def from_bfloat16(values):
    """float32 values of bfloat16 bit patterns (BFloat16Array, uint16 or
    an ml_dtypes bfloat16 array); exact."""
    bits = np.asarray(values).view(np.uint16)
    return (bits.astype(np.uint32) << 16).view(np.float32)
