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
    const double *cands;    /* the keep ratios tried: given or default */
    size_t n_cands;
};

/* Explicit held-out rows or folds first, then what the plan's statistics
 * carry (folds before a held-out part); a host score overrides both. */
static lm_status resolve(lm_plan *p, const lm_purify_cv_options *o,
                         struct objective *obj)
{
    memset(obj, 0, sizeof(*obj));
    obj->cands = o->candidates;
    obj->n_cands = o->n_candidates;
    if (!obj->cands)
        obj->n_cands = lm_purify_default_candidates(&obj->cands);
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

/* What one tuning chose at one scale. */
struct tuned {
    double keep;
    double gain, gain_se; /* against keep 1.0, folds only; else NaN */
};

/* Mean and standard error of d[f * n + i] - d[f * n + j] over folds. */
static void paired(const double *d, size_t k, size_t n, size_t i, size_t j,
                   double *mean, double *se)
{
    double m = 0, ss = 0;
    for (size_t f = 0; f < k; f++)
        m += d[f * n + i] - d[f * n + j];
    m /= (double)k;
    for (size_t f = 0; f < k; f++) {
        double e = d[f * n + i] - d[f * n + j] - m;
        ss += e * e;
    }
    *mean = m;
    *se = sqrt(ss / (double)(k - 1) / (double)k);
}

/* The index of keep 1.0 among the candidates, or n. */
static size_t index_of_one(const double *cands, size_t n)
{
    size_t i = 0;
    while (i < n && cands[i] != 1.0)
        i++;
    return i;
}

/* sums[i]: candidate i's fold curve d[f * n + i] summed over the k folds
 * in order; returns the candidate of the smallest sum (the first on
 * ties). */
static size_t fold_minimum(const double *d, size_t k, size_t n, double *sums)
{
    size_t best = 0;
    for (size_t i = 0; i < n; i++) {
        sums[i] = 0;
        for (size_t f = 0; f < k; f++)
            sums[i] += d[f * n + i];
        if (sums[i] < sums[best])
            best = i;
    }
    return best;
}

size_t lm__purify_se_choice(const double *d, size_t k, size_t n,
                            const double *cands, double z, size_t best)
{
    size_t chosen = best;
    for (size_t i = 0; z > 0 && i < n; i++) {
        double excess, se;
        paired(d, k, n, i, best, &excess, &se);
        if (excess <= z * se && cands[i] > cands[chosen])
            chosen = i;
    }
    return chosen;
}

/* K folds. With z > 0 the paired one-standard-error rule: among the
 * candidates whose drift exceeds the minimum's by at most z standard
 * errors of the fold-paired difference, the largest keep ratio (the least
 * pruning), so fold-to-fold noise cannot make the tuning prune: keep 1.0
 * stays unless its excess over the minimum is beyond z standard errors.
 * z = 0: the minimum (the first in the list on ties), as
 * lm_plan_tune_purify_folds. */
static lm_status tune_folds(lm_plan *p, const struct objective *obj,
                               double z, const double *cands, size_t n,
                               struct tuned *t, double *row)
{
    size_t k = obj->n_folds;
    double *d = lm__calloc(p->ctx, k * n, sizeof(double));
    if (!d)
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "purify cv: out of memory");
    lm_status st = lm__purify_fold_curves(p, obj->folds, k, cands, n, d);
    if (st != LM_OK) {
        lm_free(p->ctx, d);
        return st;
    }
    size_t best = fold_minimum(d, k, n, row), one = index_of_one(cands, n);
    if (!isfinite(row[best])) {
        lm_free(p->ctx, d);
        return lm_context_set_error(p->ctx, LM_ERR_NONFINITE,
                                    "purify cv: the held-out drift is not "
                                    "finite");
    }
    size_t chosen = lm__purify_se_choice(d, k, n, cands, z, best);
    t->keep = cands[chosen];
    t->gain = t->gain_se = NAN;
    if (one < n) {
        double mean, se;
        paired(d, k, n, one, chosen, &mean, &se);
        t->gain = mean * (double)k;
        t->gain_se = se * (double)k;
    }
    lm_free(p->ctx, d);
    return LM_OK;
}

