"""The measurements of bench/quality/variants.py for one seed's fine-tunes
and one task count: each method's scale searched with and without
widening, purified with keep="cv" under several tuning rules, the keep
ratios scored one by one, and NSC's variants beside task arithmetic.
Every result keeps its per-example test outcomes (merges.test_correct) so
the report can pair any two rows (report._paired_se)."""
import copy
import time

import numpy as np
import torch

import libmerge
import libmerge.torch as lt

import merges

# Methods compared (scale parameter and the released bracket, as merges.py).
# TIES and DARE left out (run time: each purified search costs minutes at 20 tasks).
METHODS = [(b[0], b[1], b[2], b[3]) for b in merges._FULL_BASES
           if b[0] in ("task_arithmetic", "tsv", "iso_c", "iso_cts", "esm")]
WIDEN = 4          # the library default: the bracket may move 4 times
# Purification rows: "cv" picks the keep ratio on the stats' 4 folds by
# held-out drift; se_rule 1 is the library default, se_rule 0 the plain
# minimum; the alternative objective is validation accuracy (the library's
# host-score tuner maximises it the same way: the best candidate).
PURIFY = ["purify cv", "purify cv, se_rule 0", "purify, val-accuracy objective"]


# The keep ratios "cv" chooses among: quality.md's five (the library's
# twelve defaults cost 2.4x the merges; the five span the ratios chosen).
CANDIDATES = merges.PURIFY_CANDIDATES
# --smoke: three of them (keep="cv" tunes 4 folds x every candidate, the
# keep curve scores each: most of the smoke run's time with five).
SMOKE_CANDIDATES = (1.0, 0.97, 0.9)


def keep_candidates(smoke):
    """The keep ratios a run's keep="cv" rows choose among."""
    return SMOKE_CANDIDATES if smoke else CANDIDATES


def _norm(acc, individual):
    return 100 * float(np.mean([a / i for a, i in zip(acc, individual)]))


class Setting:
    """One seed's first n tasks: what every measurement needs."""

    def __init__(self, d, n, stats, max_evals, threads=1):
        self.threads = threads
        self.net, self.base = d.net, d.base
        self.sds, self.heads, self.tasks = d.sds[:n], d.heads[:n], d.tasks[:n]
        self.individual = d.individual[:n]
        self.stats, self.max_evals = stats, max_evals
        self.fts = d.fts[:n]

    def val_score(self, merged):
        return float(np.mean(merges.evaluate(self.net, merged, self.heads, self.tasks, "val")))

    def scored(self, merged, **extra):
        acc, hits = merges._scored(merges.test_correct(self.net, merged, self.heads, self.tasks))
        return dict(norm=_norm(acc, self.individual), correct=hits, **extra)


def searched(s, method, params, scale, widen, purify=None, models=None):
    """The method searched on validation; test result, scale, and what the
    search did with its bracket. `models`: what is merged (default the
    fine-tunes)."""
    name, lo, hi = scale
    report = {}
    kw = {}
    if purify is not None:
        kw["purify"] = dict(purify, report=report)
    stats = s.stats if (method == "esm" or purify is not None) else None
    models = s.sds if models is None else models
    res = libmerge.search(method, s.base, models, s.val_score, param=name, lo=lo, hi=hi,
                          max_evals=s.max_evals, widen=widen, stats=stats, threads=s.threads,
                          **kw, **params)
    out = s.scored(res[3], scale=res[0], scale_name=name, widened=res.widened,
                   at_edge=res.at_edge, bracket=list(res.bracket), val=res[1],
                   evals=len(res[2]))
    if report:
        out["keep"] = report.get("keep")
        out["curve"] = [list(c) for c in report.get("curve", [])]
        for k in ("gain", "gain_se", "objective"):
            if k in report:
                out[k] = report[k]
    return out


def keep_curve(s, method, params, candidates, teacher=None):
    """Validation and test accuracy of every candidate keep ratio at the
    method's default scale (where keep="cv" tunes): what an objective
    should track; with `teacher`, its score too."""
    rows = []
    for keep in candidates:
        merged = libmerge.merge(method, s.base, s.sds, stats=s.stats,
                                purify={"keep": keep}, threads=s.threads, **params)
        r = s.scored(merged)
        rows.append(dict(keep=keep, val=s.val_score(merged), norm=r["norm"]))
        if teacher is not None:
            rows[-1]["teacher"] = teacher(merged)
    return rows


