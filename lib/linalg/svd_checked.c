/* Randomized top-k SVD with an a-posteriori error estimate: the rank of
 * the sketch grows until the estimate is within the tolerance, and the
 * exact ladder (lm__svd_top) takes over when the sketch would no longer
 * be cheaper. Halko, Martinsson & Tropp, "Finding structure with
 * randomness", SIAM Review 2011: Algorithm 4.4 (power iterations with
 * re-orthonormalisation) and Lemma 4.1 (the probe bound). */
#include <math.h>
#include <string.h>

#include "linalg/linalg.h"

/* Probes of the residual range; with r probes the bound below holds with
 * probability at least 1 - 10^-r (HMT Lemma 4.1). */
#define PROBES 10
/* Stream of the probes, disjoint from the sketch's (same seed). */
#define PROBE_SALT 0x9e3779b97f4a7c15ull
/* A sketch is attempted only while its rank l <= full / SKETCH_SHARE. */
#define SKETCH_SHARE 4

static double norm2(const double *x, size_t n, size_t stride)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += x[i * stride] * x[i * stride];
    return sqrt(s);
}

/* One sketch of rank l: Q (m x l) orthonormal, after `power` iterations. */
static lm_status sketch(lm_context *ctx, const double *a, size_t m, size_t n,
                        size_t l, size_t power, uint64_t seed, double *omega,
                        double *y, double *q)
{
    for (size_t i = 0; i < n * l; i++)
        omega[i] = lm__gaussian(seed, i);
    lm__gemm(false, false, m, l, n, 1.0, a, omega, 0.0, y);
    lm_status st = lm__qr_q(ctx, y, m, l, q);
    for (size_t it = 0; st == LM_OK && it < power; it++) {
        lm__gemm(true, false, n, l, m, 1.0, a, q, 0.0, omega);
        st = lm__qr_q(ctx, omega, n, l, omega);
        if (st == LM_OK) {
            lm__gemm(false, false, m, l, n, 1.0, a, omega, 0.0, y);
            st = lm__qr_q(ctx, y, m, l, q);
        }
    }
    return st;
}

/* eps_hat = 10 sqrt(2/pi) max_i ||(I - Q Q^T) A w_i|| over PROBES Gaussian
 * w_i: an upper bound of ||(I - Q Q^T) A||_2 w.p. >= 1 - 10^-PROBES. */
static double range_bound(const double *a, size_t m, size_t n, size_t l,
                          const double *q, uint64_t seed, double *w,
                          double *aw, double *c)
{
    for (size_t i = 0; i < n * PROBES; i++)
        w[i] = lm__gaussian(seed ^ PROBE_SALT, i);
    lm__gemm(false, false, m, PROBES, n, 1.0, a, w, 0.0, aw);
    lm__gemm(true, false, l, PROBES, m, 1.0, q, aw, 0.0, c);
    lm__gemm(false, false, m, PROBES, l, -1.0, q, c, 1.0, aw);
    double worst = 0;
    for (size_t j = 0; j < PROBES; j++) {
        double v = norm2(aw + j, m, PROBES);
        worst = v > worst ? v : worst;
    }
    return 10.0 * sqrt(2.0 / 3.141592653589793) * worst;
}

/* The estimate of docs/methods/svd_family.md ("Randomized SVD"): the
 * triplets are exact for A + E with ||E||_F = ||A V_k - U_k S_k||_F, and
 * the gap to the rest of A's spectrum is at least sb_k - sb_k+1 - eps. */
double lm__randomized_estimate(double resid, const double *sb, size_t k,
                               double eps)
{
    double top = norm2(sb, k, 1);
    double gap = sb[k - 1] - sb[k] - eps;
    if (!(top > 0) || !(gap > 0))
        return INFINITY;
    return resid / top + resid / gap * sb[k - 1] / top;
}

