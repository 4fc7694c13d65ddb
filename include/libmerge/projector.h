/* libmerge: orthonormal bases of subspaces and projections onto them.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LIBMERGE_PROJECTOR_H
#define LIBMERGE_PROJECTOR_H

#include "libmerge/plan.h"
#include "libmerge/stats.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lm_projector lm_projector;

typedef enum lm_basis {
    LM_BASIS_LEFT = 0,  /* left singular vectors of A (dim = rows of A)    */
    LM_BASIS_RIGHT = 1, /* right singular vectors of A (dim = columns)     */
    LM_BASIS_EIGEN = 2  /* eigenvectors of a symmetric A (dim = its size)  */
} lm_basis;

/* A basis of the top directions of a 2-D tensor A. `rank` > 0 keeps that
 * many directions; rank 0 with 0 < energy <= 1 keeps the fewest capturing
 * that fraction of the energy (sum of squared singular values, or of the
 * eigenvalues for LM_BASIS_EIGEN, whose negative eigenvalues count as
 * zero); rank 0 and energy 0 keep all. Computed in f64 with LAPACK;
 * canonical signs. Errors: LM_ERR_SHAPE (not 2-D, or not square for
 * EIGEN), LM_ERR_OUT_OF_RANGE (rank > dimension, energy outside [0, 1]),
 * LM_ERR_NONFINITE, LM_ERR_LINALG. */
LM_API lm_status lm_projector_from_tensor(lm_context *ctx, const lm_tensor *a,
                                          lm_basis basis, size_t rank,
                                          double energy, lm_projector **out);
/* PCA of a layer's inputs: eigenvectors of X^T X / n from stats (uncentred
 * second moment), same rank/energy rules. */
LM_API lm_status lm_projector_from_stats(lm_context *ctx, const lm_stats *stats,
                                         size_t model, const char *name,
                                         size_t rank, double energy,
                                         lm_projector **out);
LM_API void lm_projector_destroy(lm_projector *p);

LM_API size_t lm_projector_dim(const lm_projector *p);
LM_API size_t lm_projector_rank(const lm_projector *p);
/* Fraction of the energy the kept directions capture (1 for full rank). */
LM_API double lm_projector_energy(const lm_projector *p);
/* The basis, dim x rank row-major (columns orthonormal), and the kept
 * singular values / eigenvalues (rank, descending). */
LM_API const double *lm_projector_basis(const lm_projector *p);
LM_API const double *lm_projector_values(const lm_projector *p);

/* For each of n vectors x (rows of length dim): out = P P^T x (project) or
 * x - P P^T x (complement). in and out may be the same buffer. */
LM_API lm_status lm_projector_project(const lm_projector *p, const float *in,
                                      size_t n, float *out);
LM_API lm_status lm_projector_complement(const lm_projector *p,
                                         const float *in, size_t n,
                                         float *out);

/* Projecting task vectors inside a plan (a plan stage, run on every
 * matching tensor after the task vectors are loaded and before the
 * strategy merges them, and before purification if both are set). Each
 * 2-D task vector dW [rows, cols] is projected along `side`:
 * LM_PROJECT_ROWS treats every row as a vector of the input space (the
 * projector's dimension must be cols: e.g. a PCA of the layer's inputs,
 * lm_projector_from_stats), LM_PROJECT_COLUMNS every column as a vector of
 * the output space (dimension rows). LM_PROJECTION_KEEP keeps P P^T x,
 * LM_PROJECTION_REMOVE keeps x - P P^T x.
 * `pattern` is a POSIX extended regular expression searched in the tensor
 * name (anchor it with ^...$ to match whole names); `model` is the index
 * of the model or adapter it applies to, or LM_ALL_MODELS. Every rule whose
 * pattern and model match is applied, in the order added. The plan
 * borrows the projector: it must outlive the plan's executions.
 * Errors: LM_ERR_INVALID_ARGUMENT (bad enum, NULL), LM_ERR_FORMAT (the
 * pattern does not compile); at execution, LM_ERR_SHAPE naming the tensor
 * when a matching tensor is not 2-D or its dimension differs from the
 * projector's. */
typedef enum lm_projection_side {
    LM_PROJECT_ROWS = 0,
    LM_PROJECT_COLUMNS = 1
} lm_projection_side;
typedef enum lm_projection_mode {
    LM_PROJECTION_KEEP = 0,
    LM_PROJECTION_REMOVE = 1
} lm_projection_mode;
LM_API lm_status lm_plan_add_projection(lm_plan *plan, const char *pattern,
                                        size_t model,
                                        const lm_projector *projector,
                                        lm_projection_side side,
                                        lm_projection_mode mode);
