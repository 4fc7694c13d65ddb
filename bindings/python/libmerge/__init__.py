"""libmerge: merge fine-tuned models without retraining (ctypes bindings).

    import libmerge
    merged = libmerge.merge("task_arithmetic", base, [m1, m2], **{"lambda": 0.5})

`base` and each model map tensor names to numpy arrays (float32, float16,
float64 or bfloat16); the result maps the base's names to new arrays of the
base's shapes and dtypes. The shared library is found through
$LIBMERGE_LIBRARY or the system loader (libmerge.so.0).
"""
import ctypes
import logging
import math
import numbers
import os

import numpy as np

from . import _lib
from ._errors import (DtypeError, Error, InvalidArgumentError,
                      NonFiniteError, NotFoundError, OutOfRangeError,
                      ShapeError, error_for)
from ._tensor import BF16, F32, F64, BFloat16Array, prepare, to_numpy

__all__ = ["merge", "search", "methods", "method_info", "version", "Stats",
           "BFloat16Array", "to_bfloat16", "from_bfloat16", "Error",
           "InvalidArgumentError", "ShapeError", "DtypeError",
           "NotFoundError", "OutOfRangeError", "NonFiniteError"]

_L = _lib.load()
__version__ = _L.lm_version_string().decode()


def version():
    """Version string of the loaded shared library."""
    return _L.lm_version_string().decode()


_logger = logging.getLogger("libmerge")
_PY_LEVELS = {1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}


def _forward_log(level, message, user):
    # Errors are raised as exceptions by Context.check; logging them too
    # would report every failure twice.
    if level in _PY_LEVELS:
        _logger.log(_PY_LEVELS[level], "%s", message.decode(errors="replace"))


_LOG_CALLBACK = _lib.LOG_FN(_forward_log)


def _lm_log_level():
    """The libmerge level matching the "libmerge" logger's threshold, so
    messages nobody will see are not even formatted."""
    effective = _logger.getEffectiveLevel()
    for lm_level in (3, 2, 1):
        if effective <= _PY_LEVELS[lm_level]:
            return lm_level
    return 0


class _Context:
    """An lm_context for the duration of a `with` block. libmerge's log
    messages go to the Python logger "libmerge"."""

    def __init__(self, threads=0, seed=0):
        opts = _lib._ContextOptions()
        opts.struct_size = ctypes.sizeof(opts)
        opts.n_threads = int(threads)
        opts.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        opts.log = ctypes.cast(_LOG_CALLBACK, ctypes.c_void_p)
        opts.log_level = _lm_log_level()
        self.ptr = ctypes.c_void_p()
        st = _L.lm_context_create(ctypes.byref(opts), ctypes.byref(self.ptr))
        if st:
            raise error_for(st, "libmerge: cannot create a context: %s" %
                            _L.lm_strerror(st).decode())

    def check(self, status):
        if status:
            detail = _L.lm_context_error(self.ptr).decode(errors="replace")
            text = _L.lm_strerror(status).decode()
            raise error_for(status, "%s: %s" % (text, detail) if detail
                            else text)

    def close(self):
        if self.ptr:
            _L.lm_context_destroy(self.ptr)
            self.ptr = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _build_model(ctx, mapping, what, keep):
    """An lm_model wrapping the arrays of `mapping` without copying them;
    the arrays are appended to `keep` so they outlive the model."""
    model = ctypes.c_void_p()
    ctx.check(_L.lm_model_create(ctx.ptr, ctypes.byref(model)))
    try:
        for name, value in mapping.items():
            if not isinstance(name, str):
                raise TypeError("%s: tensor names must be str, got %r" %
                                (what, name))
            array, code = prepare(name, value)
            keep.append(array)
            shape = (ctypes.c_int64 * max(array.ndim, 1))(*array.shape)
            tensor = ctypes.c_void_p()
            ctx.check(_L.lm_tensor_wrap(
                ctx.ptr, code, array.ndim, shape,
                ctypes.c_void_p(array.ctypes.data), array.nbytes,
                ctypes.byref(tensor)))
            st = _L.lm_model_add(model, name.encode(), tensor)
            if st:
                _L.lm_tensor_destroy(tensor)
                ctx.check(st)
    except BaseException:
        _L.lm_model_destroy(model)
        raise
    return model


def _set_param(ctx, plan, name, value):
    key = name.encode()
    if isinstance(value, (bool, np.bool_)):
        ctx.check(_L.lm_plan_set_string(plan, key,
                                        b"true" if value else b"false"))
    elif isinstance(value, numbers.Real):
        ctx.check(_L.lm_plan_set_float(plan, key, float(value)))
    elif isinstance(value, str):
        ctx.check(_L.lm_plan_set_string(plan, key, value.encode()))
    else:
        raise TypeError("parameter %r: expected a number, bool or str, got "
                        "%s" % (name, type(value).__name__))


