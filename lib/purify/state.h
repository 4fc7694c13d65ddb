/* Purification's state, attached to a plan as its purify stage
 * (core/stage.h), and the caches it keeps: purified task vectors across
 * executions with unchanged inputs, factorisations of W C~ across the
 * executions of a keep-ratio tuning. */
#ifndef LM_PURIFY_STATE_H
#define LM_PURIFY_STATE_H

#include <pthread.h>

#include "core/internal.h"
#include "core/stage.h"
#include "libmerge/purify.h"

/* At most this many bytes per cache and plan; beyond it work is redone. */
#define LM__PURIFY_CACHE_BYTES ((size_t)1 << 30)

struct lm__purify {
    lm_context *ctx;
    lm_purify_options opts;
    /* LM_PURIFY_MODEL: kept and full ranks summed per model by the
     * measuring pass (n_kept entries each). */
    double *kept, *full;
    size_t n_kept;
    pthread_mutex_t lock; /* kept/full and both caches */
    /* Purified task vectors (cache.c) while reuse_depth > 0; `measured`:
     * kept/full hold this reuse's allocation, no need to measure again. */
    struct lm__purify_cache *cache;
    int reuse_depth;
    bool measured;
    /* Factorisations (factor_cache.c) during a tuning; NULL otherwise. */
    struct lm__factor_cache *factors;
    /* Per-layer keep ratios (layer_keep.c) set by
     * lm_plan_tune_purify_layers: layer_names[i] keeps layer_keeps[i]
     * instead of opts.keep. Cleared by lm_plan_set_purify. */
    char **layer_names;
    double *layer_keeps;
    size_t n_layer_keeps;
};

extern const struct lm__stage_vtable lm__purify_stage;

/* The plan's purification, or NULL when it has none. */
static inline struct lm__purify *lm__purify_of(const lm_plan *p)
{
    return lm__plan_stage(p, &lm__purify_stage);
}

struct lm__factored {
    size_t k;          /* min(m, n) */
    double eps;        /* the ridge that passed the conditioning test */
    double *u, *s, *vt, *cinv; /* one block, starting at u */
    bool borrowed;     /* the block belongs to the factor cache */
};

/* The two passes over one 2-D tensor (purify.c): ranks for the whole
 * model (LM_PURIFY_MODEL), and the task vectors purified in place
 * (*purified when any task had statistics for it). */
lm_status lm__purify_measure(struct lm__purify *pu, const lm_plan *p,
                             const struct lm__stage_tensor *t);
lm_status lm__purify_apply(struct lm__purify *pu, const lm_plan *p,
                           const struct lm__stage_tensor *t, bool *purified);

/* Fold f's held-out drift at every candidate keep ratio, the plan run on
 * the other folds' statistics (heldout.c): per_fold[f * n + i]. The
 * plan's statistics are restored; its keep ratio is left to the caller. */
lm_status lm__purify_fold_curves(lm_plan *p,
                                 const struct lm_stats *const *folds,
                                 size_t n_folds, const double *candidates,
                                 size_t n, double *per_fold);

/* As lm__purify_fold_curves, per 2-D tensor of the base (the drift is a
 * sum over tensors): per_layer[(f * n + i) * n_base + j] for the base's
 * j-th tensor (0 for tensors without 2-D statistics). */
lm_status lm__purify_fold_layer_curves(lm_plan *p,
                                       const struct lm_stats *const *folds,
                                       size_t n_folds,
                                       const double *candidates, size_t n,
                                       double *per_layer);

/* The paired standard-error rule of keep="cv" (cv.c) on fold curves
 * d[f * n + i] (k folds, n candidates) whose fold sum is smallest at
 * `best`: the largest candidate whose excess over `best` is at most z
 * standard errors of the fold-paired difference; `best` when z = 0. */
size_t lm__purify_se_choice(const double *d, size_t k, size_t n,
                            const double *cands, double z, size_t best);

/* The options one tensor is purified with: pu->opts with its per-layer
 * keep ratio when one is set (layer_keep.c). */
lm_purify_options lm__purify_options_for(const struct lm__purify *pu,
                                         const char *name);
/* Drops the per-layer keep ratios; _set replaces them by copies. */
void lm__purify_layer_keeps_clear(struct lm__purify *pu);
lm_status lm__purify_layer_keeps_set(struct lm__purify *pu,
                                     const char *const *names,
                                     const double *keeps, size_t n);

/* Purified task vectors (cache.c): begin/end bracket their life; get
 * copies a cached tensor's task vectors into deltas and returns true on a
 * hit; put stores a copy when it fits the budget (out of memory is an
 * error). Both do nothing without a cache. */
lm_status lm__purify_cache_begin(struct lm__purify *pu);
void lm__purify_cache_end(struct lm__purify *pu);
bool lm__purify_cache_get(struct lm__purify *pu, const char *name,
                          size_t n_models, size_t numel, float *const *deltas);
lm_status lm__purify_cache_put(struct lm__purify *pu, const char *name,
                               size_t n_models, size_t numel,
                               float *const *deltas);

/* Factorisations (factor_cache.c): begin sets *owned when it created the
 * cache (the caller then ends it). get fills *f with a borrowed copy of the
 * cached factors of (name, task) and returns true on a hit; they stay
 * valid until the cache ends. put hands f's block to the cache when it
 * fits (f becomes borrowed) and otherwise leaves f as it was; out of
 * memory is an error (f unchanged). */
lm_status lm__factor_cache_begin(struct lm__purify *pu, bool *owned);
void lm__factor_cache_end(struct lm__purify *pu);
bool lm__factor_cache_get(struct lm__purify *pu, const char *name,
                          size_t task, struct lm__factored *f);
lm_status lm__factor_cache_put(struct lm__purify *pu, const char *name,
                               size_t task, struct lm__factored *f,
                               size_t bytes);

#endif