/* One tuning of the keep ratio at the plan's current scale. */
static lm_status tune_once(lm_plan *p, const lm_purify_cv_options *o,
                           const struct objective *obj, const double *cands,
                           size_t n, struct tuned *t, double *row)
{
    t->gain = t->gain_se = NAN;
    switch (obj->kind) {
    case LM_PURIFY_FOLDS_DRIFT:
        return tune_folds(p, obj, o->se_rule, cands, n, t, row);
    case LM_PURIFY_HELDOUT_DRIFT:
        return lm_plan_tune_purify(p, obj->heldout, cands, n, &t->keep, row);
    default:
        return lm_plan_tune_purify_score(p, cands, n, o->score, o->score_user,
                                         &t->keep, row);
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
    if (!(o->se_rule >= 0) || isinf(o->se_rule))
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_RANGE,
                                    "purify cv: se_rule must be finite and "
                                    ">= 0 (got %g)", o->se_rule);
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
    double value, scale;
    struct tuned tuned;
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
        double *row = curve ? curve + s * n : scratch;
        struct tuned t = {NAN, NAN, NAN};
        if (o->scale)
            st = lm_plan_set_float(p, o->scale, o->scales[s]);
        if (st == LM_OK)
            st = tune_once(p, o, obj, cands, n, &t, row);
        size_t i = 0;
        while (st == LM_OK && i < n && cands[i] != t.keep)
            i++;
        if (st == LM_OK && i == n)
            st = lm_context_set_error(p->ctx, LM_ERR_NONFINITE,
                                      "purify cv: no keep ratio won (the "
                                      "objectives are not finite)");
        if (st == LM_OK && (!c->have || sign * row[i] < c->value)) {
            *c = (struct choice){true, sign * row[i],
                                 o->scale ? o->scales[s] : NAN, t};
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
    struct objective obj;
    lm_status st = resolve(p, o, &obj);
    struct choice c = {false, 0, NAN, {NAN, NAN, NAN}};
    if (st == LM_OK)
        st = tune_scales(p, o, &obj, obj.cands, obj.n_cands, curve, &c);
    lm_free(p->ctx, obj.owned);
    LM_TRY(st);
    lm_purify_options opts = lm__purify_of(p)->opts;
    opts.keep = c.tuned.keep;
    LM_TRY(lm_plan_set_purify(p, &opts));
    if (o->scale)
        LM_TRY(lm_plan_set_float(p, o->scale, c.scale));
    if (out) {
        out->keep = c.tuned.keep;
        out->gain = c.tuned.gain;
        out->gain_se = c.tuned.gain_se;
        out->scale = c.scale;
        out->objective = obj.kind;
        out->n_folds = obj.kind == LM_PURIFY_FOLDS_DRIFT ? obj.n_folds : 0;
    }
    return LM_OK;
}

/* Per layer: the fold curves of every 2-D tensor (the drift is a sum over
 * tensors, and with per-layer allocation a tensor's purification depends
 * only on its own keep ratio, so each layer's curve is what that layer
 * contributes whatever the others keep) and the same standard-error rule
 * on each. */
static lm_status choose_layers(lm_plan *p, const struct objective *obj,
                               double z, const double *cands, size_t n,
                               lm_purify_cv_result *out)
{
    size_t k = obj->n_folds, nb = p->base->count;
    /* The fold curves of every tensor, one tensor's, their fold sums, per
     * fold the drift at keep 1.0 and at the per-layer choice (a two-column
     * curve for paired()), and the chosen ratios. */
    double *d = lm__calloc(p->ctx, k * n * nb + k * n + n + 2 * k + nb,
                           sizeof(double));
    const char **names = lm__calloc(p->ctx, nb ? nb : 1, sizeof(char *));
    if (!d || !names) {
        lm_free(p->ctx, d);
        lm_free(p->ctx, names);
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "purify per-layer: out of memory");
    }
    double *layer = d + k * n * nb, *sums = layer + k * n, *pair = sums + n,
           *keeps = pair + 2 * k;
    lm_status st = lm__purify_fold_layer_curves(p, obj->folds, k, cands, n, d);
    size_t n_set = 0, one = index_of_one(cands, n);
    for (size_t j = 0; j < nb && st == LM_OK; j++) {
        if (p->base->entries[j].tensor->ndim != 2)
            continue;
        for (size_t i = 0; i < n; i++)
            for (size_t f = 0; f < k; f++)
                layer[f * n + i] = d[(f * n + i) * nb + j];
        size_t best = fold_minimum(layer, k, n, sums);
        if (!isfinite(sums[best])) {
            st = lm_context_set_error(p->ctx, LM_ERR_NONFINITE,
                                      "purify per-layer: the held-out drift "
                                      "of '%s' is not finite",
                                      p->base->entries[j].name);
            break;
        }
        size_t c = lm__purify_se_choice(layer, k, n, cands, z, best);
        for (size_t f = 0; f < k && one < n; f++) {
            pair[2 * f] += layer[f * n + one];
            pair[2 * f + 1] += layer[f * n + c];
        }
        names[n_set] = p->base->entries[j].name;
        keeps[n_set++] = cands[c];
    }
    if (st == LM_OK)
        st = lm__purify_layer_keeps_set(lm__purify_of(p), names, keeps, n_set);
    if (st == LM_OK && out) {
        out->keep = NAN;
        out->gain = out->gain_se = NAN;
        if (one < n) {
            double mean, se;
            paired(pair, k, 2, 0, 1, &mean, &se);
            out->gain = mean * (double)k;
            out->gain_se = se * (double)k;
        }
    }
    lm_free(p->ctx, d);
    lm_free(p->ctx, names);
    return st;
}

