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
 * eigendecomposition of the smaller Gram matrix when its estimated error
 * (lm__polar_estimate) is within LM_SVD_TOL, else from A's thin SVD
 * (which also covers rank-deficient A, whose polar factor is not
 * unique). */
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

/* lm__gemm in fixed blocks of C's rows on the context's idle threads
 * (blocked.c): the same bytes for any thread count. Fails only when out
 * of memory for the loop. */
lm_status lm__gemm_blocked(lm_context *ctx, bool ta, bool tb, size_t m,
                           size_t n, size_t k, double alpha, const double *a,
                           const double *b, double beta, double *c);

/* c (f32, m x n) = (float)(scale * (op(A) op(B))), the product formed in
 * f64 in lm__gemm_blocked's row blocks (each element's bits as
 * lm__gemm_blocked with alpha 1, then times scale) through one block-sized
 * buffer per item. Fails only when out of memory. */
lm_status lm__gemm_blocked_f32(lm_context *ctx, bool ta, bool tb, size_t m,
                               size_t n, size_t k, const double *a,
                               const double *b, double scale, float *c);

/* The upper triangle (row-major) of A's smaller Gram matrix G (d x d, d =
 * min(m, n): A A^T when m <= n, else A^T A), in fixed row blocks on the
 * context's idle threads: the same bytes for any thread count. Entries
 * below the diagonal are unspecified. */
lm_status lm__gram_upper_f64(lm_context *ctx, const double *a, size_t m,
                             size_t n, double *g);
lm_status lm__gram_upper_f32(lm_context *ctx, const float *a, size_t m,
                             size_t n, float *g);

/* Below this order a symmetric eigendecomposition is one syevd call. */
#define LM_EIGH_SPLIT_MIN 256

/* syevd('V', 'L') of a (n x n, column-major lower triangle; float when
 * `single`, else double), vectors into a, eigenvalues ascending into w,
 * with the back-transformation in fixed column blocks on the context's
 * idle threads (eigh_split.c): the same bytes for any thread count.
 * *used false (nothing done) when n < LM_EIGH_SPLIT_MIN or a's entries
 * are near under- or overflow, where syevd rescales: call syevd. *info as
 * syevd's. */
lm_status lm__eigh_split(lm_context *ctx, bool single, void *a, size_t n,
                         void *w, int *info, bool *used);

/* Widen / narrow between f32 and f64 arrays. */
void lm__f32_to_f64(const float *src, double *dst, size_t n);
void lm__f64_to_f32(const double *src, float *dst, size_t n);

/* --- Precision per tensor (svd_top.c; docs/methods/svd_family.md) --- */

/* Multiplier of the unit roundoff in the Gram route's error model: G's
 * eigenpairs are taken as exact for G + E, ||E|| <= factor * u * ||G||
 * (formation by syrk plus the eigensolver's backward error). Measured
 * errors stayed below 2.6x the estimate with this factor
 * (tests/python/test_svd_precision.py). */
#define LM_GRAM_ERROR_FACTOR 4.0
/* Default accepted estimate of the relative error of one factorization:
 * 10x under the 1e-4 the SVD family promises against an f64 reference. */
#define LM_SVD_TOL 1e-5

typedef enum lm_svd_route {
    LM_SVD_GRAM_F32 = 0, /* ssyrk + ssyevd */
    LM_SVD_GRAM_F64 = 1, /* dsyrk + dsyevd */
    LM_SVD_EXACT = 2,    /* dgesdd (dgesvd if it fails) */
    LM_SVD_RANDOMIZED = 3,
    LM_SVD_ROUTES = 4
} lm_svd_route;

/* Eigendecomposition of A's smaller Gram matrix (A A^T when m <= n, else
 * A^T A; d = min(m, n)), formed and decomposed in f32 when `single`:
 * w (d) descending, q (d x d) with the eigenvectors as columns (q NULL:
 * eigenvalues only, about a quarter of the cost). */
lm_status lm__gram_eig(lm_context *ctx, const double *a, size_t m, size_t n,
                       bool single, double *w, double *q);

/* LM_GRAM_ERROR_FACTOR times the unit roundoff of f32 or f64. */
double lm__gram_unit(bool single);

/* A lower bound on cond(G) for A's smaller Gram matrix G (as lm__gram_eig
 * forms it), from the spread of G's f32 Cholesky pivots: about a tenth of
 * an eigendecomposition's cost. INFINITY when the factorization breaks
 * down (G singular to f32) or the sizes do not fit. Deterministic. *rms
 * (optional) receives a lower bound on lm__polar_estimate's
 * sqrt(mean_i (lambda_1 / lambda_i)^2) from the same pivots. */
lm_status lm__gram_cond_lower_bound(lm_context *ctx, const double *a,
                                    size_t m, size_t n, double *bound,
                                    double *rms);

