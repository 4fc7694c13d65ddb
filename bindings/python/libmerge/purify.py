"""purify={...} of libmerge.merge and libmerge.search, turned into the C
calls: lm_plan_set_purify, and lm_plan_tune_purify_cv for keep="cv" (the
choice of objective and the joint scale are the library's; see
docs/methods/purify.md). Argument checking and marshalling only."""
import ctypes

from . import _lib
from ._context import L, options
from ._models import model_to_dict

__all__ = ["DEFAULT_KEEP_CANDIDATES"]

_ALLOCATIONS = {"model": 0, "layer": 1, "uniform": 2}
_KNOWN = {"keep", "allocation", "epsilon", "tolerance", "polarize",
          "max_prune_factor", "heldout", "folds", "candidates", "scale", "score",
          "se_rule", "report", "per_layer"}
_OBJECTIVES = {0: "held-out drift", 1: "%d-fold held-out drift", 2: "host score"}


def _default_candidates():
    ptr = ctypes.POINTER(ctypes.c_double)()
    n = L.lm_purify_default_candidates(ctypes.byref(ptr))
    return tuple(ptr[i] for i in range(n))


# The keep ratios tried by keep="cv" without "candidates" (the library's).
DEFAULT_KEEP_CANDIDATES = _default_candidates()


def _doubles(values):
    values = [float(v) for v in values]
    return values, (ctypes.c_double * len(values))(*values)


def _options(purify):
    """lm_purify_options from the dict, starting from the library's defaults."""
    opts = options(_lib._PurifyOptions)
    keep = purify.get("keep", opts.keep)
    if keep != "cv":
        opts.keep = float(keep)
    if "allocation" in purify:
        if purify["allocation"] not in _ALLOCATIONS:
            raise ValueError("purify: allocation must be one of %s" % ", ".join(_ALLOCATIONS))
        opts.allocation = _ALLOCATIONS[purify["allocation"]]
    for key in ("epsilon", "tolerance", "polarize", "max_prune_factor"):
        if key in purify:
            setattr(opts, key, float(purify[key]))
    return opts


def apply(ctx, plan, purify, stats, base):
    """Set purification on a plan from the `purify=` dict; with
    keep="cv", let the library tune the keep ratio (and a scale) first."""
    if stats is None and not L.lm_plan_subspace_count(plan):
        raise ValueError("purify= needs stats= (activation statistics) or "
                         "subspaces= (libmerge.Subspace)")
    unknown = set(purify) - _KNOWN
    if unknown:
        raise ValueError("purify: unknown option(s) %s (known: %s)" %
                         (", ".join(sorted(unknown)), ", ".join(sorted(_KNOWN))))
    opts = _options(purify)
    ctx.check(L.lm_plan_set_purify(plan, ctypes.byref(opts)))
    report = purify.get("report")
    if purify.get("per_layer") and purify.get("keep") != "cv":
        raise ValueError('purify: per_layer needs keep="cv"')
    if purify.get("keep") != "cv":
        if report is not None:
            report["keep"] = opts.keep
        return
    _tune(ctx, plan, purify, base, report)


def _tune(ctx, plan, purify, base, report):
    cv = options(_lib._PurifyCvOptions)
    keep_alive = []
    cands = list(DEFAULT_KEEP_CANDIDATES)
    if "candidates" in purify:
        cands, cv.candidates = _doubles(purify["candidates"])
        cv.n_candidates = len(cands)
    if purify.get("heldout") is not None:
        cv.heldout = purify["heldout"]._ptr
    folds = purify.get("folds")
    if folds is not None:
        cv.folds = (ctypes.c_void_p * max(len(folds), 1))(*[f._ptr for f in folds])
        cv.n_folds = len(folds)
    if "se_rule" in purify:
        cv.se_rule = float(purify["se_rule"])
    scale_name, scales = purify.get("scale", (None, None))
    if scale_name is not None:
        scales, cv.scales = _doubles(scales)
        cv.scale, cv.n_scales = scale_name.encode(), len(scales)
    errors = []
    score = purify.get("score")
    if score is not None:
        def on_score(value, merged, out, user):
            try:
                out[0] = float(score(model_to_dict(merged, base)))
            except BaseException as e:  # re-raised after the C call
                errors.append(e)
                return 1
            return 0
        cv.score = _lib.SCORE_FN(on_score)
        keep_alive.append(cv.score)
    if purify.get("per_layer"):
        return _tune_layers(ctx, plan, cv, base, report)
    rows = len(scales) if scale_name is not None else 1
    curve = (ctypes.c_double * (rows * len(cands)))()
    result = _lib._PurifyCvResult(ctypes.sizeof(_lib._PurifyCvResult))
    st = L.lm_plan_tune_purify_cv(plan, ctypes.byref(cv), curve, ctypes.byref(result))
    if errors:
        raise errors[0]
    ctx.check(st)
    if report is None:
        return
    report["keep"] = result.keep
    if result.objective == 1:  # folds: the chosen keep against keep 1.0
        report["gain"], report["gain_se"] = result.gain, result.gain_se
    text = _OBJECTIVES[result.objective]
    report["objective"] = text % result.n_folds if "%d" in text else text
    report["curve"] = [(c, curve[r * len(cands) + i]) if scale_name is None
                       else (c, scales[r], curve[r * len(cands) + i])
                       for r in range(rows) for i, c in enumerate(cands)]
    if scale_name is not None:
        report[scale_name] = result.scale


def _tune_layers(ctx, plan, cv, base, report):
    """keep="cv" with per_layer=True: lm_plan_tune_purify_layers; the
    report's "keep" is {tensor: ratio} for the tensors it chose one for."""
    result = _lib._PurifyCvResult(ctypes.sizeof(_lib._PurifyCvResult))
    ctx.check(L.lm_plan_tune_purify_layers(plan, ctypes.byref(cv), ctypes.byref(result)))
    if report is None:
        return
    keeps = {}
    value = ctypes.c_double()
    for name in base:
        if L.lm_plan_purify_layer_keep(plan, name.encode(), ctypes.byref(value)) == 0:
            keeps[name] = value.value
    report.update(keep=keeps, gain=result.gain, gain_se=result.gain_se,
                  objective=_OBJECTIVES[1] % result.n_folds, per_layer=True)