lm_status lm_plan_tune_purify_layers(lm_plan *p,
                                     const lm_purify_cv_options *o,
                                     lm_purify_cv_result *out)
{
    if (!p || !o)
        return LM_ERR_INVALID_ARGUMENT;
    LM_TRY(check_options(p, o, out));
    if (o->score || o->scale)
        return lm_context_set_error(p->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "purify per-layer: tunes on held-out "
                                    "folds only (no score, no joint scale)");
    if (!p->base)
        return lm_context_set_error(p->ctx, LM_ERR_STATE,
                                    "purify per-layer: the plan has no base");
    struct objective obj;
    lm_status st = resolve(p, o, &obj);
    if (st == LM_OK && obj.kind != LM_PURIFY_FOLDS_DRIFT)
        st = lm_context_set_error(p->ctx, LM_ERR_INVALID_ARGUMENT,
                                  "purify per-layer: needs K >= 2 folds "
                                  "(explicit, or the plan statistics' "
                                  "lm_stats_set_split folds)");
    /* Per-model allocation spreads every layer's keep over the whole
     * model: a layer's purification would depend on the others' ratios. */
    lm_purify_options opts = lm__purify_of(p)->opts;
    if (st == LM_OK && opts.allocation == LM_PURIFY_MODEL) {
        opts.allocation = LM_PURIFY_LAYER;
        st = lm_plan_set_purify(p, &opts);
    }
    if (st == LM_OK)
        st = choose_layers(p, &obj, o->se_rule, obj.cands, obj.n_cands, out);
    if (st == LM_OK && out) {
        out->scale = NAN;
        out->objective = LM_PURIFY_FOLDS_DRIFT;
        out->n_folds = obj.n_folds;
    }
    lm_free(p->ctx, obj.owned);
    return st;
}
