"""libmerge.Stats: activation statistics (lm_stats). The held-out split
and the K folds are the library's (lm_stats_set_split, docs/stats.md);
this module only marshals arrays and pointers."""
import ctypes
import os

import numpy as np

from . import _lib
from ._context import Context, L, options
from ._tensor import BFloat16Array, prepare

__all__ = ["Stats"]


class Stats:
    """Activation statistics: per (model index, tensor name), the input
    second moment X^T X (float64) and the row count, for strategies that
    use them (ESM, purification, NSC).

        stats = libmerge.Stats()
        stats.observe(0, "fc1.weight", inputs)   # rows fed to that layer
        libmerge.merge("esm", base, models, stats=stats)

    Thread-safe to observe from several threads (with folds, calls for
    the same tensor must not overlap)."""

    def __init__(self, heldout_fraction=0.0, folds=0, _ptr=None, _ctx=None):
        """heldout_fraction > 0 sets aside rows of every observed batch,
        deterministically (row i when i % k == k - 1, k = round(1 /
        fraction)), in `self.heldout` (a Stats) for held-out tuning.

        folds = K >= 2 keeps every row here and also splits the rows into
        `self.folds` (K Stats; row j of a key's stream goes to fold j mod
        K, whatever the batch sizes) for K-fold tuning with
        purify={"keep": "cv"}: every row is held out once. Costs K extra
        copies of each key's d_in x d_in matrix."""
        self._owner = None
        self._ctx = _ctx or Context(threads=1)
        self._ptr = _ptr
        if self._ptr is None:
            self._ptr = ctypes.c_void_p()
            self._ctx.check(L.lm_stats_create(self._ctx.ptr, ctypes.byref(self._ptr)))
        folds = int(folds)
        if folds < 0:
            raise ValueError("folds must be 0 (none) or at least 2")
        if heldout_fraction or folds:
            split = options(_lib._StatsSplitOptions)
            split.heldout_fraction = float(heldout_fraction)
            split.folds = folds
            self._ctx.check(L.lm_stats_set_split(self._ptr, ctypes.byref(split)))
        self._attach_parts()

    @classmethod
    def _part(cls, ptr, owner):
        """A Stats viewing a held-out part or fold owned by `owner`."""
        part = cls.__new__(cls)
        part._owner, part._ctx, part._ptr = owner, owner._ctx, ctypes.c_void_p(ptr)
        part._heldout, part._folds = None, None
        return part

    def _attach_parts(self):
        held = L.lm_stats_heldout(self._ptr)
        self._heldout = Stats._part(held, self) if held else None
        k = L.lm_stats_fold_count(self._ptr)
        self._folds = [Stats._part(L.lm_stats_fold_at(self._ptr, f), self)
                       for f in range(k)] if k else None

    @property
    def heldout(self):
        """The held-out rows (a Stats), or None."""
        return self._heldout

    @property
    def folds(self):
        """The K folds (a list of Stats), or None."""
        return self._folds

    def __del__(self):
        if getattr(self, "_owner", None) is not None:
            return  # a part: its owner frees it
        ptr = getattr(self, "_ptr", None)
        if ptr:
            L.lm_stats_destroy(ptr)
            self._ptr = None
        ctx = getattr(self, "_ctx", None)
        if ctx is not None:
            ctx.close()

    def observe(self, model_index, tensor_name, inputs):
        """Add the rows `inputs` (shape (n, d_in), or (..., d_in): leading
        dimensions are flattened) fed to the linear layer whose weight is
        `tensor_name` in model `model_index`."""
        x = np.asarray(inputs)
        if x.ndim == 0:
            raise ValueError("inputs for %r must have a feature dimension" %
                             tensor_name)
        if (x.dtype in (np.float16, np.float64) or x.dtype.name == "bfloat16" or
                isinstance(x, BFloat16Array)):
            # f16, bf16 and f64 rows go to the library as they are
            # (lm_stats_observe_tensor converts them), without a copy here.
            rows, code = prepare(tensor_name, x.reshape(-1, x.shape[-1]))
            shape = (ctypes.c_int64 * 2)(*rows.shape)
            t = ctypes.c_void_p()
            self._ctx.check(L.lm_tensor_wrap(self._ctx.ptr, code, 2, shape,
                                             ctypes.c_void_p(rows.ctypes.data), rows.nbytes,
                                             ctypes.byref(t)))
            try:
                self._ctx.check(L.lm_stats_observe_tensor(self._ptr, int(model_index),
                                                          tensor_name.encode(), t))
            finally:
                L.lm_tensor_destroy(t)
            return
        x = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
        self._ctx.check(L.lm_stats_observe(
            self._ptr, int(model_index), tensor_name.encode(),
            ctypes.c_void_p(x.ctypes.data), x.shape[0], x.shape[1]))

    def add_gram(self, model_index, tensor_name, gram, n_rows):
        """Add a precomputed X^T X (d_in x d_in) over `n_rows` rows to a key,
        as observing those rows would (e.g. statistics reduced elsewhere).
        Goes to this object only, not to its held-out part or folds."""
        g = np.ascontiguousarray(gram, dtype=np.float64)
        if g.ndim != 2 or g.shape[0] != g.shape[1]:
            raise ValueError("gram for %r must be square, got shape %s" % (tensor_name, g.shape))
        self._ctx.check(L.lm_stats_add_gram(
            self._ptr, int(model_index), tensor_name.encode(),
            g.ctypes.data_as(ctypes.POINTER(ctypes.c_double)), g.shape[0], int(n_rows)))

    def get(self, model_index, tensor_name):
        """(X^T X as a new float64 array, row count) for a key."""
        gram = ctypes.POINTER(ctypes.c_double)()
        d = ctypes.c_size_t()
        n = ctypes.c_uint64()
        self._ctx.check(L.lm_stats_find(self._ptr, int(model_index),
                                       tensor_name.encode(),
                                       ctypes.byref(gram), ctypes.byref(d),
                                       ctypes.byref(n)))
        out = np.empty((d.value, d.value), dtype=np.float64)
        ctypes.memmove(out.ctypes.data, gram, out.nbytes)
        return out, n.value

    def keys(self):
        """[(model_index, tensor_name), ...] in first-observation order."""
        keys = []
        for i in range(L.lm_stats_count(self._ptr)):
            m = ctypes.c_size_t()
            name = ctypes.c_char_p()
            self._ctx.check(L.lm_stats_at(self._ptr, i, ctypes.byref(m),
                                           ctypes.byref(name)))
            keys.append((m.value, name.value.decode()))
        return keys

    def __len__(self):
        return L.lm_stats_count(self._ptr)

    def merge(self, other):
        """Add another Stats into this one (data-parallel collection),
        with its held-out rows and folds when both have the same kind."""
        self._ctx.check(L.lm_stats_merge(self._ptr, other._ptr))
        return self

    def save(self, path):
        """Write to a checksummed file (crash-safe); held-out rows and folds
        go to companion files PATH.heldout and PATH.fold<k>."""
        self._ctx.check(L.lm_stats_save(self._ptr, os.fsencode(path)))

    @classmethod
    def load(cls, path):
        """Read a file written by save(), with its companion files."""
        ctx = Context(threads=1)
        ptr = ctypes.c_void_p()
        try:
            ctx.check(L.lm_stats_load(ctx.ptr, os.fsencode(path), ctypes.byref(ptr)))
        except BaseException:
            ctx.close()
            raise
        return cls(_ptr=ptr, _ctx=ctx)
