/* Rank-aware whitening (docs/methods/svd_family.md, "Rank-aware
 * whitening"): the polar step of ESM, TSV-M, Iso-C and Iso-CTS gives every
 * direction of the matrix it whitens the same weight, including
 * directions whose singular value is at the rounding noise of the f32
 * inputs. With `whiten=rank_aware` the floor of a spectrum with top
 * singular value sigma_1 is
 *     tau  = sigma_1 * (c * eps_in * sqrt(max(m, n)) + tol),
 * c = `whiten_floor` (10), eps_in the relative f32 precision of the
 * matrix's inputs (lm__input_precision) and tol the accuracy of the
 * factorizations that produced it (svd_tolerance; 0 for exact f64 ones).
 * One task's directions below it are dropped; the polar factor weights a
 * direction of singular value s by
 *     g(s) = s^2 / (s^2 + tau^2),
 * ~1 far above tau, ~(s/tau)^2 below it, and smooth across it, so
 * directions near the floor cannot flip in or out under a 1-ulp change of
 * the inputs. */
#ifndef LM_LINALG_WHITEN_H
#define LM_LINALG_WHITEN_H

#include "core/internal.h"
#include "linalg/linalg.h"

/* Default safety factor c of the floor (`whiten_floor`; measured:
 * bench/whiten/stability.py, real_layer.py). */
#define LM_WHITEN_FLOOR_DEFAULT 10.0

typedef enum lm_whiten {
    LM_WHITEN_RELEASED = 0,  /* every direction weight 1 (the papers' code) */
    LM_WHITEN_RANK_AWARE = 1 /* g(s) above */
} lm_whiten;

/* The `whiten` and `whiten_floor` parameters' descriptors, shared by
 * esm, tsv, iso_c and iso_cts; a CHOICE's default is its first word, so
 * each method states its own: LM__WHITEN_PARAMS_RELEASED (esm, iso_cts)
 * or LM__WHITEN_PARAMS_RANK_AWARE (tsv, iso_c: rank-aware measured level
 * on accuracy and ahead on stability, docs/methods/svd_family.md). */
#define LM__WHITEN_PARAMS_AS(choices)                                        \
    {sizeof(lm_param_desc), "whiten", LM_PARAM_CHOICE, 0, 0, 0, choices,     \
     "polar step: every direction weight 1 (released), or directions at "   \
     "the f32 noise floor of the inputs dropped / shrunk", 0},               \
    {sizeof(lm_param_desc), "whiten_floor", LM_PARAM_FLOAT,                  \
     LM_WHITEN_FLOOR_DEFAULT, 1e-3, 1e6, NULL,                               \
     "whiten=rank_aware: factor c of the noise floor "                       \
     "tau = s_1 (c eps_in sqrt(max(m, n)) + tol)", 0}
#define LM__WHITEN_PARAMS_RELEASED LM__WHITEN_PARAMS_AS("released|rank_aware")
#define LM__WHITEN_PARAMS_RANK_AWARE                                         \
    LM__WHITEN_PARAMS_AS("rank_aware|released")

/* Reads `whiten` into *mode and `whiten_floor` into *floor_c. */
lm_status lm__whiten_get(const lm_params *params, lm_whiten *mode,
                         double *floor_c);

/* Relative f32 precision of one task vector d = w - base, both stored in
 * f32: FLT_EPSILON * sqrt(||base||^2 + ||base + d||^2) / ||d|| (every
 * input entry moved by one ulp, relative to the task vector). base may
 * be NULL (task vectors given as such); 0 when d is zero. */
double lm__input_precision(const float *base, const float *d, size_t n);

/* The floor tau = sigma1 (eps_in sqrt(max(m, n)) + tol) for a spectrum
 * with top singular value sigma1 of an m x n matrix of relative input
 * precision eps_in (already multiplied by c), produced by factorizations
 * of accuracy tol. */
double lm__whiten_floor(double sigma1, double eps_in, size_t m, size_t n,
                        double tol);

/* g(s) = s^2 / (s^2 + tau^2); 1 when tau == 0 and s > 0; 0 for s == 0. */
double lm__whiten_weight(double s, double tau);

/* Whether one task's direction of singular value s survives its floor
 * (s > tau). Directions of a single task's spectrum are dropped, not
 * shrunk, before a concatenation is whitened: the polar factor of the
 * concatenation would lift a shrunk column back to full weight. */
