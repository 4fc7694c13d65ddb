/* libmerge: subspace purification of task vectors before merging.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LIBMERGE_PURIFY_H
#define LIBMERGE_PURIFY_H

#include "libmerge/plan.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lm_purify_allocation {
    LM_PURIFY_MODEL = 0,   /* released PAVE: spectral allocation per layer,
                              collapsed to one keep ratio per model        */
    LM_PURIFY_LAYER = 1,   /* the spectral per-(model, layer) ranks        */
    LM_PURIFY_UNIFORM = 2  /* round(keep * rank) in every layer            */
} lm_purify_allocation;

/* PAVE-style purification (docs/methods/purify.md). For each model t and
 * each 2-D tensor with statistics (the plan's lm_stats, key (t, name)):
 * C~ = X^T X / n + eps I with eps doubled from `epsilon` until
 * ||C~^-1 C~ - I||_F < `tolerance`; W_t C~ = U S V^T; keep r components;
 * W'_t = U_r S_r V_r^T C~^-1; the merge then uses tau'_t = W'_t - W_0.
 * Tensors without statistics pass through unchanged. */
typedef struct lm_purify_options {
    uint32_t struct_size;
    double keep;                 /* global keep ratio rho in (0, 1]       */
    lm_purify_allocation allocation;
    double epsilon;              /* first ridge (released: 0.1)           */
    double tolerance;            /* conditioning test (released: 5e-2)    */
    double polarize;             /* gamma: kept S_i *= (S_i / mean)^gamma */
    double max_prune_factor;     /* no model pruned more than this times
                                    the average (released: 1.5)           */
} lm_purify_options;

#define LM_PURIFY_OPTIONS_INIT                                              \
    { (uint32_t)sizeof(lm_purify_options), 0.97, LM_PURIFY_MODEL, 0.1,     \
      5e-2, 0.0, 1.5 }

/* Fills *options with the defaults (LM_PURIFY_OPTIONS_INIT). */
LM_API void lm_purify_options_init(lm_purify_options *options);

/* Enable (options non-NULL) or disable purification for a plan; it then
 * composes with any strategy. Needs lm_plan_set_stats before execution.
 * Errors: LM_ERR_OUT_OF_RANGE (keep outside (0, 1], epsilon or tolerance
 * <= 0, polarize outside [0, 10], max_prune_factor < 1), LM_ERR_ABI. */
LM_API lm_status lm_plan_set_purify(lm_plan *plan,
                                    const lm_purify_options *options);

/* Tuning the keep ratio (held-out drift, K folds, a host score, the
 * `keep="cv"` policy) is experimental: libmerge/experimental/purify_tune.h. */

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_PURIFY_H */
