/* Internal dense linear algebra over LAPACKE/CBLAS. Row-major, f64 unless
 * named otherwise. Every function reports failures on ctx with a status
 * (LM_ERR_NONFINITE for NaN/Inf input, LM_ERR_LINALG when LAPACK does not
 * converge, naming the routine and its info).
 *
 * Determinism: results depend only on the inputs (and the seed for the
 * randomized SVD) as long as BLAS runs single-threaded inside libmerge's
 * workers; lmerge sets this, and docs/api.md tells embedders to set
 * OPENBLAS_NUM_THREADS=1 (libmerge never changes the host's global BLAS
 * settings itself). */
#ifndef LM_LINALG_H
#define LM_LINALG_H

#include "core/internal.h"

/* Thin SVD of A (m x n): U (m x k), S (k, descending), Vt (k x n) with
 * k = min(m, n). Uses dgesdd and falls back to dgesvd if it fails. Signs
 * are canonical (lm__svd_canonical_signs). A is not modified. */
lm_status lm__svd(lm_context *ctx, const double *a, size_t m, size_t n,
                  double *u, double *s, double *vt);
/* For tests: make the next lm__svd on this thread skip dgesdd. */
void lm__svd_force_fallback_once(void);

/* Flip each singular pair so the largest-magnitude entry of u_i is
 * positive (ties: the first such entry): SVD results become unique for
 * distinct singular values, so merges are sign-flip invariant. */
void lm__svd_canonical_signs(double *u, size_t m, size_t k, double *vt,
                             size_t n);

/* Top-k SVD by a randomized range finder (k + oversample Gaussian probes
 * from `seed`, `power` power iterations with QR re-orthonormalisation,
 * then a small exact SVD). Same outputs as lm__svd truncated to k. */
lm_status lm__svd_randomized(lm_context *ctx, const double *a, size_t m,
                             size_t n, size_t k, size_t oversample,
                             size_t power, uint64_t seed, double *u,
                             double *s, double *vt);

/* Symmetric eigendecomposition (dsyevd) of A (n x n, full storage):
 * eigenvalues descending in w, eigenvectors as the columns of v (n x n). */
lm_status lm__eigh(lm_context *ctx, const double *a, size_t n, double *w,
                   double *v);

/* Cholesky factor of A + ridge*I into l (lower, full n x n), then solve
 * L L^T X = B for nrhs right-hand sides (b, n x nrhs, overwritten). */
lm_status lm__cholesky(lm_context *ctx, const double *a, size_t n,
                       double ridge, double *l);
lm_status lm__cholesky_solve(lm_context *ctx, const double *l, size_t n,
                             double *b, size_t nrhs);

/* Thin QR: Q (m x k, k = min(m, n)) with orthonormal columns. */
lm_status lm__qr_q(lm_context *ctx, const double *a, size_t m, size_t n,
                   double *q);

/* Polar factor U V^T of A (m x n) into p (m x n): through the
 * eigendecomposition of the smaller Gram matrix when A is well conditioned
 * (cond(A) < 1e5), else from A's thin SVD (which also covers rank-deficient
 * A, whose polar factor is not unique). */
lm_status lm__polar(lm_context *ctx, const double *a, size_t m, size_t n,
                    double *p);

/* Polar factor of A (m x n) and the mean of A's singular values. */
lm_status lm__polar_scaled(lm_context *ctx, const double *a, size_t m,
                           size_t n, double *p, double *mean_sv);

/* The polar factors of A (ma x na) and B (mb x nb) at once, one per idle
 * thread (lm__parallel_for); mean_a / mean_b receive the mean singular
 * values when non-NULL. */
lm_status lm__polar_pair(lm_context *ctx, const double *a, size_t ma,
                         size_t na, double *pa, double *mean_a,
                         const double *b, size_t mb, size_t nb, double *pb,
                         double *mean_b);

/* Whether a dimension or workspace size fits LAPACK's integer
 * (lapack_int: 32-bit in the usual builds). The SVD and eigensolver
 * wrappers check their workspace formulas before calling LAPACK and fail
 * with LM_ERR_UNSUPPORTED; callers may check first to name a tensor. */
bool lm__lapack_fits(double count);

/* Standard normal number i of the stream `seed` (counter-based: the same
 * (seed, i) gives the same number on any thread). */
double lm__gaussian(uint64_t seed, uint64_t i);

/* C = alpha * op(A) op(B) + beta * C (row-major, BLAS dgemm). */
void lm__gemm(bool ta, bool tb, size_t m, size_t n, size_t k, double alpha,
              const double *a, const double *b, double beta, double *c);

/* Widen / narrow between f32 and f64 arrays. */
void lm__f32_to_f64(const float *src, double *dst, size_t n);
void lm__f64_to_f32(const double *src, float *dst, size_t n);

#endif
