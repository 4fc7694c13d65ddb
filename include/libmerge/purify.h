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

/* Enable (options non-NULL) or disable purification for a plan; it then
 * composes with any strategy. Needs lm_plan_set_stats before execution.
 * Errors: LM_ERR_OUT_OF_RANGE (keep outside (0, 1], epsilon or tolerance
 * <= 0, polarize outside [0, 10], max_prune_factor < 1), LM_ERR_ABI. */
LM_API lm_status lm_plan_set_purify(lm_plan *plan,
                                    const lm_purify_options *options);

/* Label-free held-out objective of a merged model: the drift of each
 * merged layer's output from each fine-tuned model's on held-out rows,
 * sum_t sum_layers ||(W_merged - W_t) X_t||^2 = tr(D H_t D^T), from the
 * held-out second moments H_t in `heldout` (layers without them are
 * skipped). Full models only (adapters are skipped). */
LM_API lm_status lm_plan_heldout_drift(lm_plan *plan, const lm_model *merged,
                                       const struct lm_stats *heldout,
                                       double *out);

/* Choose the keep ratio among `candidates` (n values in (0, 1]) that
 * minimises the held-out drift: the plan (with purification enabled) is
 * executed in memory for each candidate, statistics from the plan's stats
 * (the training rows), drift from `heldout`. The plan keeps the best
 * ratio. `objectives` (n values) receives the curve; may be NULL. Every
 * layer is factored once for all candidates (only keep changes between the
 * executions; up to 1 GiB per plan), with results bit-identical to
 * separate executions. */
LM_API lm_status lm_plan_tune_purify(lm_plan *plan,
                                     const struct lm_stats *heldout,
                                     const double *candidates, size_t n,
                                     double *best_keep, double *objectives);

/* K-fold version of lm_plan_tune_purify: folds[f] holds fold f's rows
 * (tagged by the host, or split by lm_stats_observe_folds). For every fold
 * the plan runs with the other folds' statistics (their sum: subspaces,
 * and ESM's statistics, from training rows only) and is scored by the
 * drift on fold f; a candidate's objective is the sum over folds, so every
 * row is held out once. The plan's own statistics (lm_plan_set_stats,
 * normally the sum of all folds) are restored afterwards for the final
 * merge, with the best ratio kept. n_folds >= 2; `objectives` as above. */
LM_API lm_status lm_plan_tune_purify_folds(lm_plan *plan,
                                           const struct lm_stats *const *folds,
                                           size_t n_folds,
                                           const double *candidates,
                                           size_t n, double *best_keep,
                                           double *objectives);

/* The same choice by a host score to maximise (e.g. validation accuracy,
 * when the host has labels): `score` is called with the keep ratio and
 * the merged model of each candidate; `scores` (n values, may be NULL)
 * receives the curve. A non-zero return from `score` stops the search
 * (LM_ERR_CALLBACK); it must not change the plan. */
LM_API lm_status lm_plan_tune_purify_score(lm_plan *plan,
                                           const double *candidates,
                                           size_t n, lm_score_fn score,
                                           void *user, double *best_keep,
                                           double *scores);

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_PURIFY_H */
