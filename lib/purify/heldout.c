/* Held-out tuning of purification: the label-free drift objective and the
 * choice of the keep ratio that minimises it. */
#include <math.h>
#include <string.h>

#include "libmerge/experimental/purify_tune.h"
#include "libmerge/stats.h"
#include "linalg/linalg.h"
#include "purify/state.h"
#include "stats/lookup.h"

/* tr(D H D^T) for D = merged - (base + tau_t), H = held-out X^T X. */
static lm_status layer_drift(lm_plan *p, const char *name, const lm_tensor *b,
                             const lm_tensor *merged, const lm_tensor *ft,
                             const double *h, double *out)
{
    lm_context *ctx = p->ctx;
    size_t m = (size_t)b->shape[0], n = (size_t)b->shape[1];
    float *fm = lm__calloc(ctx, 2 * m * n, sizeof(float));
    double *d = lm__calloc(ctx, 2 * m * n, sizeof(double));
    lm_status st = fm && d ? lm__read_f32(ctx, merged, fm) : LM_ERR_OUT_OF_MEMORY;
    if (st == LM_OK)
        st = lm__read_f32(ctx, ft, fm + m * n);
    if (st == LM_OK) {
        for (size_t i = 0; i < m * n; i++)
            d[i] = (double)fm[i] - (double)fm[m * n + i];
        double *dh = d + m * n;
        lm__gemm(false, false, m, n, n, 1.0, d, h, 0.0, dh);
        double acc = 0;
        for (size_t i = 0; i < m * n; i++)
            acc += dh[i] * d[i];
        *out += acc;
    }
    (void)name;
    lm_free(ctx, fm);
    lm_free(ctx, d);
    return st;
}

/* The drift of every 2-D tensor (per_layer[j] for the base's j-th, may
 * be NULL) and their sum. */
static lm_status drift_layers(lm_plan *p, const lm_model *merged,
                              const struct lm_stats *heldout,
                              double *per_layer, double *out)
{
    double total = 0;
    for (size_t i = 0; i < p->base->count; i++) {
        const char *name = p->base->entries[i].name;
        const lm_tensor *b = p->base->entries[i].tensor;
        lm_tensor *mt = lm__model_lookup(merged, name);
        double layer = 0;
        if (b->ndim != 2 || !mt)
            continue;
        for (size_t t = 0; t < p->n_models; t++) {
            const double *h;
            size_t d;
            uint64_t rows;
            if (!p->models[t] ||
                lm__stats_lookup(heldout, t, name, &h, &d, &rows) ||
                d != (size_t)b->shape[1])
                continue;
            lm_tensor *ft = lm__model_lookup(p->models[t], name);
            if (ft)
                LM_TRY(layer_drift(p, name, b, mt, ft, h, &layer));
        }
        if (per_layer)
            per_layer[i] = layer;
        total += layer;
    }
    *out = total;
    return LM_OK;
}

lm_status lm_plan_heldout_drift(lm_plan *p, const lm_model *merged,
                                const struct lm_stats *heldout, double *out)
{
    if (!p || !merged || !heldout || !out)
        return LM_ERR_INVALID_ARGUMENT;
    if (!p->base)
        return lm_context_set_error(p->ctx, LM_ERR_STATE,
                                    "drift: the plan has no base");
    return drift_layers(p, merged, heldout, NULL, out);
}

/* Shared loop of the two tuners: executes the plan at every keep ratio and
 * keeps the one whose objective (sign-adjusted so smaller is better) wins. */
typedef lm_status (*objective_fn)(lm_plan *p, double keep,
                                  const lm_model *merged, double *obj,
                                  void *user);

static lm_status tune(lm_plan *p, const double *candidates, size_t n,
                      objective_fn objective, void *user, double sign,
                      double *best_keep, double *objectives)
{
    struct lm__purify *pu = lm__purify_of(p);
    if (!pu)
        return lm_context_set_error(p->ctx, LM_ERR_STATE,
                                    "tune purify: enable purification first "
                                    "(lm_plan_set_purify)");
    lm_purify_options o = pu->opts;
    double best = NAN, best_obj = INFINITY;
    /* Only keep changes between the executions: factor every layer once. */
    bool own_cache = false;
    LM_TRY(lm__factor_cache_begin(pu, &own_cache));
    lm_status st = LM_OK;
    for (size_t i = 0; i < n && st == LM_OK; i++) {
        o.keep = candidates[i];
        st = lm_plan_set_purify(p, &o);
        lm_model *merged = NULL;
        if (st == LM_OK)
            st = lm_plan_execute(p, &merged);
        double obj = 0;
        if (st == LM_OK)
            st = objective(p, candidates[i], merged, &obj, user);
        lm_model_destroy(merged);
        if (st != LM_OK)
            break;
        if (objectives)
            objectives[i] = obj;
        if (sign * obj < best_obj) {
            best_obj = sign * obj;
            best = candidates[i];
        }
    }
    if (own_cache)
        lm__factor_cache_end(pu);
    LM_TRY(st);
    o.keep = best;
    LM_TRY(lm_plan_set_purify(p, &o));
    if (best_keep)
        *best_keep = best;
    return LM_OK;
}

static lm_status drift_objective(lm_plan *p, double keep,
                                 const lm_model *merged, double *obj,
                                 void *user)
{
    (void)keep;
    return lm_plan_heldout_drift(p, merged, user, obj);
}

lm_status lm_plan_tune_purify(lm_plan *p, const struct lm_stats *heldout,
                              const double *candidates, size_t n,
                              double *best_keep, double *objectives)
{
    if (!p || !heldout || !candidates || !n)
        return LM_ERR_INVALID_ARGUMENT;
    return tune(p, candidates, n, drift_objective, (void *)heldout, 1.0,
                best_keep, objectives);
}