/* Removes every projection rule of the plan. */
LM_API lm_status lm_plan_clear_projections(lm_plan *plan);

/* User subspaces: a projector that replaces the subspace a method would
 * build from activation statistics, for the tensors whose name matches
 * `pattern` (POSIX extended regular expression, searched; anchor with
 * ^...$) and the task `model` (its index in the plan, or LM_ALL_MODELS).
 * Both users are per task and on the OUTPUT side: for a 2-D task vector
 * dW [d_out, d_in] the projector's dimension must be d_out (rows of the
 * tensor as merged, i.e. after lm_plan_set_transposed); otherwise the
 * execution fails with LM_ERR_SHAPE naming the tensor and the task.
 *
 * LM_SUBSPACE_ESM: task t's essential subspace in the `esm` strategy
 *   (normally the top eigenvectors of dW C dW^T, the PCA of the task's
 *   output shift). Every direction of the projector is used (the `rank`
 *   parameter does not apply), weighted by its strength w_j (below) where
 *   ESM uses the eigenvalues; ||A_t|| in the inter-task weight is
 *   ||dW_t||_F (as with pad=complete). A tensor whose every task has a
 *   user subspace or statistics is merged in the essential subspace by
 *   the generic routing; esd_pattern, tsv_pattern, mean_pattern and the
 *   clip-vit preset still decide routing when set.
 * LM_SUBSPACE_PURIFY: task t's kept subspace in purification (normally
 *   the top left singular vectors of W_t C~). The fine-tuned weight
 *   W_t = W_0 + dW_t becomes P D P^T W_t, with D = diag((s_j / mean s)^
 *   polarize) (identity when polarize is 0), s_j = sqrt(w_j); keep,
 *   allocation and max_prune_factor do not apply to it, and it takes no
 *   part in the layer's or model's rank allocation.
 *
 * A direction's strength w_j is its squared singular value for a
 * projector built from LM_BASIS_LEFT / LM_BASIS_RIGHT, its eigenvalue
 * (negative ones count as zero) for LM_BASIS_EIGEN and
 * lm_projector_from_stats. So lm_projector_from_tensor(G, LM_BASIS_EIGEN,
 * k) with G = dW X^T X dW^T, or (X dW^T, LM_BASIS_RIGHT, k), is ESM's own
 * subspace, and (W_t C~, LM_BASIS_LEFT, r) is purification's.
 *
 * Tensors and tasks without a matching rule keep the method's own
 * subspace from statistics (or its no-statistics routing); rules do not
 * apply to tensors that are not 2-D. The first rule added whose user,
 * pattern and model match is the one used. Setting a rule with the same
 * (user, pattern, model) as an existing one replaces its projector in
 * place; projector NULL removes it. The plan borrows the projector: it
 * must outlive the plan's executions.
 * Errors: LM_ERR_INVALID_ARGUMENT (bad enum, NULL), LM_ERR_FORMAT (the
 * pattern does not compile), LM_ERR_NOT_FOUND (removing a rule that does
 * not exist); at execution, LM_ERR_OUT_OF_RANGE for a model index the
 * plan does not have, LM_ERR_INVALID_ARGUMENT when a rule's user does not
 * run (LM_SUBSPACE_ESM with another strategy, LM_SUBSPACE_PURIFY without
 * lm_plan_set_purify): a rule is never silently unused. */
typedef enum lm_subspace_user {
    LM_SUBSPACE_ESM = 0,
    LM_SUBSPACE_PURIFY = 1
} lm_subspace_user;
LM_API lm_status lm_plan_set_subspace(lm_plan *plan, lm_subspace_user user,
                                      const char *pattern, size_t model,
                                      const lm_projector *projector);
/* The rules in the order added: their number, the i-th one's fields (the
 * pattern string lives until the rule is removed; LM_ERR_OUT_OF_RANGE past
 * the end), and the projector used for (user, tensor name, model)
 * (LM_ERR_NOT_FOUND when no rule matches). */
LM_API size_t lm_plan_subspace_count(const lm_plan *plan);
LM_API lm_status lm_plan_subspace_at(const lm_plan *plan, size_t i,
                                     lm_subspace_user *user,
                                     const char **pattern, size_t *model,
                                     const lm_projector **projector);
LM_API lm_status lm_plan_subspace_find(const lm_plan *plan,
                                       lm_subspace_user user,
                                       const char *tensor, size_t model,
                                       const lm_projector **out);

/* Thread-safety: a projector is immutable after creation; concurrent use
 * is safe. */

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_PROJECTOR_H */