bool lm__whiten_keep(double s, double tau);

/* The rank-aware polar factor of A (m x n) into p (m x n): A = U S V^T,
 * p = U g(S) V^T with tau = lm__whiten_floor(sigma_1, eps_in, m, n, tol)
 * (eps_in already multiplied by c). Through G's eigenpairs
 * (lm__polar_whiten_gram) when route_tol > 0 and the estimate
 * lm__whiten_polar_estimate is within route_tol, else from the exact f64
 * SVD. mean_sv (optional) receives sum(s) / sum(g(s)), the mean singular
 * value over the effective rank (the released mean over every direction
 * when nothing is near the floor); route (optional) which route ran. */
lm_status lm__polar_whiten(lm_context *ctx, const double *a, size_t m,
                           size_t n, double eps_in, double tol,
                           double route_tol, double *p, double *mean_sv,
                           lm_svd_route *route);

/* First-order bound on the relative error of the rank-aware polar factor
 * (and, when `mean`, of sum s / sum g) taken from the eigenpairs w (k,
 * descending) of A's smaller Gram matrix computed in that precision: they
 * are exact for G + E, ||E|| <= e = lm__gram_unit * w_1, and
 * P = A phi(G), phi(l) = sqrt(l) / (l + tau^2), moves by
 * ||E|| sqrt(sum_j b_j^2) in the Frobenius norm, b_j = 1 / (s_j^2 + tau^2)
 * (first order in G's eigenbasis: d(P)_ij = s_i phi[l_i, l_j] E_ij, and
 * |s_i phi[l_i, l_j]| = s_i |tau^2 - s_i s_j| / ((s_i + s_j)(s_i^2 +
 * tau^2)(s_j^2 + tau^2)) <= b_j), against ||P||_F = sqrt(sum_j g_j^2):
 *     est = unit (1 + sqrt(sum_j (w_1 b_j)^2 / sum_j g_j^2))    (f64)
 *     est = unit max_j w_1 b_j                                  (f32)
 *   + sum_j min(sqrt e, e / 2 s_j) / sum_j s_j
 *   + sum_j e tau^2 / (w_j + tau^2)^2 / sum_j g_j               (mean)
 * (docs/methods/svd_family.md). INFINITY unless w_k + tau^2 > 8 e. With
 * tau = 0 the polar term is lm__polar_estimate's. */
double lm__whiten_polar_estimate(const double *w, size_t k, double tau,
                                 bool single, bool mean);

/* Where a rank-aware polar factor goes: p (m x n, f64), or, when out is
 * set, out (m x n, f32) = (float)(P_ij * (scale * mean)) with mean =
 * sum s / sum g, formed in row blocks (lm__gemm_blocked_f32: the bits of
 * scaling the f64 factor) without an m x n f64 copy. */
struct lm__whiten_dest {
    double *p;
    float *out;
    double scale;
};

/* lm__polar_whiten with its result scaled into f32 (dest.out above). */
lm_status lm__polar_whiten_f32(lm_context *ctx, const double *a, size_t m,
                               size_t n, double eps_in, double tol,
                               double route_tol, double scale, float *out,
                               double *mean_sv, lm_svd_route *route);

/* The Gram route of lm__polar_whiten: f32 when G's Cholesky pivots allow
 * it and the estimate passes, else f64 when it passes (*done true, *route
 * set), else nothing (*done false). force (tests): that route, f32 or
 * f64, whatever the estimate. *estimate (optional): the estimate of the
 * route last decomposed. */
lm_status lm__polar_whiten_gram(lm_context *ctx, const double *a, size_t m,
                                size_t n, double eps_in, double tol,
                                double route_tol, const lm_svd_route *force,
                                const struct lm__whiten_dest *dest,
                                double *mean_sv, bool *done,
                                lm_svd_route *route, double *estimate);

/* The polar factors of A and B as released (lm__polar_pair) or rank-aware
 * (lm__polar_whiten, both with eps_in, tol and route_tol), one per idle
 * thread. routes (optional, 2 entries) receive the routes taken. */
lm_status lm__polar_pair_whiten(lm_context *ctx, lm_whiten mode,
                                double eps_in, double tol, double route_tol,
                                const double *a, size_t ma, size_t na,
                                double *pa, double *mean_a, const double *b,
                                size_t mb, size_t nb, double *pb,
                                double *mean_b, lm_svd_route *routes);

#endif
