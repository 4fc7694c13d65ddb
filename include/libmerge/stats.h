/* libmerge: activation statistics (input second moments per layer).
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LIBMERGE_STATS_H
#define LIBMERGE_STATS_H

#include "libmerge/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lm_stats lm_stats;

/* Per (model index, tensor name): the uncentred second moment X^T X
 * (d_in x d_in, accumulated in f64) of the rows X fed to the linear layer
 * whose weight is `name`, and the number of rows. Subspace methods (ESM,
 * purification, NSC) read these. */
LM_API lm_status lm_stats_create(lm_context *ctx, lm_stats **out);
LM_API void lm_stats_destroy(lm_stats *stats);

/* Add n_rows rows of width d_in (row-major f32). The first observation of
 * a key fixes its d_in; later ones must match (LM_ERR_SHAPE naming the
 * key). Non-finite inputs are refused (LM_ERR_NONFINITE). Thread-safe:
 * different keys accumulate in parallel, the same key serialises. */
LM_API lm_status lm_stats_observe(lm_stats *stats, size_t model,
                                  const char *name, const float *rows,
                                  size_t n_rows, size_t d_in);
/* K-fold collection for held-out tuning (lm_plan_tune_purify_folds):
 * row j of a key's stream, counted over every call for that key, goes to
 * folds[j mod n_folds], so the split does not depend on batch sizes.
 * n_folds >= 2 stats objects (created by the caller). Rows are checked
 * before any fold changes (LM_ERR_SHAPE, LM_ERR_NONFINITE). Calls for the
 * same key must not run concurrently (the split follows the call order);
 * different keys may. */
LM_API lm_status lm_stats_observe_folds(lm_stats *const *folds,
                                        size_t n_folds, size_t model,
                                        const char *name, const float *rows,
                                        size_t n_rows, size_t d_in);
/* Row splits for held-out tuning of purification (docs/stats.md). A stats
 * object with a split carries the companion statistics itself: the
 * held-out part, or K folds, created with it and owned by it.
 *
 * heldout_fraction f in (0, 1): of the rows of each lm_stats_observe call,
 * row i goes to the held-out part when i mod k == k - 1, with
 * k = round(1 / f) (ties to even: 0.4 gives k = 2), and the others to the
 * stats object itself. The rule is per call (the bindings' rule since 0.1),
 * so feed batches in a fixed order for a reproducible split.
 *
 * folds K >= 2: every row stays in the stats object itself and row j of a
 * key's stream, counted over every call, also goes to fold j mod K (as
 * lm_stats_observe_folds), whatever the batch sizes. Calls for the same
 * key must then not run concurrently; different keys may.
 *
 * lm_stats_add_gram adds to the stats object only (a Gram matrix cannot
 * be split by rows). */
typedef struct lm_stats_split_options {
    uint32_t struct_size;
    double heldout_fraction;     /* 0 = no held-out part, else in (0, 1) */
    size_t folds;                /* 0 = no folds, else >= 2              */
} lm_stats_split_options;

#define LM_STATS_SPLIT_OPTIONS_INIT \
    { (uint32_t)sizeof(lm_stats_split_options), 0.0, 0 }

/* Fills *options with the defaults (LM_STATS_SPLIT_OPTIONS_INIT: no split). */
LM_API void lm_stats_split_options_init(lm_stats_split_options *options);

/* Give a stats object a row split, before its first observation.
 * Errors: LM_ERR_OUT_OF_RANGE (fraction outside [0, 1), folds == 1),
 * LM_ERR_INVALID_ARGUMENT (both a fraction and folds), LM_ERR_STATE (the
 * object already has keys or a split), LM_ERR_ABI. */
LM_API lm_status lm_stats_set_split(lm_stats *stats,
                                    const lm_stats_split_options *options);

/* The held-out part (NULL without one) and the folds (count 0 without
 * them) a stats object carries; owned by it, valid until it is destroyed.
 * They are ordinary stats objects (observe, get, merge...), without a
 * split of their own. */
LM_API lm_stats *lm_stats_heldout(const lm_stats *stats);
LM_API size_t lm_stats_fold_count(const lm_stats *stats);
LM_API lm_stats *lm_stats_fold_at(const lm_stats *stats, size_t k);

/* Same from a 2-D tensor [n_rows, d_in] of any dtype. */
LM_API lm_status lm_stats_observe_tensor(lm_stats *stats, size_t model,
                                         const char *name,
                                         const lm_tensor *rows);

/* Add a precomputed second moment X^T X (d_in x d_in, row-major, f64) and
 * its row count to a key, as observing those rows would (e.g. statistics
 * reduced across processes; see libmerge/mpi.h). Errors: LM_ERR_SHAPE
 * (d_in differs from the key's), LM_ERR_NONFINITE. */
LM_API lm_status lm_stats_add_gram(lm_stats *stats, size_t model,
                                   const char *name, const double *gram,
                                   size_t d_in, uint64_t n_rows);

/* The accumulated Gram matrix (row-major, full symmetric d_in x d_in) and
 * row count of a key. The pointer is valid until the next observe/merge on
 * that key or destroy. Errors: LM_ERR_NOT_FOUND. */
LM_API lm_status lm_stats_find(const lm_stats *stats, size_t model,
                               const char *name, const double **gram,
                               size_t *d_in, uint64_t *n_rows);
LM_API size_t lm_stats_count(const lm_stats *stats);
/* Key i (in first-observation order). */
LM_API lm_status lm_stats_at(const lm_stats *stats, size_t i, size_t *model,
                             const char **name);

/* dst += src for every key (keys missing from dst are added); d_in must
 * agree for shared keys. Used to combine data-parallel collection. The
 * held-out parts and folds are merged too; both must carry the same kind
 * (LM_ERR_INVALID_ARGUMENT "split their rows differently" otherwise). */
LM_API lm_status lm_stats_merge(lm_stats *dst, const lm_stats *src);

/* Save to / load from a file (a small checksummed binary format, see
 * docs/stats.md), so calibration is done once. Saving is crash-safe
 * (temporary file, fsync, rename). A held-out part and folds go to
 * companion files PATH.heldout and PATH.fold0, PATH.fold1, ...; loading
 * attaches them when they exist (folds only when there are at least 2).
 * A loaded held-out part is not fed again (the fraction is not stored);
 * loaded folds go on splitting new rows by stream index. */
LM_API lm_status lm_stats_save(const lm_stats *stats, const char *path);
LM_API lm_status lm_stats_load(lm_context *ctx, const char *path,
                               lm_stats **out);

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_STATS_H */