_ALLOCATIONS = {"model": 0, "layer": 1, "uniform": 2}
DEFAULT_KEEP_CANDIDATES = (1.0, 0.995, 0.99, 0.98, 0.97, 0.95, 0.9, 0.85, 0.8,
                           0.7, 0.6, 0.5)


def _stats_array(stats_list):
    """A C array of the lm_stats pointers of several Stats."""
    return (ctypes.c_void_p * len(stats_list))(*[s._ptr for s in stats_list])


def _apply_purify(ctx, plan, purify, stats, base):
    """Set purification on a plan from the `purify=` dict; with
    keep="cv", tune the keep ratio (and optionally a scale parameter) on
    held-out statistics or a host score first."""
    if stats is None:
        raise ValueError("purify= needs stats= (activation statistics)")
    known = {"keep", "allocation", "epsilon", "tolerance", "polarize",
             "max_prune_factor", "heldout", "folds", "candidates", "scale", "score",
             "report"}
    unknown = set(purify) - known
    if unknown:
        raise ValueError("purify: unknown option(s) %s (known: %s)" %
                         (", ".join(sorted(unknown)), ", ".join(sorted(known))))
    opts = _lib._PurifyOptions()
    opts.struct_size = ctypes.sizeof(opts)
    keep = purify.get("keep", 0.97)
    opts.keep = 1.0 if keep == "cv" else float(keep)
    allocation = purify.get("allocation", "model")
    if allocation not in _ALLOCATIONS:
        raise ValueError("purify: allocation must be one of %s" % ", ".join(_ALLOCATIONS))
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
    # Explicit options first, then what the Stats carries.
    heldout = purify.get("heldout")
    folds = purify.get("folds")
    if heldout is None and folds is None:
        folds = getattr(stats, "folds", None)
        heldout = None if folds else getattr(stats, "heldout", None)
    if folds is not None and len(folds) < 2:
        raise ValueError("purify: folds needs at least 2 Stats")
    if score is None and heldout is None and not folds:
        raise ValueError('purify keep="cv" needs held-out statistics '
                         '(purify={"heldout": Stats}, purify={"folds": [Stats, ...]}, '
                         'Stats(heldout_fraction=...) or Stats(folds=K)) '
                         'or a host score (purify={"score": fn})')
    cands = [float(c) for c in purify.get("candidates", DEFAULT_KEEP_CANDIDATES)]
    scale_name, scales = purify.get("scale", (None, [None]))
    arr = (ctypes.c_double * len(cands))(*cands)
    best_overall = None  # (objective to minimise, keep, scale)
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
                except BaseException as e:  # re-raised after the C call
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


