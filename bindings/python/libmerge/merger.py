"""Merger: merging at load time, tensor by tensor (lm_merger), for loaders
that read the base model themselves (inference servers, streaming
readers). Thread-safe: several loader threads may call apply at once
(ctypes releases the GIL during the C call, so the merges run in
parallel).

    with libmerge.Merger("ties", [ft_a, ft_b], density=0.5) as merger:
        for name, array in my_loader():           # any order, any thread
            weights[name] = merger.apply(name, array)

The result for every tensor is bit-identical to `libmerge.merge` with
that tensor in the base."""
import ctypes
import threading

import numpy as np

from ._context import Context, L
from ._merge import configure
from ._plan import Plan, check_weights
from ._tensor import prepare, to_numpy
from .stats import Stats

__all__ = ["Merger"]


class Merger:
    """A load-time merger over fine-tuned `models` (mappings of name ->
    array, TaskVectors or LoraAdapters) with strategy `method` and its
    parameters. `base` is needed only by methods that see every tensor
    before merging any (ESM's layer scaling, purification with "model"
    allocation); other options as `libmerge.merge` (stats, weights, purify,
    nonfinite, rows, transposed, projections, threads, seed). The models
    stay referenced (wrapped, not copied) until close()."""

    def __init__(self, method, models, *, base=None, stats=None, weights=None, threads=0,
                 seed=0, **kwargs):
        models, weights = check_weights(models, weights)
        if stats is not None and not isinstance(stats, Stats):
            raise TypeError("stats must be a libmerge.Stats")
        option_names = ("purify", "nonfinite", "rows", "transposed", "projections",
                        "subspaces")
        opts = {k: kwargs.pop(k) for k in option_names if k in kwargs}
        self._stats = stats  # borrowed by the plan
        self._ptr = None
        self._plan = None
        self._lock = threading.Lock()
        self._ctx = Context(threads, seed)
        try:
            self._plan = Plan(self._ctx, method, base, models, weights, stats, kwargs)
            configure(self._ctx, self._plan, base, stats, **opts)
            ptr = ctypes.c_void_p()
            self._ctx.check(L.lm_merger_create(self._plan.ptr, ctypes.byref(ptr)))
            self._ptr = ptr
        except BaseException:
            self.close()
            raise

    @property
    def method(self):
        """The strategy's name (lm_plan_strategy)."""
        return L.lm_plan_strategy(self._plan.ptr).decode()

    @property
    def n_models(self):
        """Tasks in the plan: models, task vectors and adapters."""
        return L.lm_plan_model_count(self._plan.ptr)

    def _live(self):
        if not self._ptr:
            raise ValueError("the Merger is closed")
        return self._ptr

    def touches(self, name):
        """True when some task changes tensor `name`."""
        return bool(L.lm_merger_touches(self._live(), name.encode()))

    def _wrap(self, name, array):
        shape = (ctypes.c_int64 * max(array.ndim, 1))(*array.shape)
        t = ctypes.c_void_p()
        _, code = prepare(name, array)
        self._ctx.check(L.lm_tensor_wrap(self._ctx.ptr, code, array.ndim, shape,
                                         ctypes.c_void_p(array.ctypes.data), array.nbytes,
                                         ctypes.byref(t)))
        return t

    def apply(self, name, array):
        """The merged values of tensor `name` whose base values are `array`,
        as a new array of its shape and dtype (`array` is not modified); an
        untouched tensor comes back as a copy."""
        base, code = prepare(name, array)
        ptr = self._live()
        tb = self._wrap(name, base)
        out = ctypes.c_void_p()
        try:
            shape = (ctypes.c_int64 * max(base.ndim, 1))(*base.shape)
            self._ctx.check(L.lm_tensor_create(self._ctx.ptr, code, base.ndim, shape,
                                               ctypes.byref(out)))
            self._ctx.check(L.lm_merger_apply_to(ptr, name.encode(), tb, out))
            return to_numpy(L, out, base)
        finally:
            L.lm_tensor_destroy(tb)
            L.lm_tensor_destroy(out)

    def apply_(self, name, array):
        """Merge tensor `name` in place: `array` (a writable, C-contiguous
        numpy array) holds the base values on entry and the merged values
        on return; unchanged on failure. Returns `array`."""
        if not (isinstance(array, np.ndarray) and array.flags.c_contiguous and
                array.flags.writeable and array.flags.aligned):
            raise ValueError("tensor %r: apply_ needs a writable, aligned, C-contiguous "
                             "numpy array (use apply for others)" % name)
        t = self._wrap(name, array)
        try:
            self._ctx.check(L.lm_merger_apply(self._live(), name.encode(), t))
        finally:
            L.lm_tensor_destroy(t)
        return array

    def close(self):
        """Destroy the merger, its plan and its context."""
        if getattr(self, "_ptr", None):
            L.lm_merger_destroy(self._ptr)
            self._ptr = None
        if getattr(self, "_plan", None) is not None:
            self._plan.close()
            self._plan = None
        if getattr(self, "_ctx", None) is not None:
            self._ctx.close()
            self._ctx = None

    __del__ = close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