def objective_rows(s, candidates, log=print):
    """Purification's tuning objectives against the test curve: per method
    (METHODS and ESM at its library default), keep="cv"'s held-out drift
    curve and choice (the library's rule) and keep_curve with the
    label-free teacher score (libmerge.torch.teacher_score: each task's
    fine-tuned model, through its head, on its validation images without
    labels)."""
    teacher = lt.teacher_score(s.net, s.sds, [[torch.from_numpy(t["val"][0])] for t in s.tasks],
                               outputs=lambda k, f: s.heads[k](f))
    method, params, _ = esm_default_spec()
    default_esm = ("esm default", method, params)
    out = {}
    for label, method, params in [m[:3] for m in METHODS] + [default_esm]:
        report = {}
        libmerge.merge(method, s.base, s.sds, stats=s.stats, threads=s.threads, **params,
                       purify=dict(keep="cv", candidates=candidates, report=report))
        curve = keep_curve(s, method, params, candidates, teacher)
        drift = {c[0]: c[-1] for c in report["curve"]}
        for c in curve:
            c["drift"] = drift[c["keep"]]
        out[label] = dict(curve=curve, drift_keep=report["keep"])
        log("    %-16s test %s; drift picks %g" % (
            label, " ".join("%.1f" % c["norm"] for c in curve), report["keep"]))
    return out


def full_rows(s, log=print, methods=None):
    """Every method (or those named in `methods`): the widened and the
    fixed-bracket search (the fixed one is the widened one when the
    bracket never moved: the same merges)."""
    out = {}
    for label, method, params, scale in METHODS:
        if methods is not None and label not in methods:
            continue
        r = dict(widened=searched(s, method, params, scale, WIDEN))
        r["fixed"] = (searched(s, method, params, scale, 0) if r["widened"]["widened"]
                      else dict(r["widened"]))
        out[label] = r
        log("    %-16s widened %.1f (%s %.3f, %d moves)  fixed %.1f (%.3f)" % (
            label, r["widened"]["norm"], scale[0], r["widened"]["scale"],
            r["widened"]["widened"], r["fixed"]["norm"], r["fixed"]["scale"]))
    return out


def purify_rows(s, method, candidates, log=print):
    """One method purified (widened searches): keep="cv" with se_rule 1,
    se_rule 0 (the plain minimum of the same fold curve) and the
    validation-accuracy objective (the best candidate of the keep curve).
    A rule that picks a ratio already searched gets that row (the merges
    would be identical)."""
    label, method, params, scale = [m for m in METHODS if m[0] == method][0]
    cv = searched(s, method, params, scale, WIDEN,
                  purify={"keep": "cv", "candidates": candidates, "se_rule": 1.0})
    r = {"purify cv": cv, "keep_curve": keep_curve(s, method, params, candidates)}
    drift = [c[-1] for c in cv["curve"]]
    picks = {"purify cv, se_rule 0": candidates[int(np.argmin(drift))],
             "purify, val-accuracy objective": max(r["keep_curve"], key=lambda c: c["val"])["keep"]}
    done = {cv["keep"]: cv}
    for plabel, keep in picks.items():
        if keep not in done:
            done[keep] = searched(s, method, params, scale, WIDEN, purify={"keep": keep})
            done[keep]["keep"] = keep
        r[plabel] = dict(done[keep])
    log("    %-16s purify cv %.1f (keep %g), se_rule 0 keep %g, val objective keep %g" % (
        label, cv["norm"], cv["keep"], picks["purify cv, se_rule 0"],
        picks["purify, val-accuracy objective"]))
    return r


def purify_layer_rows(s, method, candidates, log=print):
    """One method (widened searches): unpurified, purify keep="cv" (one
    ratio for the model, se_rule 1) and keep="cv" per layer (each 2-D
    tensor its own ratio by the same rule on its own fold curves)."""
    label, method, params, scale = [m for m in METHODS if m[0] == method][0]
    r = {"widened": searched(s, method, params, scale, WIDEN),
         "purify cv": searched(s, method, params, scale, WIDEN,
                               purify={"keep": "cv", "candidates": candidates,
                                       "se_rule": 1.0})}
    r["purify cv, per layer"] = searched(
        s, method, params, scale, WIDEN,
        purify={"keep": "cv", "candidates": candidates, "se_rule": 1.0, "per_layer": True})
    log("    %-16s unpurified %.1f  purify cv %.1f (keep %g)  per layer %.1f (%s)" % (
        label, r["widened"]["norm"], r["purify cv"]["norm"], r["purify cv"]["keep"],
        r["purify cv, per layer"]["norm"],
        ", ".join("%g" % v for v in r["purify cv, per layer"]["keep"].values())))
    return r


