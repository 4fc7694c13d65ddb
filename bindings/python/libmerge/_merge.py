"""merge, search, methods and method_info: argument checking, then the C
calls (lm_plan_execute, lm_plan_search)."""
import ctypes

from . import _lib
from . import purify as _purify
from . import subspace as _subspace
from ._context import Context, L, options
from ._errors import NotFoundError
from ._models import model_to_dict
from ._plan import Plan, check_weights
from .projector import add_projections
from .stats import Stats


_ROWS = ["error", "base", "zero", "mean"]  # lm_rows_policy order


def merge(method, base, models, *, stats=None, weights=None, threads=0,
          seed=0, purify=None, nonfinite="error", rows="error", transposed=(),
          out_dtype=None, tie=None, projections=(), progress=None, subspaces=(), **params):
    """Merge `models` (a sequence of name -> array mappings, `TaskVector`s
    or `LoraAdapter`s, the last kept factored: lm_plan_add_lora) into `base`
    with strategy `method` (see `methods()`); keyword arguments set the
    strategy's parameters by name, e.g. **{"lambda": 0.4}. A parameter
    flagged per_model in method_info() also takes one value per model (a
    list), one flagged per_tensor a dict {tensor name: value or per-model
    list} (lm_plan_set_float_for).

    weights: one weight per model (default 1.0 each).
    stats:   a `libmerge.Stats` for methods that use activation statistics.
    NSC:     merge("nsc", base, [LoraAdapter, ...], coefficients=path) with
             a table saved by NSC.save_coefficients or
             libmerge.torch.nsc_merge(..., coefficients=path).
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
             The library makes these choices (lm_plan_tune_purify_cv).
    transposed: names of 2-D tensors stored [in, out] (GPT-2's Conv1D
             weights): strategies see them as [out, in], the result comes
             back in the stored layout (lm_plan_set_transposed).
    rows:    models whose tensor has another row count than the base's (a
             fine-tune that added tokens): "error" (default), or merge the
             shared rows and fill the rows a model lacks with the base's
             ("base"), zeros ("zero") or the mean of the models that have
             them ("mean"); the output keeps the base's shapes
             (lm_plan_set_rows_policy).
    subspaces: `libmerge.Subspace` objects: user subspaces replacing the
             ones esm or purify build from statistics, per tensor pattern
             and task (lm_plan_set_subspace; docs/methods/esm.md).
    nonfinite: "error" (default: NaN/Inf in an input or result raises
             NonFiniteError naming the tensor and model) or "allow".
    out_dtype: "f32", "f16", "bf16" or "f64": every output in that dtype
             (lm_plan_set_output_dtype; default: each base tensor's).
    tie:     {tensor: same_as}: `tensor` is tied to `same_as` (tied
             embeddings) and gets its merged values (lm_plan_tie).
    projections: rules projecting task vectors before the merge, each
             (pattern, Projector[, side[, mode[, model]]]); see
             libmerge.projector.add_projections (lm_plan_add_projection).
    progress: fn(tensors_done, tensors_total, bytes_done, bytes_total)
             called as tensors complete; returning True cancels the merge
             (libmerge.Error with status LM_ERR_CANCELLED).
    threads: worker threads (0 = all cores); results do not depend on it.
    seed:    root seed of every random choice (e.g. DARE masks).

    Returns a dict with the base's names (in order), shapes and dtypes. The
    inputs are wrapped without copying; each output is copied once out of
    the library. Raises libmerge.Error (with the library's message) on
    failure."""
    models, weights = check_weights(models, weights)
    if stats is not None and not isinstance(stats, Stats):
        raise TypeError("stats must be a libmerge.Stats")
    out = ctypes.c_void_p()
    with Context(threads, seed) as ctx:
        plan = Plan(ctx, method, base, models, weights, stats, params)
        try:
            configure(ctx, plan, base, stats, purify=purify, nonfinite=nonfinite, rows=rows,
                      transposed=transposed, out_dtype=out_dtype, tie=tie,
                      projections=projections, progress=progress,
                      subspaces=subspaces)
            st = L.lm_plan_execute(plan.ptr, ctypes.byref(out))
            plan.reraise()
            ctx.check(st)
            return model_to_dict(out, base)
        finally:
            if out:
                L.lm_model_destroy(out)
            plan.close()


