"""The Python merge policy as it was before it moved into the C library
(bindings/python/libmerge/__init__.py at commit 827a22d): the held-out row
split and K-fold routing of Stats.observe, and purify={"keep": "cv"} tuning
with its joint scale. Kept verbatim (only the plumbing is reduced to raw
ctypes calls) as the reference that test_policy_reference.py holds the C
implementation to, bit for bit. Do not "fix" this file: it is a record."""
import ctypes
import numbers

import numpy as np

import libmerge
from libmerge import _lib
from libmerge._tensor import prepare, to_numpy

_L = libmerge._L

DEFAULT_KEEP_CANDIDATES = (1.0, 0.995, 0.99, 0.98, 0.97, 0.95, 0.9, 0.85, 0.8,
                           0.7, 0.6, 0.5)
_ALLOCATIONS = {"model": 0, "layer": 1, "uniform": 2}


class Ctx:
    def __init__(self, threads=0, seed=0):
        opts = _lib._ContextOptions()
        opts.struct_size = ctypes.sizeof(opts)
        opts.n_threads = int(threads)
        opts.seed = int(seed)
        self.ptr = ctypes.c_void_p()
        assert _L.lm_context_create(ctypes.byref(opts), ctypes.byref(self.ptr)) == 0

    def check(self, status):
        if status:
            raise libmerge.Error(status, _L.lm_context_error(self.ptr).decode())

    def close(self):
        if self.ptr:
            _L.lm_context_destroy(self.ptr)
            self.ptr = None


def _stats_array(stats_list):
    return (ctypes.c_void_p * len(stats_list))(*[s._ptr for s in stats_list])


class Stats:
    """Stats.__init__/observe of the old bindings (split in Python)."""

    def __init__(self, heldout_fraction=0.0, folds=0):
        self._ctx = Ctx(threads=1)
        self._ptr = ctypes.c_void_p()
        self._ctx.check(_L.lm_stats_create(self._ctx.ptr, ctypes.byref(self._ptr)))
        self._every = int(round(1.0 / heldout_fraction)) if heldout_fraction > 0 else 0
        self.heldout = Stats() if self._every else None
        self.folds = [Stats() for _ in range(folds)] if folds else None

    def __del__(self):
        if getattr(self, "_ptr", None):
            _L.lm_stats_destroy(self._ptr)
            self._ptr = None
        if getattr(self, "_ctx", None) is not None:
            self._ctx.close()

    def observe(self, model_index, tensor_name, inputs):
        x = np.asarray(inputs)
        x = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
        if self._every:
            held = np.arange(x.shape[0]) % self._every == self._every - 1
            if held.any():
                self.heldout.observe(model_index, tensor_name, x[held])
            x = np.ascontiguousarray(x[~held])
            if x.shape[0] == 0:
                return
        self._ctx.check(_L.lm_stats_observe(
            self._ptr, int(model_index), tensor_name.encode(),
            ctypes.c_void_p(x.ctypes.data), x.shape[0], x.shape[1]))
        if self.folds:
            self.folds[0]._ctx.check(_L.lm_stats_observe_folds(
                _stats_array(self.folds), len(self.folds), int(model_index),
                tensor_name.encode(), ctypes.c_void_p(x.ctypes.data), x.shape[0],
                x.shape[1]))

    def get(self, model_index, tensor_name):
        gram = ctypes.POINTER(ctypes.c_double)()
        d, n = ctypes.c_size_t(), ctypes.c_uint64()
        self._ctx.check(_L.lm_stats_find(self._ptr, int(model_index), tensor_name.encode(),
                                        ctypes.byref(gram), ctypes.byref(d), ctypes.byref(n)))
        out = np.empty((d.value, d.value), dtype=np.float64)
        ctypes.memmove(out.ctypes.data, gram, out.nbytes)
        return out, n.value

    def keys(self):
        keys = []
        for i in range(_L.lm_stats_count(self._ptr)):
            m, name = ctypes.c_size_t(), ctypes.c_char_p()
            self._ctx.check(_L.lm_stats_at(self._ptr, i, ctypes.byref(m), ctypes.byref(name)))
            keys.append((m.value, name.value.decode()))
        return keys


def _set_param(ctx, plan, name, value):
    key = name.encode()
    if isinstance(value, (bool, np.bool_)):
        ctx.check(_L.lm_plan_set_string(plan, key, b"true" if value else b"false"))
    elif isinstance(value, numbers.Real):
        ctx.check(_L.lm_plan_set_float(plan, key, float(value)))
    else:
        ctx.check(_L.lm_plan_set_string(plan, key, value.encode()))


def _model_to_dict(model, base):
    result = {}
    for i in range(_L.lm_model_count(model)):
        name = _L.lm_model_name_at(model, i).decode()
        like = base[name] if isinstance(base.get(name), np.ndarray) else None
        result[name] = to_numpy(_L, _L.lm_model_at(model, i), like)
    return result


