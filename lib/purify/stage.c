/* Purification as a plan stage (core/stage.h): lm_plan_set_purify
 * attaches it; the executor calls it for every tensor between loading and
 * the strategy, never knowing what it does. */
#include <string.h>

#include "libmerge/projector.h"
#include "purify/state.h"

static void destroy(void *self)
{
    struct lm__purify *pu = self;
    lm__purify_cache_end(pu);
    lm__factor_cache_end(pu);
    pthread_mutex_destroy(&pu->lock);
    lm_free(pu->ctx, pu->kept);
    lm_free(pu->ctx, pu->full);
    lm__purify_layer_keeps_clear(pu);
    lm_free(pu->ctx, pu);
}

/* Does the plan give purification any subspace of its own? */
static bool has_user_subspaces(const lm_plan *p)
{
    for (size_t i = 0; i < lm_plan_subspace_count(p); i++) {
        lm_subspace_user u;
        if (lm_plan_subspace_at(p, i, &u, NULL, NULL, NULL) == LM_OK &&
            u == LM_SUBSPACE_PURIFY)
            return true;
    }
    return false;
}

static lm_status check(void *self, const lm_plan *p, bool streaming)
{
    struct lm__purify *pu = self;
    if (!p->stats && !has_user_subspaces(p))
        return lm_context_set_error(p->ctx, LM_ERR_STATE,
                                    "plan: purification needs activation "
                                    "statistics (lm_plan_set_stats) or user "
                                    "subspaces (lm_plan_set_subspace)");
    if (streaming && pu->opts.allocation == LM_PURIFY_MODEL)
        return lm_context_set_error(p->ctx, LM_ERR_UNSUPPORTED,
                                    "merger: purification with per-model "
                                    "allocation needs every tensor first; "
                                    "use LM_PURIFY_LAYER or _UNIFORM");
    return LM_OK;
}

/* Per-model allocation sums ranks over every layer before purifying any,
 * unless this reuse (a search, a two-pass strategy) measured them. */
static lm_status begin(void *self, const lm_plan *p, bool *measure)
{
    struct lm__purify *pu = self;
    *measure = pu->opts.allocation == LM_PURIFY_MODEL &&
               !(pu->reuse_depth && pu->measured);
    if (!*measure)
        return LM_OK;
    lm_free(pu->ctx, pu->kept);
    lm_free(pu->ctx, pu->full);
    pu->n_kept = p->n_models;
    pu->kept = lm__calloc(pu->ctx, p->n_models ? p->n_models : 1,
                          sizeof(double));
    pu->full = lm__calloc(pu->ctx, p->n_models ? p->n_models : 1,
                          sizeof(double));
    if (!pu->kept || !pu->full) {
        pu->n_kept = 0;
        return lm_context_set_error(pu->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "purify: out of memory");
    }
    return LM_OK;
}

static lm_status measure(void *self, const lm_plan *p,
                         const struct lm__stage_tensor *t)
{
    return lm__purify_measure(self, p, t);
}

static void measured(void *self)
{
    struct lm__purify *pu = self;
    pu->measured = pu->reuse_depth > 0;
}

static lm_status transform(void *self, const lm_plan *p,
                           const struct lm__stage_tensor *t)
{
    struct lm__purify *pu = self;
    if (t->ndim != 2 ||
        lm__purify_cache_get(pu, t->name, p->n_models, t->numel, t->deltas))
        return LM_OK;
    bool purified = false;
    LM_TRY(lm__purify_apply(pu, p, t, &purified));
    return purified ? lm__purify_cache_put(pu, t->name, p->n_models, t->numel,
                                           t->deltas)
                    : LM_OK;
}

static lm_status reuse_begin(void *self, const lm_plan *p)
{
    (void)p;
    struct lm__purify *pu = self;
    if (pu->reuse_depth == 0)
        LM_TRY(lm__purify_cache_begin(pu));
    pu->reuse_depth++;
    return LM_OK;
}

static void reuse_end(void *self)
{
    struct lm__purify *pu = self;
    if (pu->reuse_depth > 0 && --pu->reuse_depth == 0) {
        lm__purify_cache_end(pu);
        pu->measured = false;
    }
}

const struct lm__stage_vtable lm__purify_stage = {
    .name = "purify",
    .order = 20,
    .check = check,
    .begin = begin,
    .measure = measure,
    .measured = measured,
    .transform = transform,
    .reuse_begin = reuse_begin,
    .reuse_end = reuse_end,
    .destroy = destroy,
};

static const char *invalid(const lm_purify_options *o)
{
    if (!(o->keep > 0 && o->keep <= 1))
        return "keep must be in (0, 1]";
    if (!(o->epsilon > 0) || !(o->tolerance > 0))
        return "epsilon and tolerance must be positive";
    if (!(o->polarize >= 0) || o->polarize > 10)
        return "polarize must be in [0, 10]";
    if (!(o->max_prune_factor >= 1))
        return "max_prune_factor must be >= 1";
    if ((unsigned)o->allocation > LM_PURIFY_UNIFORM)
        return "unknown allocation";
    return NULL;
}

void lm_purify_options_init(lm_purify_options *options)
{
    if (options)
        *options = (lm_purify_options)LM_PURIFY_OPTIONS_INIT;
}

lm_status lm_plan_set_purify(lm_plan *p, const lm_purify_options *o)
{
    if (!p)
        return LM_ERR_INVALID_ARGUMENT;
    if (!o)
        return lm__plan_set_stage(p, &lm__purify_stage, NULL);
    if (o->struct_size < sizeof(lm_purify_options))
        return lm_context_set_error(p->ctx, LM_ERR_ABI,
                                    "purify: options struct_size %u too "
                                    "small", o->struct_size);
    const char *bad = invalid(o);
    if (bad)
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_RANGE,
                                    "purify: %s", bad);
    /* Changing the options keeps the caches: a tuning changes only keep,
     * which the factorisations do not depend on. */
    struct lm__purify *pu = lm__purify_of(p);
    if (!pu) {
        pu = lm__calloc(p->ctx, 1, sizeof(*pu));
        if (!pu || pthread_mutex_init(&pu->lock, NULL) != 0) {
            lm_free(p->ctx, pu);
            return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                        "purify: out of memory");
        }
        pu->ctx = p->ctx;
        lm_status st = lm__plan_set_stage(p, &lm__purify_stage, pu);
        if (st != LM_OK) {
            destroy(pu);
            return st;
        }
    }
    pu->opts = *o;
    pu->opts.struct_size = sizeof(*o);
    lm__purify_layer_keeps_clear(pu);
    return LM_OK;
}