def merge(method, base, models, *, stats=None, weights=None, threads=0,
          seed=0, purify=None, nonfinite="error", **params):
    """Merge `models` (a sequence of name -> array mappings) into `base`
    with strategy `method` (see `methods()`); keyword arguments set the
    strategy's parameters by name, e.g. **{"lambda": 0.4}.

    weights: one weight per model (default 1.0 each).
    stats:   a `libmerge.Stats` for methods that use activation statistics.
    purify:  subspace purification before merging (needs stats), a dict:
             {"keep": 0.97 | "cv", "allocation": "model"|"layer"|"uniform",
              "polarize": 0.0, "epsilon": 0.1, "tolerance": 0.05,
              "max_prune_factor": 1.5, "heldout": Stats, "folds": [Stats, ...],
              "candidates": [...], "report": {}}; keep="cv" picks the ratio
             minimising the drift on held-out rows (from "heldout" or
             Stats(heldout_fraction=...)), or summed over K folds, each
             held out in turn with the subspaces from the others (from
             "folds" or Stats(folds=K)), or maximising
             "score": fn(merged_dict) -> float when given;
             "scale": ("lambda", [values]) tunes that parameter jointly;
             "report" receives the choices and the objective curve.
    nonfinite: "error" (default: NaN/Inf in an input or result raises
             NonFiniteError naming the tensor and model) or "allow".
    threads: worker threads (0 = all cores); results do not depend on it.
    seed:    root seed of every random choice (e.g. DARE masks).

    Returns a dict with the base's names (in order), shapes and dtypes. The
    inputs are wrapped without copying; each output is copied once out of
    the library. Raises libmerge.Error (with the library's message) on
    failure."""
    models = list(models)
    if weights is None:
        weights = [1.0] * len(models)
    weights = [float(w) for w in weights]
    if len(weights) != len(models):
        raise ValueError("weights has %d entries for %d models" %
                         (len(weights), len(models)))
    if stats is not None and not isinstance(stats, Stats):
        raise TypeError("stats must be a libmerge.Stats")
    keep = []
    owned = []
    plan = ctypes.c_void_p()
    out = ctypes.c_void_p()
    with _Context(threads, seed) as ctx:
        try:
            ctx.check(_L.lm_plan_create(ctx.ptr, method.encode(),
                                        ctypes.byref(plan)))
            for name, value in params.items():
                _set_param(ctx, plan, name, value)
            base_model = _build_model(ctx, base, "base", keep)
            owned.append(base_model)
            ctx.check(_L.lm_plan_set_base(plan, base_model))
            for i, (m, w) in enumerate(zip(models, weights)):
                model = _build_model(ctx, m, "model %d" % i, keep)
                owned.append(model)
                ctx.check(_L.lm_plan_add_model(plan, model, w))
            if stats is not None:
                ctx.check(_L.lm_plan_set_stats(plan, stats._ptr))
            if purify is not None:
                _apply_purify(ctx, plan, purify, stats, base)
            if nonfinite not in ("error", "allow"):
                raise ValueError('nonfinite must be "error" or "allow"')
            ctx.check(_L.lm_plan_set_nonfinite(plan, 1 if nonfinite == "allow" else 0))
            ctx.check(_L.lm_plan_execute(plan, ctypes.byref(out)))
            result = {}
            for i in range(_L.lm_model_count(out)):
                name = _L.lm_model_name(out, i).decode()
                like = base[name] if isinstance(base[name], np.ndarray) else None
                result[name] = to_numpy(_L, _L.lm_model_tensor(out, i), like)
            return result
        finally:
            if out:
                _L.lm_model_destroy(out)
            if plan:
                _L.lm_plan_destroy(plan)
            for m in owned:
                _L.lm_model_destroy(m)


def _model_to_dict(model, base):
    result = {}
    for i in range(_L.lm_model_count(model)):
        name = _L.lm_model_name(model, i).decode()
        like = base[name] if isinstance(base.get(name), np.ndarray) else None
        result[name] = to_numpy(_L, _L.lm_model_tensor(model, i), like)
    return result


def search(method, base, models, score, *, param=None, lo=0.0, hi=2.0,
           tol=0.01, max_evals=15, stats=None, weights=None, threads=0,
           seed=0, purify=None, **params):
    """Choose a scale parameter by golden-section search, maximising
    `score(merged_dict) -> float` (e.g. accuracy on a validation split;
    never the test split). `param` defaults to "alpha" when the method has
    it, else "lambda". Defaults follow the released ESM code: [0, 2],
    tol 0.01, at most 15 merges. `purify` as in `merge` (a fixed keep
    ratio, or "cv" tuned first at the parameter's current value).

    Returns (best_value, best_score, curve, merged): the curve is the list
    of (value, score) evaluated, merged the result at best_value."""
    info = method_info(method)
    names = [p["name"] for p in info["params"]]
    if param is None:
        param = "alpha" if "alpha" in names else "lambda"
    curve = []
    error = []

    def on_score(value, merged, out, user):
        try:
            s = float(score(_model_to_dict(merged, base)))
        except BaseException as e:  # reported after the C call returns
            error.append(e)
            return 1
        curve.append((value, s))
        out[0] = s
        return 0

    callback = _lib.SCORE_FN(on_score)
    models = list(models)
    weights = [1.0] * len(models) if weights is None else [float(w) for w in weights]
    if len(weights) != len(models):
        raise ValueError("weights has %d entries for %d models" %
                         (len(weights), len(models)))
    keep, owned = [], []
    plan = ctypes.c_void_p()
    out = ctypes.c_void_p()
    best = ctypes.c_double()
    best_score = ctypes.c_double()
    with _Context(threads, seed) as ctx:
        try:
            ctx.check(_L.lm_plan_create(ctx.ptr, method.encode(), ctypes.byref(plan)))
            for name, value in params.items():
                _set_param(ctx, plan, name, value)
            base_model = _build_model(ctx, base, "base", keep)
            owned.append(base_model)
            ctx.check(_L.lm_plan_set_base(plan, base_model))
            for i, (m, w) in enumerate(zip(models, weights)):
                model = _build_model(ctx, m, "model %d" % i, keep)
                owned.append(model)
                ctx.check(_L.lm_plan_add_model(plan, model, w))
            if stats is not None:
                ctx.check(_L.lm_plan_set_stats(plan, stats._ptr))
            if purify is not None:
                _apply_purify(ctx, plan, purify, stats, base)
            st = _L.lm_plan_search(plan, param.encode(), lo, hi, tol, max_evals,
                                   callback, None, ctypes.byref(best),
                                   ctypes.byref(best_score))
            if error:
                raise error[0]
            ctx.check(st)
            ctx.check(_L.lm_plan_execute(plan, ctypes.byref(out)))
            return best.value, best_score.value, curve, _model_to_dict(out, base)
        finally:
            if out:
                _L.lm_model_destroy(out)
            if plan:
                _L.lm_plan_destroy(plan)
            for m in owned:
                _L.lm_model_destroy(m)