/* Work of one attempt at rank l; the estimate into *est. */
static lm_status attempt(lm_context *ctx, const double *a, size_t m,
                         size_t n, size_t k, size_t l, size_t power,
                         uint64_t seed, double *u, double *s, double *vt,
                         double *est)
{
    size_t words = n * l + m * l + m * l + l * n + l * l + l + l * n +
                   n * PROBES + m * PROBES + l * PROBES + m * k;
    double *buf = lm__calloc(ctx, words, sizeof(double));
    if (!buf)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "randomized SVD: out of memory "
                                    "(%zu x %zu, rank %zu)", m, n, l);
    double *omega = buf, *y = omega + n * l, *q = y + m * l, *bm = q + m * l,
           *ub = bm + l * n, *sb = ub + l * l, *vtb = sb + l,
           *w = vtb + l * n, *aw = w + n * PROBES, *c = aw + m * PROBES,
           *r = c + l * PROBES;
    lm_status st = sketch(ctx, a, m, n, l, power, seed, omega, y, q);
    if (st == LM_OK) {
        lm__gemm(true, false, l, n, m, 1.0, q, a, 0.0, bm); /* B = Q^T A */
        st = lm__svd(ctx, bm, l, n, ub, sb, vtb);
    }
    if (st == LM_OK) {
        lm__gemm(false, false, m, l, l, 1.0, q, ub, 0.0, y); /* U = Q Ub */
        for (size_t i = 0; i < m; i++)
            memcpy(u + i * k, y + i * l, k * sizeof(double));
        memcpy(s, sb, k * sizeof(double));
        memcpy(vt, vtb, k * n * sizeof(double));
        lm__svd_canonical_signs(u, m, k, vt, n);
        /* R = A V_k - U_k S_k (A^T U_k = V_k S_k holds exactly). */
        lm__gemm(false, true, m, k, n, 1.0, a, vt, 0.0, r);
        for (size_t i = 0; i < m; i++)
            for (size_t j = 0; j < k; j++)
                r[i * k + j] -= u[i * k + j] * s[j];
        double eps = range_bound(a, m, n, l, q, seed, w, aw, c);
        *est = lm__randomized_estimate(norm2(r, m * k, 1), sb, k, eps);
    }
    lm_free(ctx, buf);
    return st;
}

lm_status lm__svd_randomized_checked(lm_context *ctx, const double *a,
                                     size_t m, size_t n, size_t k,
                                     size_t oversample, size_t power,
                                     uint64_t seed, double tol, double *u,
                                     double *s, double *vt,
                                     lm_svd_route *route, size_t *rank)
{
    size_t full = m < n ? m : n;
    if (k > full)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_RANGE,
                                    "randomized SVD: rank %zu > min(%zu, %zu)",
                                    k, m, n);
    for (size_t i = 0; i < m * n; i++)
        if (!isfinite(a[i]))
            return lm_context_set_error(ctx, LM_ERR_NONFINITE,
                                        "randomized SVD: input has a "
                                        "non-finite value at element %zu", i);
    size_t l = k + (oversample ? oversample : 1);
    /* One attempt at rank l (sketch, power iterations, QRs, the small SVD
     * and the check) measured 0.5-1.4x the CPU time of a task's whole
     * exact ladder at hidden 768 for l between full / 4 and full / 3 (the
     * ladder's Gram route is cheap there), and the rank doubles after a
     * failure: so the ladder runs as soon as l > full / 4, deciding from
     * the sizes alone before any sketch is paid for. */
    while (k && tol > 0 && SKETCH_SHARE * l <= full) {
        double est = INFINITY;
        LM_TRY(attempt(ctx, a, m, n, k, l, power, seed, u, s, vt, &est));
        if (est <= tol) {
            *route = LM_SVD_RANDOMIZED;
            if (rank)
                *rank = l;
            return LM_OK;
        }
        l *= 2; /* the rank doubles: the sketch's error decays with it */
    }
    if (rank)
        *rank = full;
    return lm__svd_top(ctx, a, m, n, k, tol, u, s, vt, NULL, route);
}