/* Fold f's objective: `objective` (user: fold f's rows, or what `make`
 * builds from them) of the plan run on the other folds' statistics. */
static lm_status fold_curve(lm_plan *p, const struct lm_stats *const *folds,
                            size_t n_folds, size_t f, const double *candidates,
                            size_t n, objective_fn objective, void *user,
                            double *curve)
{
    lm_stats *train = NULL;
    LM_TRY(lm_stats_create(p->ctx, &train));
    lm_status st = LM_OK;
    for (size_t g = 0; g < n_folds && st == LM_OK; g++)
        if (g != f)
            st = lm_stats_merge(train, folds[g]);
    if (st == LM_OK) {
        p->stats = train;
        st = tune(p, candidates, n, objective, user, 1.0, NULL, curve);
    }
    lm_stats_destroy(train);
    return st;
}

lm_status lm__purify_fold_curves(lm_plan *p,
                                 const struct lm_stats *const *folds,
                                 size_t n_folds, const double *candidates,
                                 size_t n, double *per_fold)
{
    const struct lm_stats *own = p->stats;
    lm_status st = LM_OK;
    for (size_t f = 0; f < n_folds && st == LM_OK; f++)
        st = fold_curve(p, folds, n_folds, f, candidates, n, drift_objective,
                        (void *)folds[f], per_fold + f * n);
    p->stats = own;
    return st;
}

/* One fold's per-layer drifts: candidate i's go to out + i * n_base (the
 * executions run in candidate order). */
struct layer_drifts {
    const struct lm_stats *heldout;
    double *out;
    size_t n_base, next;
};

static lm_status layer_objective(lm_plan *p, double keep,
                                 const lm_model *merged, double *obj,
                                 void *user)
{
    (void)keep;
    struct layer_drifts *l = user;
    LM_TRY(drift_layers(p, merged, l->heldout, l->out + l->next * l->n_base,
                        obj));
    l->next++;
    return LM_OK;
}

lm_status lm__purify_fold_layer_curves(lm_plan *p,
                                       const struct lm_stats *const *folds,
                                       size_t n_folds,
                                       const double *candidates, size_t n,
                                       double *per_layer)
{
    if (!p->base)
        return lm_context_set_error(p->ctx, LM_ERR_STATE,
                                    "drift: the plan has no base");
    const struct lm_stats *own = p->stats;
    size_t nb = p->base->count;
    double *totals = lm__calloc(p->ctx, n, sizeof(double));
    lm_status st = totals ? LM_OK
                          : lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                                 "purify per-layer: out of "
                                                 "memory");
    for (size_t f = 0; f < n_folds && st == LM_OK; f++) {
        struct layer_drifts l = {folds[f], per_layer + f * n * nb, nb, 0};
        memset(l.out, 0, n * nb * sizeof(double));
        st = fold_curve(p, folds, n_folds, f, candidates, n, layer_objective,
                        &l, totals);
    }
    p->stats = own;
    lm_free(p->ctx, totals);
    return st;
}

lm_status lm_plan_tune_purify_folds(lm_plan *p,
                                    const struct lm_stats *const *folds,
                                    size_t n_folds, const double *candidates,
                                    size_t n, double *best_keep,
                                    double *objectives)
{
    if (!p || !folds || n_folds < 2 || !candidates || !n)
        return LM_ERR_INVALID_ARGUMENT;
    for (size_t f = 0; f < n_folds; f++)
        if (!folds[f])
            return LM_ERR_INVALID_ARGUMENT;
    struct lm__purify *pu = lm__purify_of(p);
    if (!pu)
        return lm_context_set_error(p->ctx, LM_ERR_STATE,
                                    "tune purify: enable purification first "
                                    "(lm_plan_set_purify)");
    double *per_fold = lm__calloc(p->ctx, n_folds * n, sizeof(double));
    if (!per_fold)
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "tune purify: out of memory");
    lm_purify_options o = pu->opts;
    lm_status st = lm__purify_fold_curves(p, folds, n_folds, candidates, n,
                                          per_fold);
    if (st == LM_OK) {
        size_t best = 0;
        double best_sum = 0;
        for (size_t i = 0; i < n; i++) {
            double sum = 0;
            for (size_t f = 0; f < n_folds; f++)
                sum += per_fold[f * n + i];
            if (objectives)
                objectives[i] = sum;
            if (i == 0 || sum < best_sum) {
                best = i;
                best_sum = sum;
            }
        }
        o.keep = candidates[best];
        if (best_keep)
            *best_keep = candidates[best];
    }
    /* On failure the plan keeps the ratio it had. */
    lm_status set = lm_plan_set_purify(p, &o);
    lm_free(p->ctx, per_fold);
    return st != LM_OK ? st : set;
}

struct host_score {
    lm_score_fn fn;
    void *user;
};

static lm_status host_objective(lm_plan *p, double keep,
                                const lm_model *merged, double *obj,
                                void *user)
{
    const struct host_score *h = user;
    if (h->fn(keep, merged, obj, h->user) != 0)
        return lm_context_set_error(p->ctx, LM_ERR_CALLBACK,
                                    "tune purify: the score callback "
                                    "stopped the search at keep %g", keep);
    return LM_OK;
}

lm_status lm_plan_tune_purify_score(lm_plan *p, const double *candidates,
                                    size_t n, lm_score_fn score, void *user,
                                    double *best_keep, double *scores)
{
    if (!p || !candidates || !n || !score)
        return LM_ERR_INVALID_ARGUMENT;
    struct host_score h = {score, user};
    return tune(p, candidates, n, host_objective, &h, -1.0, best_keep,
                scores);
}