def whiten_rows(s, log=print):
    """Nothing when the library has no whiten parameter; else ESM with whiten="rank_aware" (widened search), to join the full
    part's released ESM row."""
    if not has_param("esm", "whiten"):
        return {}
    label, method, params, scale = [m for m in METHODS if m[0] == "esm"][0]
    r = searched(s, method, dict(params, whiten="rank_aware"), scale, WIDEN)
    log("    esm, whiten rank_aware %.1f (alpha %.3f)" % (r["norm"], r["scale"]))
    return {"esm": {"whiten rank_aware": r}}


# ESM variants aimed at its gap to the SVD family (issue 25): combine
# "spectral" keeps A_cat's row norms between the polar factors (TSV-M's
# form on ESM's essential basis) instead of whitening every direction to
# the mean; "scalings off" drops the released polarized scalings
# (inter-task, eigenvalue, input-column and layer), whose norm^2 weights
# the spectral form would otherwise keep.
_ESM_OFF = dict(inter_task=False, eig_weighting=False, inter_dim=False, layer_scaling=False)
ESM_VARIANTS = [("combine spectral, scalings off", dict(combine="spectral", **_ESM_OFF)),
                ("combine polar, scalings off", dict(_ESM_OFF))]


def esm_variant_rows(s, log=print, names=None):
    """Nothing when the library's esm has no combine parameter; else each
    ESM_VARIANTS row (or those named in `names`; widened search), to join
    the full part's released ESM and its rivals."""
    if not has_param("esm", "combine"):
        return {}
    label, method, params, scale = [m for m in METHODS if m[0] == "esm"][0]
    out = {}
    for name, extra in ESM_VARIANTS:
        if names is not None and name not in names:
            continue
        out[name] = searched(s, method, dict(params, **extra), scale, WIDEN)
        log("    esm, %s %.1f (alpha %.3f)" % (name, out[name]["norm"], out[name]["scale"]))
    return {"esm": out}


SVD_FAMILY = ("tsv", "iso_c", "iso_cts")


def rival_rows(s, log=print, esm=True):
    """TSV-M, Iso-C and Iso-CTS with whiten="released" (and, with `esm`,
    released ESM), widened searches only, each as its "widened" row."""
    out = {}
    for label, method, params, scale in METHODS:
        if (esm and label == "esm") or label in SVD_FAMILY:
            # The released whitening, whatever the library's default.
            p = dict(params, whiten="released") if label in SVD_FAMILY else params
            out[label] = {"widened": searched(s, method, p, scale, WIDEN)}
            log("    %-16s %.1f (%s %.3f)" % (label, out[label]["widened"]["norm"], scale[0],
                                              out[label]["widened"]["scale"]))
    return out


def vit_rows(s, log=print):
    """The ViT check of ESM's scalings (issue 25): released ESM, TSV-M,
    Iso-C and Iso-CTS (whiten="released") and every ESM_VARIANTS row,
    widened searches only (the fixed bracket is the MLP's question)."""
    out = rival_rows(s, log)
    out["esm"].update(esm_variant_rows(s, log).get("esm", {}))
    return out


# ESM at the library's defaults since issue 25's change (scalings off,
# combine polar, whiten released), unpurified, purified (keep "cv", the
# library's rule: se_rule 1) and with rank-aware whitening, beside the SVD
# family's released rows of the same run: issue 25's "every purified merge
# >= its base" and "ESM >= the best rival" for the new default.
ESM_DEFAULT = "new default"
_PURIFY_CV = {"keep": "cv", "se_rule": 1.0}
ESM_DEFAULT_ROWS = [
    (ESM_DEFAULT, {}, None),
    (ESM_DEFAULT + " + purify cv", {}, _PURIFY_CV),
    (ESM_DEFAULT + " + whiten rank_aware", {"whiten": "rank_aware"}, None),
    (ESM_DEFAULT + " + purify cv + whiten rank_aware", {"whiten": "rank_aware"}, _PURIFY_CV)]


