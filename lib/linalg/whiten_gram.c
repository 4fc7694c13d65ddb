/* The rank-aware polar factor through the smaller Gram matrix (whiten.h;
 * docs/methods/svd_family.md, "Rank-aware whitening", "Gram route"):
 * G = Q W Q^T, P = A Q diag(phi) Q^T (tall A) or Q diag(phi) Q^T A (wide)
 * with phi(l) = sqrt(l) / (l + tau^2) = g(s) / s. Unlike the released
 * 1 / s, phi is bounded by 1 / (2 tau), so null directions of A (TSV-M's
 * dropped columns, a low-rank Iso-C sum) do not make the route fail: it
 * is taken whenever lm__whiten_polar_estimate is within the tolerance. */
#include <math.h>

#include "linalg/linalg.h"
#include "linalg/whiten.h"

double lm__whiten_polar_estimate(const double *w, size_t k, double tau,
                                 bool single, bool mean)
{
    if (!k || !(w[0] > 0) || !isfinite(tau))
        return INFINITY;
    double unit = lm__gram_unit(single), e = unit * w[0], t2 = tau * tau;
    double wk = w[k - 1] > 0 ? w[k - 1] : 0.0;
    /* First order needs the perturbation small against every w_j + tau^2
     * (phi varies on that scale); tau = 0 is the released rule's
     * w_k > 8 e. */
    if (!(wk + t2 > 8 * e))
        return INFINITY;
    double sum_r2 = 0, max_r = 0, sum_g2 = 0, sum_g = 0, sum_s = 0,
           err_s = 0, err_g = 0;
    for (size_t j = 0; j < k; j++) {
        double wj = w[j] > 0 ? w[j] : 0.0, s = sqrt(wj), d = wj + t2;
        /* Column j of d(P) is at most ||E|| / (s_j^2 + tau^2): the
         * divided differences of phi times s_i, see the header. */
        double r = w[0] / d, g = wj / d;
        sum_r2 += r * r;
        max_r = r > max_r ? r : max_r;
        sum_g2 += g * g;
        sum_g += g;
        sum_s += s;
        /* |sqrt(l + e) - sqrt(l)| <= min(sqrt e, e / 2 s); g moves by at
         * most e tau^2 / (l + tau^2)^2. */
        err_s += s > 0 ? fmin(sqrt(e), e / (2 * s)) : sqrt(e);
        err_g += e * t2 / (d * d);
    }
    /* f32 keeps the released rule's largest ratio (a mean would admit
     * factors whose output moves by several f32 ulps). */
    double est = single ? unit * max_r : unit * (1.0 + sqrt(sum_r2 / sum_g2));
    if (mean)
        est += err_s / sum_s + (sum_g > 0 ? err_g / sum_g : INFINITY);
    return est;
}

/* P from G's eigenpairs (w descending, q with the eigenvectors as
 * columns, k x k) into dest, and the mean over the effective rank,
 * sum s / sum g. t and h are k x k scratch. */
static lm_status compose(lm_context *ctx, const double *a, size_t m,
                         size_t n, const double *w, const double *q,
                         double tau, double *t, double *h,
                         const struct lm__whiten_dest *dest, double *mean_sv)
{
    size_t k = m < n ? m : n;
    double t2 = tau * tau, sum_s = 0, sum_g = 0;
    /* t <- Q diag(phi), h <- t Q^T (symmetric), then A h or h A. */
    for (size_t j = 0; j < k; j++) {
        double wj = w[j] > 0 ? w[j] : 0.0, s = sqrt(wj);
        double phi = wj + t2 > 0 ? s / (wj + t2) : 0.0;
        sum_s += s;
        sum_g += wj + t2 > 0 ? wj / (wj + t2) : 0.0;
        for (size_t i = 0; i < k; i++)
            t[i * k + j] = q[i * k + j] * phi;
    }
    double mean = sum_g > 0 ? sum_s / sum_g : 0.0;
    if (mean_sv)
        *mean_sv = mean;
    lm_status st = lm__gemm_blocked(ctx, false, true, k, k, k, 1.0, t, q, 0.0,
                                    h);
    bool tall = m > n;
    if (st == LM_OK && dest->out) /* f32 straight from row blocks */
        st = tall ? lm__gemm_blocked_f32(ctx, false, false, m, n, k, a, h,
                                         dest->scale * mean, dest->out)
                  : lm__gemm_blocked_f32(ctx, false, false, m, n, k, h, a,
                                         dest->scale * mean, dest->out);
    else if (st == LM_OK)
        st = tall ? lm__gemm_blocked(ctx, false, false, m, n, k, 1.0, a, h,
                                     0.0, dest->p)
                  : lm__gemm_blocked(ctx, false, false, m, n, k, 1.0, h, a,
                                     0.0, dest->p);
    return st;
}