class SearchResult(tuple):
    """(best_value, best_score, curve, merged), plus what the search did:
    `bracket` (the last (lo, hi) searched), `widened` (times the bracket
    moved past an edge) and `at_edge` (True when the best value is still
    at an edge of the last bracket: the limit of `widen` or the
    parameter's range stopped it, and the maximum may lie beyond)."""

    def __new__(cls, best, best_score, curve, merged, bracket, widened, at_edge):
        self = super().__new__(cls, (best, best_score, curve, merged))
        self.bracket = bracket
        self.widened = widened
        self.at_edge = at_edge
        return self
def configure(ctx, plan, base, stats, *, purify=None, nonfinite="error", rows="error",
              transposed=(), out_dtype=None, tie=None, projections=(), progress=None,
              subspaces=()):
    """The plan options merge, merge_to and Merger share."""
    # Before purify: a keep="cv" tuning executes the plan.
    _subspace.apply(ctx, plan.ptr, subspaces, plan._keep)
    if purify is not None:
        _purify.apply(ctx, plan.ptr, purify, stats, base)
    if nonfinite not in ("error", "allow"):
        raise ValueError('nonfinite must be "error" or "allow"')
    ctx.check(L.lm_plan_set_nonfinite(plan.ptr, 1 if nonfinite == "allow" else 0))
    if rows not in _ROWS:
        raise ValueError("rows must be one of %s" % ", ".join(_ROWS))
    ctx.check(L.lm_plan_set_rows_policy(plan.ptr, _ROWS.index(rows)))
    for name in ([transposed] if isinstance(transposed, str) else transposed):
        ctx.check(L.lm_plan_set_transposed(plan.ptr, name.encode()))
    if out_dtype is not None:
        code = ctypes.c_int()
        ctx.check(L.lm_dtype_parse(str(out_dtype).encode(), ctypes.byref(code)))
        ctx.check(L.lm_plan_set_output_dtype(plan.ptr, code.value))
    for name, same_as in (tie or {}).items():
        ctx.check(L.lm_plan_tie(plan.ptr, name.encode(), same_as.encode()))
    add_projections(ctx, plan.ptr, projections, plan._keep)
    if progress is not None:
        def on_progress(done, total, bytes_done, bytes_total, user):
            try:
                return 1 if progress(done, total, bytes_done, bytes_total) else 0
            except BaseException as e:  # re-raised by plan.reraise()
                plan.errors.append(e)
                return 1
        callback = _lib.PROGRESS_FN(on_progress)
        plan._keep.append(callback)
        ctx.check(L.lm_plan_set_progress(plan.ptr, callback, None))