def esm_default_spec():
    """ESM at the library's defaults: METHODS' esm row (which pins the
    released scalings) without the pins; (method, params, scale)."""
    _, method, params, scale = [m for m in METHODS if m[0] == "esm"][0]
    defaults = {p["name"]: p.get("default") for p in libmerge.method_info("esm")["params"]}
    assert not any(defaults[k] for k in merges.ESM_RELEASED), "esm's scalings default on"
    return method, {k: v for k, v in params.items() if k not in merges.ESM_RELEASED}, scale


def esm_default_rows(s, candidates, log=print, names=None):
    """ESM_DEFAULT_ROWS (or those named in `names`; widened searches, purify
    cv among `candidates`) as rows["esm"][name], then rival_rows' SVD
    family."""
    method, params, scale = esm_default_spec()
    out = {}
    for name, extra, purify in ESM_DEFAULT_ROWS:
        if names is not None and name not in names:
            continue
        pur = dict(purify, candidates=candidates) if purify else None
        out[name] = searched(s, method, dict(params, **extra), scale, WIDEN, purify=pur)
        log("    esm, %s %.1f (alpha %.3f%s)" % (
            name, out[name]["norm"], out[name]["scale"],
            ", keep %g" % out[name]["keep"] if pur else ""))
    rows = {"esm": out}
    rows.update(rival_rows(s, log, esm=False))
    return rows


def whiten_svd_rows(s, released=True, log=print):
    """TSV-M, Iso-C and Iso-CTS with whiten="rank_aware" (widened search)
    and, with `released`, whiten="released" beside it (the "widened" row;
    without it the rows join a part that has them)."""
    out = {}
    for label, method, params, scale in METHODS:
        if label not in SVD_FAMILY:
            continue
        r = {"whiten rank_aware": searched(s, method, dict(params, whiten="rank_aware"),
                                           scale, WIDEN)}
        if released:
            r["widened"] = searched(s, method, dict(params, whiten="released"), scale, WIDEN)
        out[label] = r
        log("    %-16s rank_aware %.1f (%s %.3f)%s" % (
            label, r["whiten rank_aware"]["norm"], scale[0], r["whiten rank_aware"]["scale"],
            "  released %.1f (%.3f)" % (r["widened"]["norm"], r["widened"]["scale"])
            if released else ""))
    return out


def has_param(method, name):
    return any(p["name"] == name for p in libmerge.method_info(method)["params"])


def _coefficient_models(s, adapters, lambdas):
    """Per task, the model W0 + c[m][k] s B A (c: NSC's coefficients per
    module and task): task arithmetic at lambda = alpha on these models is
    W0 + alpha sum_k c[m][k] s B A, the NSC merge scaled by alpha (alpha 1:
    NSC's own merge): the merges of the `nsc` strategy's `alpha` that
    libmerge.torch.nsc_scale_search searches, through task arithmetic's own
    search path."""
    out = []
    for k, adapter in enumerate(adapters):
        sd = {name: v.copy() for name, v in s.base.items()}
        for name, (a, b, scale) in adapter.items():
            delta = float(lambdas[name][k]) * scale * (b.astype(np.float64) @ a)
            sd[name] = (sd[name] + delta).astype(np.float32)
        out.append(sd)
    return out


def nsc_scale_searched(s, adapters, lambdas):
    """NSC's coefficients times one global alpha searched on validation
    exactly as task arithmetic's lambda (the same helper, bracket and
    widening); "scale" is alpha (1 = the optimised coefficients)."""
    return searched(s, "task_arithmetic", {}, ("lambda", 0.0, 1.5),
                    WIDEN, models=_coefficient_models(s, adapters, lambdas))


def teacher_searched(s, models, teacher, adapters=None, lambdas=None):
    """The scale searched on the label-free teacher score (the NSC drivers'
    default): task arithmetic's lambda over `models`, or with `lambdas`
    one global alpha of NSC's coefficients (libmerge.torch.nsc_scale_search,
    what the drivers run)."""
    if lambdas is not None:
        res = lt.nsc_scale_search(s.net, adapters, lambdas, teacher, widen=WIDEN,
                                  max_evals=s.max_evals, threads=s.threads)
    else:
        res = libmerge.search("task_arithmetic", s.base, models, teacher, param="lambda",
                              lo=0.0, hi=1.5, max_evals=s.max_evals, widen=WIDEN,
                              threads=s.threads)
    return s.scored(res[3], scale=res[0], widened=res.widened, at_edge=res.at_edge)


