/* libmerge: tuning purification's keep ratio (experimental tier).
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 *
 * Experimental tier (LM_EXPERIMENTAL, docs/api.md): outside the ABI
 * promise until the tuning protocol settles; these declarations may change
 * in any release without a SONAME bump. Purification itself
 * (lm_plan_set_purify, libmerge/purify.h) is stable.
 */
#ifndef LIBMERGE_EXPERIMENTAL_PURIFY_TUNE_H
#define LIBMERGE_EXPERIMENTAL_PURIFY_TUNE_H

#include "libmerge/purify.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Label-free held-out objective of a merged model: the drift of each
 * merged layer's output from each fine-tuned model's on held-out rows,
 * sum_t sum_layers ||(W_merged - W_t) X_t||^2 = tr(D H_t D^T), from the
 * held-out second moments H_t in `heldout` (layers without them are
 * skipped). Full models only (adapters are skipped). */
LM_EXPERIMENTAL lm_status lm_plan_heldout_drift(lm_plan *plan, const lm_model *merged,
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
LM_EXPERIMENTAL lm_status lm_plan_tune_purify(lm_plan *plan,
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
LM_EXPERIMENTAL lm_status lm_plan_tune_purify_folds(lm_plan *plan,
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
LM_EXPERIMENTAL lm_status lm_plan_tune_purify_score(lm_plan *plan,
                                           const double *candidates,
                                           size_t n, lm_score_fn score,
                                           void *user, double *best_keep,
                                           double *scores);

/* The keep ratios tried when a tuning is given none: 1, .995, .99, .98,
 * .97, .95, .9, .85, .8, .7, .6, .5. Returns their count; *out points to
 * static storage. */
LM_EXPERIMENTAL size_t lm_purify_default_candidates(const double **out);

/* Which objective lm_plan_tune_purify_cv used. */
typedef enum lm_purify_objective {
    LM_PURIFY_HELDOUT_DRIFT = 0, /* drift on one held-out split           */
    LM_PURIFY_FOLDS_DRIFT = 1,   /* drift summed over K folds             */
    LM_PURIFY_HOST_SCORE = 2     /* the host's score, maximised           */
} lm_purify_objective;

/* What lm_plan_tune_purify_cv tunes on. The objective is chosen in this
 * order: `score` when set; else `heldout` when set; else `folds` when set;
 * else the folds the plan's statistics carry (lm_stats_set_split, at
 * least 2); else their held-out part. Without any of them the call fails
 * (LM_ERR_INVALID_ARGUMENT). */
typedef struct lm_purify_cv_options {
    uint32_t struct_size;
    const double *candidates;    /* keep ratios in (0, 1]; NULL: the
                                    defaults (lm_purify_default_candidates) */
    size_t n_candidates;
    const struct lm_stats *heldout;              /* one held-out split    */
    const struct lm_stats *const *folds;         /* or K >= 2 folds       */
    size_t n_folds;
    lm_score_fn score;           /* or a host score to maximise          */
    void *score_user;
    const char *scale;           /* a float parameter of the plan tuned
                                    jointly (e.g. "lambda"), or NULL      */
    const double *scales;        /* its n_scales values, tried in order  */
    size_t n_scales;
    /* With K folds: the keep ratio chosen is the largest candidate whose
     * drift exceeds the minimum's by at most `se_rule` standard errors of
     * their fold-paired difference (a paired one-standard-error rule), so
     * keep 1.0 stays unless pruning's held-out gain is beyond the noise
     * between folds. 0: the plain minimum (0.1's choice). Ignored by the
     * other objectives, which have no replicates. Default 1. */
    double se_rule;
} lm_purify_cv_options;

#define LM_PURIFY_CV_OPTIONS_INIT                                           \
    { (uint32_t)sizeof(lm_purify_cv_options), NULL, 0, NULL, NULL, 0, NULL, \
      NULL, NULL, NULL, 0, 1.0 }

/* Fills *options with the defaults (LM_PURIFY_CV_OPTIONS_INIT). */
LM_EXPERIMENTAL void lm_purify_cv_options_init(lm_purify_cv_options *options);

/* The choice lm_plan_tune_purify_cv made. */
typedef struct lm_purify_cv_result {
    uint32_t struct_size;        /* set by the caller                     */
    double keep;                 /* the chosen keep ratio                 */
    double scale;                /* the chosen scale; NaN without one     */
    lm_purify_objective objective;
    size_t n_folds;              /* K for LM_PURIFY_FOLDS_DRIFT, else 0   */
    /* Folds only (else NaN): the chosen keep ratio's drift reduction
     * against keep 1.0, summed over folds, and its standard error from
     * the fold-paired differences (NaN when 1.0 is not a candidate). */
    double gain, gain_se;
} lm_purify_cv_result;

#define LM_PURIFY_CV_RESULT_INIT                                            \
    { (uint32_t)sizeof(lm_purify_cv_result), 0.0, 0.0,                     \
      LM_PURIFY_HELDOUT_DRIFT, 0, 0.0, 0.0 }

/* Tune the keep ratio, and optionally a scale parameter with it, the way
 * the Python bindings' purify={"keep": "cv"} does: for each scale value
 * in order (or once without a scale), the parameter is set and the keep
 * ratio tuned over the candidates with the chosen objective
 * (lm_plan_tune_purify, _folds — with `se_rule` — or _score); the pair
 * wins whose objective
 * (drift, or minus the score) at its keep ratio is strictly smallest,
 * the first on ties. The plan keeps the winning keep ratio and scale.
 * Purification must be enabled (lm_plan_set_purify; its keep is
 * replaced). `curve` (may be NULL) receives n_scales x n_candidates
 * objectives (one row per scale, 1 row without a scale; drifts, or the
 * scores as returned). Errors: those of the tuners, LM_ERR_STATE,
 * LM_ERR_INVALID_ARGUMENT (no objective, fewer than 2 folds, a scale
 * without values), LM_ERR_ABI. */
LM_EXPERIMENTAL lm_status lm_plan_tune_purify_cv(lm_plan *plan,
                                        const lm_purify_cv_options *options,
                                        double *curve,
                                        lm_purify_cv_result *out);

/* Per-layer keep ratios (docs/methods/purify.md, "Per-layer keep"): the
 * fold curves of lm_plan_tune_purify_cv, split per 2-D tensor (the drift
 * is a sum over tensors), and the same `se_rule` applied to each tensor's
 * curve, so each layer keeps its own ratio among the candidates. Needs
 * K >= 2 folds (explicit `folds`, or the plan statistics' split; `score`,
 * `heldout` and `scale` are refused). A per-model allocation is switched
 * to LM_PURIFY_LAYER (a layer's ranks would otherwise depend on the other
 * layers' ratios). The plan keeps the per-layer ratios until the next
 * lm_plan_set_purify. `out` (may be NULL): keep NaN, objective
 * LM_PURIFY_FOLDS_DRIFT, and the gain of the per-layer choice over keep
 * 1.0 everywhere with its fold-paired standard error. */
LM_EXPERIMENTAL lm_status lm_plan_tune_purify_layers(lm_plan *plan,
                                        const lm_purify_cv_options *options,
                                        lm_purify_cv_result *out);

/* The keep ratio lm_plan_tune_purify_layers chose for tensor `name`:
 * LM_OK, LM_ERR_NOT_FOUND (no per-layer ratio for it), LM_ERR_STATE (no
 * purification). */
LM_EXPERIMENTAL lm_status lm_plan_purify_layer_keep(const lm_plan *plan,
                                                    const char *name,
                                                    double *keep);

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_EXPERIMENTAL_PURIFY_TUNE_H */
