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
LM_API lm_status lm_stats_get(const lm_stats *stats, size_t model,
                              const char *name, const double **gram,
                              size_t *d_in, uint64_t *n_rows);
LM_API size_t lm_stats_count(const lm_stats *stats);
/* Key i (in first-observation order). */
LM_API lm_status lm_stats_key(const lm_stats *stats, size_t i, size_t *model,
                              const char **name);

/* dst += src for every key (keys missing from dst are added); d_in must
 * agree for shared keys. Used to combine data-parallel collection. */
LM_API lm_status lm_stats_merge(lm_stats *dst, const lm_stats *src);

/* Save to / load from a file (a small checksummed binary format, see
 * docs/stats.md), so calibration is done once. Saving is crash-safe
 * (temporary file, fsync, rename). */
LM_API lm_status lm_stats_save(const lm_stats *stats, const char *path);
LM_API lm_status lm_stats_load(lm_context *ctx, const char *path,
                               lm_stats **out);

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_STATS_H */