def _apply_purify(ctx, plan, purify, stats, base):
    """Verbatim from the old bindings."""
    opts = _lib._PurifyOptions()
    opts.struct_size = ctypes.sizeof(opts)
    keep = purify.get("keep", 0.97)
    opts.keep = 1.0 if keep == "cv" else float(keep)
    allocation = purify.get("allocation", "model")
    opts.allocation = _ALLOCATIONS[allocation]
    opts.epsilon = float(purify.get("epsilon", 0.1))
    opts.tolerance = float(purify.get("tolerance", 5e-2))
    opts.polarize = float(purify.get("polarize", 0.0))
    opts.max_prune_factor = float(purify.get("max_prune_factor", 1.5))
    ctx.check(_L.lm_plan_set_purify(plan, ctypes.byref(opts)))
    report = purify.get("report")
    if keep != "cv":
        if report is not None:
            report["keep"] = opts.keep
        return
    score = purify.get("score")
    heldout = purify.get("heldout")
    folds = purify.get("folds")
    if heldout is None and folds is None:
        folds = getattr(stats, "folds", None)
        heldout = None if folds else getattr(stats, "heldout", None)
    cands = [float(c) for c in purify.get("candidates", DEFAULT_KEEP_CANDIDATES)]
    scale_name, scales = purify.get("scale", (None, [None]))
    arr = (ctypes.c_double * len(cands))(*cands)
    best_overall = None
    curve_out = []
    for scale in scales:
        if scale_name is not None:
            _set_param(ctx, plan, scale_name, float(scale))
        curve = (ctypes.c_double * len(cands))()
        best = ctypes.c_double()
        if score is None and heldout is None:
            ctx.check(_L.lm_plan_tune_purify_folds(plan, _stats_array(folds), len(folds),
                                                   arr, len(cands),
                                                   ctypes.byref(best), curve))
            sign = 1.0
        elif score is None:
            ctx.check(_L.lm_plan_tune_purify(plan, heldout._ptr, arr, len(cands),
                                             ctypes.byref(best), curve))
            sign = 1.0
        else:
            errors = []

            def on_score(value, merged, out, user):
                try:
                    out[0] = float(score(_model_to_dict(merged, base)))
                except BaseException as e:
                    errors.append(e)
                    return 1
                return 0

            callback = _lib.SCORE_FN(on_score)
            st = _L.lm_plan_tune_purify_score(plan, arr, len(cands), callback,
                                              None, ctypes.byref(best), curve)
            if errors:
                raise errors[0]
            ctx.check(st)
            sign = -1.0
        for c, v in zip(cands, curve):
            curve_out.append((c, v) if scale_name is None else (c, float(scale), v))
        value = sign * curve[cands.index(best.value)]
        if best_overall is None or value < best_overall[0]:
            best_overall = (value, best.value, scale)
    _, best_keep, best_scale = best_overall
    opts.keep = best_keep
    ctx.check(_L.lm_plan_set_purify(plan, ctypes.byref(opts)))
    if scale_name is not None:
        _set_param(ctx, plan, scale_name, float(best_scale))
    if report is not None:
        report["keep"] = best_keep
        report["objective"] = ("host score" if score else "held-out drift" if heldout
                               else "%d-fold held-out drift" % len(folds))
        report["curve"] = curve_out
        if scale_name is not None:
            report[scale_name] = float(best_scale)


def _build_model(ctx, mapping, keep):
    model = ctypes.c_void_p()
    ctx.check(_L.lm_model_create(ctx.ptr, ctypes.byref(model)))
    for name, value in mapping.items():
        array, code = prepare(name, value)
        keep.append(array)
        shape = (ctypes.c_int64 * max(array.ndim, 1))(*array.shape)
        tensor = ctypes.c_void_p()
        ctx.check(_L.lm_tensor_wrap(ctx.ptr, code, array.ndim, shape,
                                    ctypes.c_void_p(array.ctypes.data), array.nbytes,
                                    ctypes.byref(tensor)))
        ctx.check(_L.lm_model_add(model, name.encode(), tensor))
    return model


def merge(method, base, models, *, stats, purify, threads=0, seed=0, **params):
    """libmerge.merge as it was, reduced to what the reference tests use."""
    keep, owned = [], []
    ctx = Ctx(threads, seed)
    plan, out = ctypes.c_void_p(), ctypes.c_void_p()
    try:
        ctx.check(_L.lm_plan_create(ctx.ptr, method.encode(), ctypes.byref(plan)))
        for name, value in params.items():
            _set_param(ctx, plan, name, value)
        owned.append(_build_model(ctx, base, keep))
        ctx.check(_L.lm_plan_set_base(plan, owned[0]))
        for m in models:
            owned.append(_build_model(ctx, m, keep))
            ctx.check(_L.lm_plan_add_model(plan, owned[-1], 1.0))
        ctx.check(_L.lm_plan_set_stats(plan, stats._ptr))
        _apply_purify(ctx, plan, purify, stats, base)
        ctx.check(_L.lm_plan_execute(plan, ctypes.byref(out)))
        return _model_to_dict(out, base)
    finally:
        if out:
            _L.lm_model_destroy(out)
        if plan:
            _L.lm_plan_destroy(plan)
        for m in owned:
            _L.lm_model_destroy(m)
        ctx.close()