/* G's eigenpairs in f32 (from g32, G already formed in f32, which this
 * overwrites) or f64, tau from their top eigenvalue, and the estimate. */
static lm_status decompose(lm_context *ctx, const double *a, size_t m,
                           size_t n, float *g32, double eps_in, double tol,
                           bool mean, double *w, double *q, double *tau,
                           double *est)
{
    size_t k = m < n ? m : n;
    lm_status st = g32 ? lm__gram_eig_formed_f32(ctx, g32, k, w, q)
                       : lm__gram_eig(ctx, a, m, n, false, w, q);
    *est = INFINITY;
    if (st == LM_OK) {
        *tau = lm__whiten_floor(sqrt(w[0] > 0 ? w[0] : 0.0), eps_in, m, n,
                                tol);
        *est = lm__whiten_polar_estimate(w, k, *tau, g32 != NULL, mean);
    }
    return st;
}

lm_status lm__polar_whiten_gram(lm_context *ctx, const double *a, size_t m,
                                size_t n, double eps_in, double tol,
                                double route_tol, const lm_svd_route *force,
                                const struct lm__whiten_dest *dest,
                                double *mean_sv, bool *done,
                                lm_svd_route *route, double *estimate)
{
    size_t k = m < n ? m : n;
    *done = false;
    double *buf = lm__workspace_alloc(ctx, (3 * k * k + k) * sizeof(double));
    bool fits = lm__gram_f32_fits(m, n);
    float *g32 = fits ? lm__workspace_alloc(ctx, k * k * sizeof(float)) : NULL;
    if (!buf || (fits && !g32)) {
        lm__workspace_free(ctx, buf);
        lm__workspace_free(ctx, g32);
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "polar: out of memory");
    }
    double *q = buf, *t = q + k * k, *h = t + k * k, *w = h + k * k, tau = 0,
           est = INFINITY;
    /* f32 is tried only when G's f32 Cholesky pivots do not already rule
     * it out (lm__gram_cond_bound_f32, a tenth of an eigendecomposition;
     * infinite for rank-deficient A), as for the released factor; G in
     * f32 is formed once for the bound and the f32 eigendecomposition. */
    bool forced = force != NULL, single = false;
    lm_status st = g32 ? lm__gram_f32(ctx, a, m, n, g32) : LM_OK;
    if (forced) {
        single = g32 && *force == LM_SVD_GRAM_F32;
    } else if (st == LM_OK && g32) {
        double bound, rms;
        st = lm__gram_cond_bound_f32(ctx, g32, k, &bound, &rms);
        single = st == LM_OK && lm__gram_unit(true) * bound <= route_tol;
    }
    bool mean = mean_sv != NULL || dest->out != NULL;
    if (st == LM_OK)
        st = decompose(ctx, a, m, n, single ? g32 : NULL, eps_in, tol, mean,
                       w, q, &tau, &est);
    if (!forced && single && (st == LM_ERR_LINALG ||
                              (st == LM_OK && !(est <= route_tol)))) {
        single = false; /* f32 did not converge or did not pass: f64 */
        st = decompose(ctx, a, m, n, NULL, eps_in, tol, mean, w, q, &tau,
                       &est);
    }
    lm__workspace_free(ctx, g32);
    if (estimate)
        *estimate = est;
    if (st == LM_OK && (forced || est <= route_tol)) {
        st = compose(ctx, a, m, n, w, q, tau, t, h, dest, mean_sv);
        *done = st == LM_OK;
        *route = single ? LM_SVD_GRAM_F32 : LM_SVD_GRAM_F64;
    }
    lm__workspace_free(ctx, buf);
    /* No convergence on G (silent): the SVD route decides. */
    return st == LM_ERR_LINALG && !forced ? LM_OK : st;
}