def nsc_output_matched(s, adapters, lambdas):
    """NSC's coefficients scaled per module by the label-free rule
    (alpha_rule="output_match": least-squares match of the merged delta's
    output to each task's adapter's on the statistics' unlabeled rows)."""
    merged = libmerge.merge("nsc", s.base, [libmerge.LoraAdapter(a) for a in adapters],
                            stats=s.stats, alpha_rule="output_match", threads=s.threads,
                            **{"lambda": {k: [float(x) for x in v] for k, v in lambdas.items()}})
    return s.scored(merged)


def nsc_rows(s, steps, log=print):
    """LoRA rows: task arithmetic searched (widened); NSC's gradient and
    SPSA drivers at the safe defaults (held-out early stopping on unseen
    unlabeled rows), with a trust region, and started at task arithmetic's
    searched lambda; each NSC run also with its coefficients times a
    global alpha searched on validation like task arithmetic's lambda
    (rows "..., scale searched")."""
    adapters = [a for a, _ in s.fts]
    loaders = [[torch.from_numpy(t["val"][0])] for t in s.tasks]  # unlabeled, as merges.py
    heldout = [[torch.from_numpy(t["train"][0][:256])] for t in s.tasks]
    ta = searched(s, "task_arithmetic", {}, ("lambda", 0.0, 1.5), WIDEN)
    out = {"task_arithmetic": ta}
    # The drivers' default scale (label-free): each task's own fine-tuned
    # model is the teacher on its unlabeled validation rows.
    teacher = lt.nsc_teacher_score(s.net, adapters, loaders, outputs=lambda k, f: s.heads[k](f))
    out["task arithmetic, teacher scale"] = teacher_searched(s, s.sds, teacher)
    runs = [("nsc, safe defaults", lt.nsc_merge, dict(heldout_loaders=heldout)),
            ("nsc, safe defaults + trust_radius 0.2", lt.nsc_merge,
             dict(heldout_loaders=heldout, trust_radius=0.2)),
            ("nsc spsa, safe defaults", lt.nsc_merge_spsa, dict(heldout_loaders=heldout)),
            ("nsc, safe defaults, init at TA's lambda", lt.nsc_merge,
             dict(heldout_loaders=heldout, init=ta["scale"])),
            ("nsc spsa, safe defaults, init at TA's lambda", lt.nsc_merge_spsa,
             dict(heldout_loaders=heldout, init=ta["scale"]))]
    for label, driver, kw in runs:
        report = {}
        t0 = time.perf_counter()
        # scale_rule="fixed": the coefficients as optimised; each scale
        # rule below is applied to them (the teacher row is the default).
        sd = driver(copy.deepcopy(s.net), adapters, loaders, steps=steps, report=report,
                    scale_rule="fixed", **kw)
        lambdas = report["lambdas"]
        coef = float(np.mean([np.mean(v) for v in lambdas.values()]))
        out[label] = s.scored({k: v.numpy() for k, v in sd.items()}, mean_coefficient=coef,
                              best_step=report.get("best_step"),
                              seconds=time.perf_counter() - t0)
        scaled = nsc_scale_searched(s, adapters, lambdas)
        scaled["mean_coefficient"] = coef
        out[label + ", scale searched"] = scaled
        taught = teacher_searched(s, None, teacher, adapters, lambdas)
        taught["mean_coefficient"] = coef
        out[label + ", teacher scale"] = taught
        if s.stats is not None:
            matched = nsc_output_matched(s, adapters, lambdas)
            matched["mean_coefficient"] = coef
            out[label + ", output_match"] = matched
        log("    %-46s %.1f; scale searched %.1f (alpha %.3f, mean coefficient %.3f); "
            "teacher %.1f (alpha %.3f)%s" % (
            label, out[label]["norm"], scaled["norm"], scaled["scale"], coef, taught["norm"],
            taught["scale"],
            "; output_match %.1f" % out[label + ", output_match"]["norm"]
            if s.stats is not None else ""))
    log("    %-46s %.1f (lambda %.3f); teacher scale %.1f (lambda %.3f)" % (
        "task_arithmetic", ta["norm"], ta["scale"], out["task arithmetic, teacher scale"]["norm"],
        out["task arithmetic, teacher scale"]["scale"]))
    return out
