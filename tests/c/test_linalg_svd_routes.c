/* The precision rule's routes (lm__svd_top) and the checked randomized
 * SVD (lm__svd_randomized_checked): which route runs on which spectrum,
 * that every route reconstructs the top-k part, the `left` basis, seeds
 * and failures. The float64 numpy comparison is test_svd_precision.py;
 * this suite is for routes and memory (run under ASan/UBSan). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "linalg/linalg.h"
#include "testutil.h"

static double *rand_mat(size_t m, size_t n, uint64_t seed)
{
    double *a = malloc(m * n * sizeof(double));
    for (size_t i = 0; i < m * n; i++)
        a[i] = lm__gaussian(seed, i);
    return a;
}

/* A (m x n) = L diag(s) R^T, L and R orthonormal (QR of Gaussians). */
static double *with_spectrum(lm_context *ctx, size_t m, size_t n,
                             const double *s, uint64_t seed)
{
    size_t k = m < n ? m : n;
    double *gl = rand_mat(m, k, seed), *gr = rand_mat(n, k, seed + 1);
    double *l = malloc(m * k * 8), *r = malloc(n * k * 8), *a = calloc(m * n, 8);
    ck_assert_ok(lm__qr_q(ctx, gl, m, k, l));
    ck_assert_ok(lm__qr_q(ctx, gr, n, k, r));
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < k; j++)
            l[i * k + j] *= s[j];
    lm__gemm(false, true, m, n, k, 1.0, l, r, 0.0, a);
    free(gl); free(gr); free(l); free(r);
    return a;
}

/* ||U S Vt - (exact top-k)||_F / ||exact top-k||_F. */
static double topk_error(lm_context *ctx, const double *a, size_t m, size_t n,
                         size_t k, const double *u, const double *s,
                         const double *vt)
{
    size_t d = m < n ? m : n;
    double *eu = malloc(m * d * 8), *es = malloc(d * 8), *evt = malloc(d * n * 8);
    double *want = calloc(m * n, 8), *got = calloc(m * n, 8), *us = malloc(m * d * 8);
    ck_assert_ok(lm__svd(ctx, a, m, n, eu, es, evt));
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < k; j++)
            us[i * k + j] = eu[i * d + j] * es[j];
    lm__gemm(false, false, m, n, k, 1.0, us, evt, 0.0, want);
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < k; j++)
            us[i * k + j] = u[i * k + j] * s[j];
    lm__gemm(false, false, m, n, k, 1.0, us, vt, 0.0, got);
    double num = 0, den = 0;
    for (size_t i = 0; i < m * n; i++) {
        num += (got[i] - want[i]) * (got[i] - want[i]);
        den += want[i] * want[i];
    }
    free(eu); free(es); free(evt); free(want); free(got); free(us);
    return sqrt(num / den);
}

static lm_svd_route run_top(lm_context *ctx, const double *a, size_t m,
                            size_t n, size_t k, double tol, double *err)
{
    double *u = malloc(m * k * 8), *s = malloc(k * 8), *vt = malloc(k * n * 8);
    double *left = m <= n ? malloc(m * m * 8) : NULL;
    lm_svd_route route = LM_SVD_ROUTES;
    ck_assert_ok(lm__svd_top(ctx, a, m, n, k, tol, u, s, vt, left, &route));
    *err = topk_error(ctx, a, m, n, k, u, s, vt);
    if (left) { /* orthonormal, its first k columns are U */
        for (size_t x = 0; x < m; x++)
            for (size_t y = 0; y < m; y++) {
                double dot = 0;
                for (size_t i = 0; i < m; i++)
                    dot += left[i * m + x] * left[i * m + y];
                ck_assert(fabs(dot - (x == y)) < 1e-5);
            }
        for (size_t i = 0; i < m; i++)
            for (size_t j = 0; j < k; j++)
                ck_assert(left[i * m + j] == u[i * k + j]);
    }
    free(u); free(s); free(vt); free(left);
    return route;
}