_PARAM_TYPES = {0: "float", 1: "int", 2: "bool", 3: "choice", 4: "string"}


def methods():
    """Names of the registered merge strategies."""
    with _Context() as ctx:
        return [_L.lm_strategy_at(ctx.ptr, i).contents.name.decode()
                for i in range(_L.lm_strategy_count(ctx.ptr))]


def method_info(name):
    """A strategy's description and parameters: a dict with 'name',
    'description' and 'params', a list of dicts (name, type, default, min,
    max, choices, help). Raises NotFoundError for an unknown name."""
    with _Context() as ctx:
        for i in range(_L.lm_strategy_count(ctx.ptr)):
            vt = _L.lm_strategy_at(ctx.ptr, i).contents
            if vt.name.decode() != name:
                continue
            params = []
            for j in range(vt.n_params):
                p = vt.params[j]
                kind = _PARAM_TYPES.get(p.type, "unknown")
                choices = (p.choices.decode().split("|")
                           if p.choices and kind == "choice" else None)
                default = ("" if kind == "string" else
                           choices[0] if kind == "choice" else
                           bool(p.default_value) if kind == "bool" else
                           int(p.default_value) if kind == "int" else
                           p.default_value)
                params.append({
                    "name": p.name.decode(), "type": kind,
                    "default": default,
                    "min": None if kind in ("choice", "bool", "string") else p.min_value,
                    "max": None if kind in ("choice", "bool", "string") else p.max_value,
                    "choices": choices,
                    "help": p.help.decode() if p.help else "",
                })
            return {"name": name,
                    "description": (vt.description or b"").decode(),
                    "params": params}
    raise NotFoundError(-5, "no strategy named %r (registered: %s)" %
                        (name, ", ".join(methods())))


def to_bfloat16(values):
    """Round float values to bfloat16 (nearest, ties to even; float64 is
    rounded once, not through float32). Returns a BFloat16Array."""
    src = np.asarray(values)
    src_code = F64 if src.dtype == np.float64 else F32
    src = np.ascontiguousarray(src, dtype=np.float64 if src_code == F64
                               else np.float32)
    out = np.empty(src.shape, dtype=np.uint16)
    st = _L.lm_convert(ctypes.c_void_p(src.ctypes.data), src_code,
                       ctypes.c_void_p(out.ctypes.data), BF16, src.size)
    if st:
        raise error_for(st, _L.lm_strerror(st).decode())
    return out.view(BFloat16Array)


def from_bfloat16(values):
    """float32 values of bfloat16 bit patterns (BFloat16Array, uint16 or
    an ml_dtypes bfloat16 array); exact."""
    bits = np.asarray(values).view(np.uint16)
    return (bits.astype(np.uint32) << 16).view(np.float32)