def search(method, base, models, score, *, param=None, lo=0.0, hi=2.0,
           tol=0.01, max_evals=15, widen=4, stats=None, weights=None, threads=0,
           seed=0, purify=None, subspaces=(), **params):
    """Choose a scale parameter by golden-section search, maximising
    `score(merged_dict) -> float` (e.g. accuracy on a validation split;
    never the test split). `param` defaults to "alpha" when the method has
    it, else "lambda". Defaults follow the released ESM code: [0, 2],
    tol 0.01, at most 15 merges per bracket. When the best point ends at
    an edge of the bracket, the bracket moves past it (to
    [hi - w/2, hi + w], or the mirror image at lo) at most `widen` times
    (0: never, the released behaviour), within the parameter's declared
    range. `purify` as in `merge` (a fixed keep ratio, or "cv" tuned first
    at the parameter's current value); `subspaces` as in `merge`.

    Returns a SearchResult: (best_value, best_score, curve, merged), with
    the curve the list of (value, score) evaluated and merged the result
    at best_value; its attributes bracket, widened and at_edge report
    the bracket."""
    info = method_info(method)
    names = [p["name"] for p in info["params"]]
    if param is None:
        param = "alpha" if "alpha" in names else "lambda"
    curve = []
    error = []

    def on_score(value, merged, out, user):
        try:
            s = float(score(model_to_dict(merged, base)))
        except BaseException as e:  # reported after the C call returns
            error.append(e)
            return 1
        curve.append((value, s))
        out[0] = s
        return 0

    callback = _lib.SCORE_FN(on_score)
    models, weights = check_weights(models, weights)
    opts = options(_lib._SearchOptions)
    opts.lo, opts.hi, opts.tol = lo, hi, tol
    opts.max_evals, opts.max_widen = max_evals, widen
    result = _lib._SearchResult()
    result.struct_size = ctypes.sizeof(result)
    out = ctypes.c_void_p()
    with Context(threads, seed) as ctx:
        plan = Plan(ctx, method, base, models, weights, stats, params)
        try:
            _subspace.apply(ctx, plan.ptr, subspaces, plan._keep)
            if purify is not None:
                _purify.apply(ctx, plan.ptr, purify, stats, base)
            st = L.lm_plan_search_with(plan.ptr, param.encode(), ctypes.byref(opts),
                                       callback, None, ctypes.byref(result))
            if error:
                raise error[0]
            ctx.check(st)
            ctx.check(L.lm_plan_execute(plan.ptr, ctypes.byref(out)))
            return SearchResult(result.best_value, result.best_score, curve,
                                model_to_dict(out, base), (result.lo, result.hi),
                                result.widened, bool(result.at_edge))
        finally:
            if out:
                L.lm_model_destroy(out)
            plan.close()


_PARAM_TYPES = {0: "float", 1: "int", 2: "bool", 3: "choice", 4: "string"}


def methods():
    """Names of the registered merge strategies."""
    with Context() as ctx:
        return [L.lm_strategy_at(ctx.ptr, i).contents.name.decode()
                for i in range(L.lm_strategy_count(ctx.ptr))]


def _param_info(p):
    kind = _PARAM_TYPES.get(p.type, "unknown")
    choices = (p.choices.decode().split("|")
               if p.choices and kind == "choice" else None)
    default = ("" if kind == "string" else
               choices[0] if kind == "choice" else
               bool(p.default_value) if kind == "bool" else
               int(p.default_value) if kind == "int" else
               p.default_value)
    bounded = kind not in ("choice", "bool", "string")
    return {"name": p.name.decode(), "type": kind, "default": default,
            "min": p.min_value if bounded else None,
            "max": p.max_value if bounded else None,
            "choices": choices, "help": p.help.decode() if p.help else "",
            "per_tensor": bool(p.flags & 1), "per_model": bool(p.flags & 2)}


def method_info(name):
    """A strategy's description and parameters: a dict with 'name',
    'description' and 'params', a list of dicts (name, type, default, min,
    max, choices, help, per_tensor, per_model: whether a dict of tensor
    names / a per-model list is accepted for it). Raises NotFoundError for an unknown name."""
    with Context() as ctx:
        vt = ctypes.POINTER(_lib._StrategyVtable)()
        if L.lm_strategy_find(ctx.ptr, name.encode(), ctypes.byref(vt)) == 0:
            vt = vt.contents
            return {"name": name,
                    "description": (vt.description or b"").decode(),
                    "params": [_param_info(vt.params[j]) for j in range(vt.n_params)]}
        L.lm_context_clear_error(ctx.ptr)
    raise NotFoundError(-5, "no strategy named %r (registered: %s)" %
                        (name, ", ".join(methods())))
