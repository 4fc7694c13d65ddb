/* keep="cv": which objective a tuning uses, and the joint choice of the
 * keep ratio with a scale parameter. This was the Python bindings' policy
 * up to 0.1; it lives here so C and C++ hosts get the same choice. */
#include <math.h>
#include <string.h>

#include "libmerge/experimental/purify_tune.h"
#include "libmerge/stats.h"
#include "purify/state.h"

static const double DEFAULT_CANDIDATES[] = {1.0, 0.995, 0.99, 0.98, 0.97, 0.95,
                                            0.9, 0.85, 0.8, 0.7, 0.6, 0.5};

size_t lm_purify_default_candidates(const double **out)
{
    if (out)
        *out = DEFAULT_CANDIDATES;
    return sizeof(DEFAULT_CANDIDATES) / sizeof(DEFAULT_CANDIDATES[0]);
}

void lm_purify_cv_options_init(lm_purify_cv_options *options)
{
    if (options)
        *options = (lm_purify_cv_options)LM_PURIFY_CV_OPTIONS_INIT;
}

struct objective {
    lm_purify_objective kind;
    const lm_stats *heldout;
    const lm_stats *const *folds;
    size_t n_folds;
    const lm_stats **owned; /* the plan's stats' folds, as an array */
};

/* Explicit held-out rows or folds first, then what the plan's statistics
 * carry (folds before a held-out part); a host score overrides both. */
static lm_status resolve(lm_plan *p, const lm_purify_cv_options *o,
                         struct objective *obj)
{
    memset(obj, 0, sizeof(*obj));
    obj->heldout = o->heldout;
    obj->folds = o->folds;
    obj->n_folds = o->folds ? o->n_folds : 0;
    if (!o->heldout && !o->folds && p->stats) {
        size_t k = lm_stats_fold_count(p->stats);
        if (k) {
            obj->owned = lm__calloc(p->ctx, k, sizeof(*obj->owned));
            if (!obj->owned)
                return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                            "purify cv: out of memory");
            for (size_t f = 0; f < k; f++)
                obj->owned[f] = lm_stats_fold_at(p->stats, f);
            obj->folds = obj->owned;
            obj->n_folds = k;
        } else {
            obj->heldout = lm_stats_heldout(p->stats);
        }
    }
    if (obj->folds && obj->n_folds < 2)
        return lm_context_set_error(p->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "purify: folds needs at least 2 stats");
    if (!o->score && !obj->heldout && !obj->folds)
        return lm_context_set_error(
            p->ctx, LM_ERR_INVALID_ARGUMENT,
            "purify keep=\"cv\" needs held-out statistics (explicit held-out "
            "stats or folds, or plan statistics with a held-out fraction or "
            "folds: lm_stats_set_split) or a host score");
    obj->kind = o->score ? LM_PURIFY_HOST_SCORE
                : obj->heldout ? LM_PURIFY_HELDOUT_DRIFT
                               : LM_PURIFY_FOLDS_DRIFT;
    return LM_OK;
}

/* One tuning of the keep ratio at the plan's current scale. */
static lm_status tune_once(lm_plan *p, const lm_purify_cv_options *o,
                           const struct objective *obj, const double *cands,
                           size_t n, double *best, double *row)
{
    switch (obj->kind) {
    case LM_PURIFY_FOLDS_DRIFT:
        return lm_plan_tune_purify_folds(p, obj->folds, obj->n_folds, cands,
                                         n, best, row);
    case LM_PURIFY_HELDOUT_DRIFT:
        return lm_plan_tune_purify(p, obj->heldout, cands, n, best, row);
    default:
        return lm_plan_tune_purify_score(p, cands, n, o->score, o->score_user,
                                         best, row);
    }
}

static lm_status check_options(lm_plan *p, const lm_purify_cv_options *o,
                               const lm_purify_cv_result *out)
{
    if (o->struct_size < sizeof(lm_purify_cv_options) ||
        (out && out->struct_size < sizeof(lm_purify_cv_result)))
        return lm_context_set_error(p->ctx, LM_ERR_ABI,
                                    "purify cv: options or result "
                                    "struct_size too small");
    if (o->candidates && !o->n_candidates)
        return lm_context_set_error(p->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "purify cv: no candidates");
    if (o->scale && (!o->scales || !o->n_scales))
        return lm_context_set_error(p->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "purify cv: scale '%s' has no values",
                                    o->scale);
    if (!lm__purify_of(p))
        return lm_context_set_error(p->ctx, LM_ERR_STATE,
                                    "tune purify: enable purification first "
                                    "(lm_plan_set_purify)");
    return LM_OK;
}

struct choice {
    bool have;
    double value, keep, scale;
};

/* Every scale in order; the strictly smallest objective at its own best
 * keep ratio wins (the first on ties). */
static lm_status tune_scales(lm_plan *p, const lm_purify_cv_options *o,
                             const struct objective *obj, const double *cands,
                             size_t n, double *curve, struct choice *c)
{
    size_t n_scales = o->scale ? o->n_scales : 1;
    double *scratch = curve ? NULL : lm__calloc(p->ctx, n, sizeof(double));
    if (!curve && !scratch)
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "purify cv: out of memory");
    double sign = obj->kind == LM_PURIFY_HOST_SCORE ? -1.0 : 1.0;
    lm_status st = LM_OK;
    for (size_t s = 0; s < n_scales && st == LM_OK; s++) {
        double *row = curve ? curve + s * n : scratch, best = NAN;
        if (o->scale)
            st = lm_plan_set_float(p, o->scale, o->scales[s]);
        if (st == LM_OK)
            st = tune_once(p, o, obj, cands, n, &best, row);
        size_t i = 0;
        while (st == LM_OK && i < n && cands[i] != best)
            i++;
        if (st == LM_OK && i == n)
            st = lm_context_set_error(p->ctx, LM_ERR_NONFINITE,
                                      "purify cv: no keep ratio won (the "
                                      "objectives are not finite)");
        if (st == LM_OK && (!c->have || sign * row[i] < c->value)) {
            *c = (struct choice){true, sign * row[i], best,
                                 o->scale ? o->scales[s] : NAN};
        }
    }
    lm_free(p->ctx, scratch);
    return st;
}

lm_status lm_plan_tune_purify_cv(lm_plan *p, const lm_purify_cv_options *o,
                                 double *curve, lm_purify_cv_result *out)
{
    if (!p || !o)
        return LM_ERR_INVALID_ARGUMENT;
    LM_TRY(check_options(p, o, out));
    const double *cands = o->candidates;
    size_t n = o->n_candidates;
    if (!cands)
        n = lm_purify_default_candidates(&cands);
    struct objective obj;
    lm_status st = resolve(p, o, &obj);
    struct choice c = {false, 0, 0, NAN};
    if (st == LM_OK)
        st = tune_scales(p, o, &obj, cands, n, curve, &c);
    lm_free(p->ctx, obj.owned);
    LM_TRY(st);
    lm_purify_options opts = lm__purify_of(p)->opts;
    opts.keep = c.keep;
    LM_TRY(lm_plan_set_purify(p, &opts));
    if (o->scale)
        LM_TRY(lm_plan_set_float(p, o->scale, c.scale));
    if (out) {
        out->keep = c.keep;
        out->scale = c.scale;
        out->objective = obj.kind;
        out->n_folds = obj.kind == LM_PURIFY_FOLDS_DRIFT ? obj.n_folds : 0;
    }
    return LM_OK;
}