class Stats:
    """Activation statistics: per (model index, tensor name), the input
    second moment X^T X (float64) and the row count, for strategies that
    use them (ESM, purification, NSC).

        stats = libmerge.Stats()
        stats.observe(0, "fc1.weight", inputs)   # rows fed to that layer
        libmerge.merge("esm", base, models, stats=stats)

    Thread-safe to observe from several threads."""

    def __init__(self, heldout_fraction=0.0, folds=0, _ptr=None, _ctx=None):
        """heldout_fraction > 0 sets aside that fraction of every observed
        batch's rows, deterministically (every k-th row, k = round(1 /
        fraction)), in `self.heldout` (a Stats) for held-out tuning.

        folds = K >= 2 keeps every row here and also splits the rows into
        `self.folds` (K Stats; row j of a key's stream goes to fold j mod
        K, whatever the batch sizes) for K-fold tuning with
        purify={"keep": "cv"}: every row is held out once. Costs K extra
        copies of each key's d_in x d_in matrix."""
        self._ctx = _ctx or _Context(threads=1)
        self._ptr = _ptr
        if self._ptr is None:
            self._ptr = ctypes.c_void_p()
            self._ctx.check(_L.lm_stats_create(self._ctx.ptr,
                                               ctypes.byref(self._ptr)))
        if not 0.0 <= heldout_fraction < 1.0:
            raise ValueError("heldout_fraction must be in [0, 1)")
        self._every = int(round(1.0 / heldout_fraction)) if heldout_fraction > 0 else 0
        self.heldout = Stats() if self._every else None
        folds = int(folds)
        if folds == 1 or folds < 0:
            raise ValueError("folds must be 0 (none) or at least 2")
        if folds and self._every:
            raise ValueError("use either heldout_fraction or folds, not both")
        self.folds = [Stats() for _ in range(folds)] if folds else None

    def __del__(self):
        ptr = getattr(self, "_ptr", None)
        if ptr:
            _L.lm_stats_destroy(ptr)
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
        if x.dtype.name == "bfloat16" or isinstance(x, BFloat16Array):
            x = from_bfloat16(x)
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
        if self.folds:  # after the checks above, so folds stay consistent
            self.folds[0]._ctx.check(_L.lm_stats_observe_folds(
                _stats_array(self.folds), len(self.folds), int(model_index),
                tensor_name.encode(), ctypes.c_void_p(x.ctypes.data), x.shape[0],
                x.shape[1]))

    def get(self, model_index, tensor_name):
        """(X^T X as a new float64 array, row count) for a key."""
        gram = ctypes.POINTER(ctypes.c_double)()
        d = ctypes.c_size_t()
        n = ctypes.c_uint64()
        self._ctx.check(_L.lm_stats_get(self._ptr, int(model_index),
                                        tensor_name.encode(),
                                        ctypes.byref(gram), ctypes.byref(d),
                                        ctypes.byref(n)))
        out = np.empty((d.value, d.value), dtype=np.float64)
        ctypes.memmove(out.ctypes.data, gram, out.nbytes)
        return out, n.value

    def keys(self):
        """[(model_index, tensor_name), ...] in first-observation order."""
        keys = []
        for i in range(_L.lm_stats_count(self._ptr)):
            m = ctypes.c_size_t()
            name = ctypes.c_char_p()
            self._ctx.check(_L.lm_stats_key(self._ptr, i, ctypes.byref(m),
                                            ctypes.byref(name)))
            keys.append((m.value, name.value.decode()))
        return keys

    def __len__(self):
        return _L.lm_stats_count(self._ptr)

    def _parts(self):
        """The held-out and fold Stats this one carries, by file suffix."""
        parts = {".heldout": self.heldout} if self.heldout is not None else {}
        for k, f in enumerate(self.folds or []):
            parts[".fold%d" % k] = f
        return parts

    def merge(self, other):
        """Add another Stats into this one (data-parallel collection),
        with its held-out rows and folds when both have the same kind."""
        mine, theirs = self._parts(), other._parts()
        if set(mine) != set(theirs):
            raise ValueError("merge: the two Stats split their rows differently "
                             "(held-out fraction or number of folds)")
        self._ctx.check(_L.lm_stats_merge(self._ptr, other._ptr))
        for suffix, part in mine.items():
            part.merge(theirs[suffix])
        return self

    def save(self, path):
        """Write to a checksummed file (crash-safe); held-out rows and folds
        go to companion files PATH.heldout and PATH.fold<k>."""
        self._ctx.check(_L.lm_stats_save(self._ptr, os.fsencode(path)))
        for suffix, part in self._parts().items():
            part.save(os.fsdecode(path) + suffix)

    @classmethod
    def load(cls, path):
        """Read a file written by save(), with its companion files."""
        ctx = _Context(threads=1)
        ptr = ctypes.c_void_p()
        try:
            ctx.check(_L.lm_stats_load(ctx.ptr, os.fsencode(path),
                                       ctypes.byref(ptr)))
        except BaseException:
            ctx.close()
            raise
        out = cls(_ptr=ptr, _ctx=ctx)
        path = os.fsdecode(path)
        if os.path.exists(path + ".heldout"):
            # Rows observed after loading are not split again.
            out.heldout = cls.load(path + ".heldout")
        folds = []
        while os.path.exists(path + ".fold%d" % len(folds)):
            folds.append(cls.load(path + ".fold%d" % len(folds)))
        if len(folds) >= 2:
            out.folds = folds
        return out


from .nsc import NSC, LoraAdapter  # noqa: E402  (needs _L and _Context)
from .files import load, save  # noqa: E402

__all__ += ["NSC", "LoraAdapter", "load", "save"]