/* lm__gram_cond_lower_bound in steps, so that the f32 Gram matrix serves
 * the bound and then the f32 eigendecomposition: whether the sizes allow
 * it (else no bound), G's upper triangle in f32 from A rounded to f32
 * (g: d x d, the same bytes lm__gram_eig(single) forms), the bound from
 * a formed G (left unchanged), and G's eigenpairs as lm__gram_eig(single)
 * gives them (g overwritten). */
bool lm__gram_f32_fits(size_t m, size_t n);
lm_status lm__gram_f32(lm_context *ctx, const double *a, size_t m, size_t n,
                       float *g);
lm_status lm__gram_cond_bound_f32(lm_context *ctx, const float *g, size_t d,
                                  double *bound, double *rms);
lm_status lm__gram_eig_formed_f32(lm_context *ctx, float *g, size_t d,
                                  double *w, double *q);

/* First-order estimate of the relative Frobenius error of a polar factor
 * taken through G's eigenpairs w (k, descending) in that precision:
 * G's computed eigenpairs are exact for G + E, ||E|| <= e =
 * lm__gram_unit * w_1, and P = A G^-1/2 moves by at most
 * ||E|| sqrt(sum_i 1 / w_i^2) in the Frobenius norm, ||P||_F = sqrt(k);
 * the eigenvectors' own departure from orthogonality adds about one unit
 * in every direction:
 *     est = lm__gram_unit * (1 + sqrt(mean_i (w_1 / w_i)^2))
 * (docs/methods/svd_family.md, "Precision per tensor"). INFINITY when
 * w_k is within 8 e of zero, where first order does not hold (or the
 * polar factor is not unique). */
double lm__polar_estimate(const double *w, size_t k, bool single);

/* First-order estimate of the relative error of the top-k triplets taken
 * from G's eigenpairs w (d, descending) in that precision, with
 * e = lm__gram_unit * w_1:
 *     e / w_k                                       (sigma_k, V from A^T U)
 *   + e / (w_k - w_k+1) * sqrt(w_k / sum_{i<=k} w_i) (rotation across the
 *                                                     cut, k < d only)
 * Rotations inside the kept set do not count: they move u_i sigma_i v_i^T
 * only by (sigma_i - sigma_j) times the angle, which stays bounded. */
double lm__gram_svd_estimate(const double *w, size_t d, size_t k,
                             bool single);

/* Top-k SVD of A (m x n): U (m x k), S (k), Vt (k x n), canonical signs,
 * by the first of: Gram route in f32, Gram route in f64, whose estimate is
 * <= tol; else the exact lm__svd truncated (tol <= 0: always exact).
 * `left` (optional, m x m, only filled when m <= n): all m left singular
 * vectors, the first k as in U. *route tells which ran. */
lm_status lm__svd_top(lm_context *ctx, const double *a, size_t m, size_t n,
                      size_t k, double tol, double *u, double *s, double *vt,
                      double *left, lm_svd_route *route);

/* lm__polar_scaled (mean_sv optional), telling which route ran: the Gram
 * route in f32 or f64 when lm__polar_estimate is within LM_SVD_TOL,
 * else exact (A's SVD). */
lm_status lm__polar_routed(lm_context *ctx, const double *a, size_t m,
                           size_t n, double *p, double *mean_sv,
                           lm_svd_route *route);

/* lm__polar_routed's factor P times scale and A's mean singular value,
 * rounded to f32 into out (m x n): each element (float)(P_ij * (scale *
 * mean)), the same bits as scaling lm__polar_routed's f64 P, but P is
 * formed in row blocks and never held whole in f64 (lm__gemm_blocked_f32).
 * mean_sv optional. */
lm_status lm__polar_scaled_f32(lm_context *ctx, const double *a, size_t m,
                               size_t n, double scale, float *out,
                               double *mean_sv, lm_svd_route *route);

/* Randomized top-k SVD with an a-posteriori check (svd_checked.c): a
 * sketch of rank l = k + oversample (power iterations as
 * lm__svd_randomized), then
 *   resid = ||A V_k - U_k S_k||_F, eps = HMT's 10-probe bound of
 *   ||(I - Q Q^T) A||_2, est = lm__randomized_estimate(resid, sb, k, eps)
 * with sb the sketch's l singular values. While est > tol the rank
 * doubles; once 2 l >= min(m, n) lm__svd_top(tol) runs instead. *route
 * and *rank (optional) tell what ran. tol <= 0: exact. */
lm_status lm__svd_randomized_checked(lm_context *ctx, const double *a,
                                     size_t m, size_t n, size_t k,
                                     size_t oversample, size_t power,
                                     uint64_t seed, double tol, double *u,
                                     double *s, double *vt,
                                     lm_svd_route *route, size_t *rank);

/* resid / ||sb_1..k|| + resid / (sb_k - sb_k+1 - eps) * sb_k / ||sb_1..k||
 * (infinite when that gap is not positive). */
double lm__randomized_estimate(double resid, const double *sb, size_t k,
                               double eps);

#endif