START_TEST(routes_follow_the_spectrum)
{
    lm_context *ctx = tu_context(1, 0);
    size_t dims[][2] = {{48, 80}, {80, 48}, {40, 40}};
    for (size_t c = 0; c < 3; c++) {
        size_t m = dims[c][0], n = dims[c][1], d = m < n ? m : n, k = d / 4;
        double *sv = malloc(d * 8), err;
        for (size_t i = 0; i < d; i++) /* within 2x, clear gaps: f32 */
            sv[i] = 2.0 - (double)i / (double)d;
        double *a = with_spectrum(ctx, m, n, sv, 10 + c);
        ck_assert_int_eq(run_top(ctx, a, m, n, k, LM_SVD_TOL, &err), LM_SVD_GRAM_F32);
        ck_assert_msg(err < 1e-4, "f32 %zu x %zu: %g", m, n, err);
        ck_assert_int_eq(run_top(ctx, a, m, n, k, 0.0, &err), LM_SVD_EXACT);
        ck_assert(err < 1e-12);
        free(a);
        for (size_t i = 0; i < d; i++) /* spread over 1e8: f64 */
            sv[i] = pow(10.0, -8.0 * (double)i / (double)(d - 1));
        a = with_spectrum(ctx, m, n, sv, 20 + c);
        ck_assert_int_eq(run_top(ctx, a, m, n, k, LM_SVD_TOL, &err), LM_SVD_GRAM_F64);
        ck_assert_msg(err < 1e-8, "f64 %zu x %zu: %g", m, n, err);
        free(a);
        for (size_t i = 0; i < d; i++) /* rank 3 < k: exact */
            sv[i] = i < 3 ? 1.0 : 0.0;
        a = with_spectrum(ctx, m, n, sv, 30 + c);
        ck_assert_int_eq(run_top(ctx, a, m, n, k, LM_SVD_TOL, &err), LM_SVD_EXACT);
        free(a);
        /* k = d: no cut, sigma_d decides */
        for (size_t i = 0; i < d; i++)
            sv[i] = 2.0 - (double)i / (double)d;
        a = with_spectrum(ctx, m, n, sv, 40 + c);
        ck_assert_int_eq(run_top(ctx, a, m, n, d, LM_SVD_TOL, &err), LM_SVD_GRAM_F32);
        ck_assert(err < 1e-4);
        free(a);
        free(sv);
    }
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(estimate_terms)
{
    /* e = 4 u w1; k = d: e / w_k only; k < d adds the cut term. */
    double w[3] = {4.0, 1.0, 0.5};
    double u64 = lm__gram_unit(false);
    ck_assert(fabs(lm__gram_svd_estimate(w, 3, 3, false) - u64 * 4.0 / 0.5) < 1e-30);
    double cut = u64 * 4.0 / 1.0 + u64 * 4.0 / 0.5 * sqrt(1.0 / 5.0);
    ck_assert(fabs(lm__gram_svd_estimate(w, 3, 2, false) - cut) < 1e-28);
    double flat[3] = {1.0, 1.0, 1.0};
    ck_assert(isinf(lm__gram_svd_estimate(flat, 3, 2, false)));
    double sb[3] = {3.0, 2.0, 1.0};
    ck_assert(isinf(lm__randomized_estimate(0.1, sb, 2, 1.0)));
    double want = 0.1 / sqrt(13.0) + 0.1 / 0.5 * 2.0 / sqrt(13.0);
    ck_assert(fabs(lm__randomized_estimate(0.1, sb, 2, 0.5) - want) < 1e-15);
}
END_TEST

START_TEST(randomized_checked)
{
    lm_context *ctx = tu_context(1, 0);
    size_t m = 120, n = 160, k = 10, d = 120;
    double *u = malloc(m * k * 8), *s = malloc(k * 8), *vt = malloc(k * n * 8);
    double *u2 = malloc(m * k * 8), *s2 = malloc(k * 8), *vt2 = malloc(k * n * 8);
    lm_svd_route route;
    size_t rank;
    /* Flat (Gaussian): refused at every rank, the ladder runs. */
    double *a = rand_mat(m, n, 5);
    ck_assert_ok(lm__svd_randomized_checked(ctx, a, m, n, k, 10, 2, 7,
                                            LM_SVD_TOL, u, s, vt, &route, &rank));
    ck_assert_int_ne(route, LM_SVD_RANDOMIZED);
    ck_assert_uint_eq(rank, d);
    ck_assert(topk_error(ctx, a, m, n, k, u, s, vt) < 1e-4);
    free(a);
    /* Decaying 0.7^i: the first sketch passes. */
    double *sv = malloc(d * 8);
    for (size_t i = 0; i < d; i++)
        sv[i] = pow(0.7, (double)i);
    a = with_spectrum(ctx, m, n, sv, 6);
    ck_assert_ok(lm__svd_randomized_checked(ctx, a, m, n, k, 10, 2, 7,
                                            LM_SVD_TOL, u, s, vt, &route, &rank));
    ck_assert_int_eq(route, LM_SVD_RANDOMIZED);
    ck_assert_uint_eq(rank, k + 10);
    ck_assert(topk_error(ctx, a, m, n, k, u, s, vt) < 1e-5);
    /* Same seed, same bytes. */
    ck_assert_ok(lm__svd_randomized_checked(ctx, a, m, n, k, 10, 2, 7,
                                            LM_SVD_TOL, u2, s2, vt2, &route, NULL));
    ck_assert(memcmp(u, u2, m * k * 8) == 0 && memcmp(vt, vt2, k * n * 8) == 0);
    /* The same spectrum with a sketch of rank l = 35 > d / 4: the ladder
     * runs from the sizes alone, before any sketch (it would pass). */
    ck_assert_ok(lm__svd_randomized_checked(ctx, a, m, n, k, 25, 2, 7,
                                            LM_SVD_TOL, u, s, vt, &route, &rank));
    ck_assert_int_ne(route, LM_SVD_RANDOMIZED);
    ck_assert_uint_eq(rank, d);
    ck_assert(topk_error(ctx, a, m, n, k, u, s, vt) < 1e-5);
    /* At l = 30 = d / 4 the sketch is still tried, and passes. */
    ck_assert_ok(lm__svd_randomized_checked(ctx, a, m, n, k, 20, 2, 7,
                                            LM_SVD_TOL, u, s, vt, &route, &rank));
    ck_assert_int_eq(route, LM_SVD_RANDOMIZED);
    ck_assert_uint_eq(rank, k + 20);
    free(a);
    /* Slow decay 0.97^i with 2 probes: the rank must grow (or fall back). */
    for (size_t i = 0; i < d; i++)
        sv[i] = pow(0.97, (double)i);
    a = with_spectrum(ctx, m, n, sv, 8);
    ck_assert_ok(lm__svd_randomized_checked(ctx, a, m, n, k, 2, 0, 7,
                                            LM_SVD_TOL, u, s, vt, &route, &rank));
    ck_assert_uint_gt(rank, k + 2);
    ck_assert(topk_error(ctx, a, m, n, k, u, s, vt) < 1e-4);
    /* Bad input is named. */
    a[17] = NAN;
    ck_assert_status(lm__svd_randomized_checked(ctx, a, m, n, k, 2, 0, 7,
                                                LM_SVD_TOL, u, s, vt, &route, NULL),
                     LM_ERR_NONFINITE);
    ck_assert_status(lm__svd_top(ctx, a, m, n, k, LM_SVD_TOL, u, s, vt, NULL, &route),
                     LM_ERR_NONFINITE);
    ck_assert_status(lm__svd_top(ctx, a, m, n, d + 1, LM_SVD_TOL, u, s, vt, NULL, &route),
                     LM_ERR_OUT_OF_RANGE);
    free(a); free(sv);
    free(u); free(s); free(vt); free(u2); free(s2); free(vt2);
    lm_context_destroy(ctx);
}
END_TEST

/* The polar factor's route bound (lm__gram_cond_lower_bound): never above
 * cond(G) = (s_max / s_min)^2 of the constructed spectrum, low enough on
 * a flat spectrum that f32 is tried, far above f32's limit on a spread
 * one, and infinite on a rank-deficient matrix. */
START_TEST(gram_condition_bound)
{
    lm_context *ctx = tu_context(1, 0);
    const size_t shapes[3][2] = {{48, 80}, {80, 48}, {64, 64}};
    double limit = LM_SVD_TOL / lm__gram_unit(true); /* f32's largest cond(G) */
    for (size_t c = 0; c < 3; c++) {
        size_t m = shapes[c][0], n = shapes[c][1], k = m < n ? m : n;
        double *s = malloc(k * sizeof(double)), bound;
        for (int kind = 0; kind < 3; kind++) {
            for (size_t i = 0; i < k; i++)
                s[i] = kind == 0 ? 2.0 - (double)i / (double)(k - 1)
                     : kind == 1 ? pow(10.0, -3.0 * (double)i / (double)(k - 1))
                                 : (i < k / 2 ? 1.0 : 0.0);
            double *a = with_spectrum(ctx, m, n, s, 40 + 3 * c + (uint64_t)kind);
            double rms;
            ck_assert_ok(lm__gram_cond_lower_bound(ctx, a, m, n, &bound, &rms));
            if (kind < 2) { /* the pivots' RMS never above the eigenvalues' */
                double sum = 0;
                for (size_t i = 0; i < k; i++)
                    sum += pow(s[0] / s[i], 4);
                ck_assert_msg(rms <= sqrt(sum / (double)k) * (1 + 1e-3),
                              "rms %g", rms);
            } else {
                ck_assert(!isfinite(rms) || rms > 1e6);
            }
            if (kind == 0) { /* cond(G) = 4 */
                ck_assert(bound >= 1.0 && bound <= 4.0 * (1 + 1e-4));
                ck_assert(bound <= limit);
            } else if (kind == 1) { /* cond(G) = 1e6 */
                ck_assert(bound <= 1e6 * (1 + 1e-3));
                ck_assert_msg(bound > 10 * limit, "bound %g", bound);
            } else {
                ck_assert_msg(bound > 1e6, "bound %g", bound); /* singular */
            }
            free(a);
        }
        free(s);
    }
    lm_context_destroy(ctx);
}
END_TEST

/* One singular value 10x below the rest (cond(G) = 100, past f32's
 * limit): spread over every diagonal entry by the random singular
 * vectors, it leaves the Cholesky pivots within a factor 3, so the
 * pivots alone would let f32 be tried; the Rayleigh quotients must put
 * the bound near 100 (and never above it). */
START_TEST(gram_condition_bound_hidden_small)
{
    lm_context *ctx = tu_context(1, 0);
    size_t m = 64, n = 96, k = 64;
    double *s = malloc(k * sizeof(double)), bound, rms;
    for (size_t i = 0; i < k; i++)
        s[i] = i + 1 < k ? 1.0 : 0.1;
    double *a = with_spectrum(ctx, m, n, s, 91);
    ck_assert_ok(lm__gram_cond_lower_bound(ctx, a, m, n, &bound, &rms));
    ck_assert_msg(bound >= 50 && bound <= 100 * (1 + 1e-3), "bound %g", bound);
    ck_assert(bound > LM_SVD_TOL / lm__gram_unit(true)); /* f32 refused */
    free(a); free(s);
    lm_context_destroy(ctx);
}
END_TEST

/* ||P - U V^T||_F / ||U V^T||_F against the exact SVD's polar factor. */
static double polar_error(lm_context *ctx, const double *a, size_t m,
                          size_t n, const double *p)
{
    size_t d = m < n ? m : n;
    double *eu = malloc(m * d * 8), *es = malloc(d * 8), *evt = malloc(d * n * 8);
    double *want = calloc(m * n, 8);
    ck_assert_ok(lm__svd(ctx, a, m, n, eu, es, evt));
    lm__gemm(false, false, m, n, d, 1.0, eu, evt, 0.0, want);
    double num = 0, den = 0;
    for (size_t i = 0; i < m * n; i++) {
        num += (p[i] - want[i]) * (p[i] - want[i]);
        den += want[i] * want[i];
    }
    free(eu); free(es); free(evt); free(want);
    return sqrt(num / den);
}

/* The polar factor's routes (lm__polar_routed): a spectrum within 2 takes
 * f32; one singular value 2e5 below the rest, which the old rule (any
 * Gram eigenvalue ratio below 1e-10) sent to the SVD, takes f64 since its
 * weight is one direction in d; a spread spectrum or a rank-deficient
 * matrix takes the SVD. Each within 1e-5 and twice its estimate of the
 * exact SVD's U V^T (measured: at most 1.02x in f32, 0.70x in f64); the
 * estimate is computed from the constructed spectrum (w_i = s_i^2), not
 * from the code's eigenvalues. */
START_TEST(polar_routes)
{
    lm_context *ctx = tu_context(1, 0);
    /* The last two span several 64-row blocks and a partial one. */
    const size_t shapes[5][2] = {{48, 80}, {80, 48}, {64, 64}, {150, 90},
                                 {90, 150}};
    for (size_t c = 0; c < 5; c++) {
        size_t m = shapes[c][0], n = shapes[c][1], k = m < n ? m : n;
        double *s = malloc(k * sizeof(double)), *w = malloc(k * sizeof(double));
        double *p = malloc(m * n * sizeof(double));
        float *pf = malloc(m * n * sizeof(float));
        for (int kind = 0; kind < 4; kind++) {
            for (size_t i = 0; i < k; i++)
                s[i] = kind == 0 ? 2.0 - (double)i / (double)(k - 1)
                     : kind == 1 ? (i + 1 < k ? 2.0 - (double)i / (double)k
                                              : 1e-5)
                     : kind == 2 ? pow(10.0, -6.0 * (double)i / (double)(k - 1))
                                 : (i < k / 2 ? 1.0 : 0.0);
            for (size_t i = 0; i < k; i++)
                w[i] = s[i] * s[i];
            double *a = with_spectrum(ctx, m, n, s, 70 + 5 * c + (uint64_t)kind);
            lm_svd_route route = LM_SVD_ROUTES;
            double mean = 0;
            ck_assert_ok(lm__polar_routed(ctx, a, m, n, p, &mean, &route));
            const lm_svd_route want[4] = {LM_SVD_GRAM_F32, LM_SVD_GRAM_F64,
                                          LM_SVD_EXACT, LM_SVD_EXACT};
            ck_assert_msg(route == want[kind], "shape %zu kind %d: route %d",
                          c, kind, (int)route);
            /* Straight to f32: the same route, and each element the f64
             * factor's times scale * mean, rounded once. */
            lm_svd_route route_f = LM_SVD_ROUTES;
            double mean_f = 0;
            ck_assert_ok(lm__polar_scaled_f32(ctx, a, m, n, 0.75, pf, &mean_f,
                                              &route_f));
            ck_assert(route_f == route && mean_f == mean);
            for (size_t i = 0; i < m * n; i++)
                tu_check(pf[i] == (float)(p[i] * (0.75 * mean)),
                         "shape %zu kind %d: f32 element %zu %.9g, wanted "
                         "%.9g", c, kind, i, (double)pf[i],
                         (double)(float)(p[i] * (0.75 * mean)));
            double err = polar_error(ctx, a, m, n, p);
            if (kind < 2) {
                /* Old rule: the f64 Gram route needed w_k > 1e-10 w_1. */
                if (kind == 1)
                    ck_assert(w[k - 1] < 1e-10 * w[0]);
                double est = lm__polar_estimate(w, k, kind == 0);
                ck_assert_msg(est <= LM_SVD_TOL, "est %g", est);
                ck_assert_msg(err <= 2 * est && err <= LM_SVD_TOL,
                              "shape %zu kind %d: error %g, estimate %g", c,
                              kind, err, est);
            } else if (kind == 2) {
                ck_assert(err <= 1e-8); /* the SVD route */
            }
            double sum = 0;
            for (size_t i = 0; i < k; i++)
                sum += s[i];
            if (kind < 3)
                ck_assert(fabs(mean - sum / (double)k) <= 1e-6 * sum / (double)k);
            free(a);
        }
        free(s); free(w); free(p); free(pf);
    }
    lm_context_destroy(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("linalg_svd_routes");
    TCase *tc = tcase_create("routes");
    tcase_add_test(tc, routes_follow_the_spectrum);
    tcase_add_test(tc, estimate_terms);
    tcase_add_test(tc, randomized_checked);
    tcase_add_test(tc, gram_condition_bound);
    tcase_add_test(tc, polar_routes);
    tcase_add_test(tc, gram_condition_bound_hidden_small);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
