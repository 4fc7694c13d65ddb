/* libmerge: orthonormal bases of subspaces and projections onto them.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LIBMERGE_PROJECTOR_H
#define LIBMERGE_PROJECTOR_H

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

/* Thread-safety: a projector is immutable after creation; concurrent use
 * is safe. */

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_PROJECTOR_H */
