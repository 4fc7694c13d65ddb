/* Rank-aware whitening's building blocks (linalg/whiten.h): the shrunk
 * polar factor against U g(S) V^T built from a known spectrum, its mean
 * over the effective rank, rank-deficient and non-finite inputs, the input
 * precision and the released pass-through. The numpy comparison of whole
 * merges is tests/python/test_whiten.py; this suite covers the C pieces
 * (and runs under ASan/UBSan). */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "linalg/linalg.h"
#include "linalg/whiten.h"
#include "testutil.h"

/* Orthonormal columns (m x k) from a QR of Gaussians. */
static double *basis(lm_context *ctx, size_t m, size_t k, uint64_t seed)
{
    double *g = malloc(m * k * 8), *q = malloc(m * k * 8);
    for (size_t i = 0; i < m * k; i++)
        g[i] = lm__gaussian(seed, i);
    ck_assert_ok(lm__qr_q(ctx, g, m, k, q));
    free(g);
    return q;
}

/* out (m x n) = L diag(w) R^T. */
static void compose(const double *l, const double *w, const double *r,
                    size_t m, size_t n, size_t k, double *out)
{
    double *lw = malloc(m * k * 8);
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < k; j++)
            lw[i * k + j] = l[i * k + j] * w[j];
    lm__gemm(false, true, m, n, k, 1.0, lw, r, 0.0, out);
    free(lw);
}

START_TEST(shrunk_polar_matches_the_formula)
{
    lm_context *ctx = tu_context(1, 0);
    size_t dims[][2] = {{30, 50}, {50, 30}, {24, 24}};
    double eps_in = 3e-6, tol = 1e-5;
    for (size_t c = 0; c < 3; c++) {
        size_t m = dims[c][0], n = dims[c][1], k = m < n ? m : n;
        double *l = basis(ctx, m, k, 100 + c), *r = basis(ctx, n, k, 200 + c);
        double *s = calloc(k, 8), *g = calloc(k, 8);
        /* Far above the floor, straddling it, and exactly zero (rank
         * deficient: the last quarter). */
        for (size_t j = 0; j < k; j++)
            s[j] = j < 3 * k / 4 ? pow(10.0, -8.0 * (double)j / (double)k) : 0.0;
        double tau = s[0] * (eps_in * sqrt((double)(m > n ? m : n)) + tol);
        double sum_s = 0, sum_g = 0;
        for (size_t j = 0; j < k; j++) {
            g[j] = s[j] > 0 ? s[j] * s[j] / (s[j] * s[j] + tau * tau) : 0.0;
            sum_s += s[j];
            sum_g += g[j];
        }
        double *a = calloc(m * n, 8), *want = calloc(m * n, 8),
               *got = calloc(m * n, 8), mean = 0;
        compose(l, s, r, m, n, k, a);
        compose(l, g, r, m, n, k, want);
        ck_assert_ok(lm__polar_whiten(ctx, a, m, n, eps_in, tol, 0.0, got, &mean,
                                      NULL));
        double err = 0, big = 0;
        for (size_t i = 0; i < m * n; i++) {
            err = fmax(err, fabs(got[i] - want[i]));
            big = fmax(big, fabs(want[i]));
        }
        /* Directions near tau are resolved to ~eps_64 / tau relative. */
        ck_assert_msg(err <= 1e-8 * big, "%zu x %zu: %g", m, n, err / big);
        ck_assert_msg(fabs(mean - sum_s / sum_g) <= 1e-10 * mean, "mean %g %g",
                      mean, sum_s / sum_g);
        /* Nothing but zeros: a zero factor, mean 0. */
        memset(a, 0, m * n * 8);
        ck_assert_ok(lm__polar_whiten(ctx, a, m, n, eps_in, tol, 0.0, got, &mean,
                                      NULL));
        for (size_t i = 0; i < m * n; i++)
            ck_assert(got[i] == 0.0);
        ck_assert(mean == 0.0);
        free(l); free(r); free(s); free(g); free(a); free(want); free(got);
    }
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(weights_floor_and_precision)
{
    ck_assert(lm__whiten_weight(0.0, 1.0) == 0.0);
    ck_assert(lm__whiten_weight(2.0, 0.0) == 1.0);
    ck_assert(fabs(lm__whiten_weight(1.0, 1.0) - 0.5) < 1e-15);
    ck_assert(lm__whiten_keep(1.0 + 1e-12, 1.0));
    ck_assert(!lm__whiten_keep(1.0, 1.0));
    ck_assert(fabs(lm__whiten_floor(2.0, 1e-7, 16, 100, 1e-5) -
                   2.0 * (1e-7 * 10.0 + 1e-5)) < 1e-18);
    /* A task vector given as such (no base): one ulp relative to itself,
     * FLT_EPSILON; with a base, its norm and the fine-tuned weights'. */
    float d[4] = {1, -2, 3, 0.5f}, base[4] = {10, 10, -10, 0};
    ck_assert(fabs(lm__input_precision(NULL, d, 4) - FLT_EPSILON) <
              1e-12 * FLT_EPSILON);
    double b2 = 300, w2 = 11 * 11 + 8 * 8 + 7 * 7 + 0.25, d2 = 1 + 4 + 9 + 0.25;
    ck_assert(fabs(lm__input_precision(base, d, 4) -
                   FLT_EPSILON * sqrt((b2 + w2) / d2)) < 1e-12 * FLT_EPSILON);
    float zero[4] = {0};
    ck_assert(lm__input_precision(base, zero, 4) == 0.0);
}
END_TEST

START_TEST(released_pair_and_bad_input)
{
    lm_context *ctx = tu_context(2, 0);
    size_t m = 20, n = 36;
    double *a = malloc(m * n * 8), *b = malloc(n * m * 8);
    for (size_t i = 0; i < m * n; i++) {
        a[i] = lm__gaussian(7, i);
        b[i] = lm__gaussian(8, i);
    }
    double *p1 = calloc(m * n, 8), *q1 = calloc(m * n, 8), *p2 = calloc(m * n, 8),
           *q2 = calloc(m * n, 8), ma1, mb1, ma2, mb2;
    ck_assert_ok(lm__polar_pair(ctx, a, m, n, p1, &ma1, b, n, m, q1, &mb1));
    ck_assert_ok(lm__polar_pair_whiten(ctx, LM_WHITEN_RELEASED, 1e-3, 1e-3,
                                       LM_SVD_TOL, a, m, n, p2, &ma2, b, n,
                                       m, q2, &mb2, NULL));
    ck_assert(memcmp(p1, p2, m * n * 8) == 0 && memcmp(q1, q2, m * n * 8) == 0);
    ck_assert(ma1 == ma2 && mb1 == mb2);
    /* Well conditioned: rank-aware equals the polar factor to ~tau^2 --
     * here to the released route's own accuracy (its Gram route may run
     * in f32 within LM_SVD_TOL). */
    ck_assert_ok(lm__polar_pair_whiten(ctx, LM_WHITEN_RANK_AWARE, FLT_EPSILON,
                                       0.0, 0.0, a, m, n, p2, &ma2, b, n, m,
                                       q2, &mb2, NULL));
    for (size_t i = 0; i < m * n; i++) {
        ck_assert(fabs(p1[i] - p2[i]) < 1e-4);
        ck_assert(fabs(q1[i] - q2[i]) < 1e-4);
    }
    ck_assert(fabs(ma1 - ma2) < 1e-4 * ma1 && fabs(mb1 - mb2) < 1e-4 * mb1);
    a[5] = NAN;
    ck_assert_status(lm__polar_whiten(ctx, a, m, n, FLT_EPSILON, 0.0,
                                       LM_SVD_TOL, p2, NULL, NULL),
                     LM_ERR_NONFINITE);
    free(a); free(b); free(p1); free(q1); free(p2); free(q2);
    lm_context_destroy(ctx);
}
END_TEST

/* ||got - want||_F / ||want||_F. */
static double rel_fro(const double *got, const double *want, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += (got[i] - want[i]) * (got[i] - want[i]);
        den += want[i] * want[i];
    }
    return sqrt(num / den);
}

/* The Gram route's rule (lm__whiten_polar_estimate within LM_SVD_TOL):
 * on constructed spectra -- flat, decaying over 1e8, a cluster of 20
 * directions straddling tau (0.3 tau to 3 tau), rank-deficient (a
 * quarter zero, as TSV-M's dropped columns) -- the routed factor is
 * within LM_SVD_TOL and twice the estimate of U g(S) V^T built from the
 * known spectrum, taking the route the estimate (from s^2, not from the
 * code's eigenvalues) names. A floor at G's noise (eps_in 1e-9, tol 0:
 * tau^2 ~ 1e-16 s_1^2) on the spectrum decaying to 1e-8 has an infinite
 * estimate: the route must be the SVD, and the same matrix forced through
 * the f64 Gram route does miss LM_SVD_TOL (the directions near tau have
 * eigenvalues at G's rounding), so admitting it would fail the check; the
 * same spread spectrum with the usual floor forced through f32 likewise.
 * Measured: errors 0.06-0.67x the estimate on the Gram routes (the
 * rank-deficient one 5e-9x: the bound takes the worst singular value
 * next to each zero, here the spectrum has a gap), forced 0.03-0.05 (f64)
 * and 0.37-0.44 (f32). */
START_TEST(gram_route_rule)
{
    lm_context *ctx = tu_context(1, 0);
    const size_t shapes[3][2] = {{48, 80}, {80, 48}, {64, 64}};
    for (size_t c = 0; c < 3; c++) {
        size_t m = shapes[c][0], n = shapes[c][1], k = m < n ? m : n;
        size_t big = m > n ? m : n;
        double *l = basis(ctx, m, k, 300 + c), *r = basis(ctx, n, k, 400 + c);
        double *s = calloc(k, 8), *g = calloc(k, 8), *w = calloc(k, 8);
        double *a = calloc(m * n, 8), *want = calloc(m * n, 8),
               *got = calloc(m * n, 8);
        for (int kind = 0; kind < 6; kind++) {
            double eps_in = kind != 4 ? 1e-6 : 1e-9, tol = kind != 4 ? 1e-5 : 0;
            double tau = eps_in * sqrt((double)big) + tol; /* s_1 = 1 */
            for (size_t j = 0; j < k; j++) {
                double x = (double)j / (double)(k - 1);
                s[j] = kind == 0 ? 1.0 - 0.5 * x
                     : kind == 1 || kind >= 4 ? pow(10.0, -8.0 * x)
                     : kind == 2 ? (j < k - 20 ? 1.0 - 0.5 * x
                                               : tau * pow(10.0, 0.5 - (double)(j - (k - 20)) / 19.0))
                                 : (j < 3 * k / 4 ? 1.0 - 0.5 * x : 0.0);
                if (kind == 2 && j == 0)
                    s[j] = 1.0;
                g[j] = lm__whiten_weight(s[j], tau);
                w[j] = s[j] * s[j];
            }
            compose(l, s, r, m, n, k, a);
            compose(l, g, r, m, n, k, want);
            double est = lm__whiten_polar_estimate(w, k, tau, false, true);
            double est32 = lm__whiten_polar_estimate(w, k, tau, true, true);
            lm_svd_route route = LM_SVD_ROUTES, force;
            double mean = 0, sum_s = 0, sum_g = 0;
            for (size_t j = 0; j < k; j++) {
                sum_s += s[j];
                sum_g += g[j];
            }
            if (kind < 5) {
                ck_assert_ok(lm__polar_whiten(ctx, a, m, n, eps_in, tol,
                                              LM_SVD_TOL, got, &mean, &route));
                lm_svd_route expect = est32 <= LM_SVD_TOL ? LM_SVD_GRAM_F32
                                    : est <= LM_SVD_TOL ? LM_SVD_GRAM_F64
                                                        : LM_SVD_EXACT;
                ck_assert_msg(route == expect, "shape %zu kind %d: route %d "
                              "(estimates %g f32, %g f64)", c, kind,
                              (int)route, est32, est);
                double err = rel_fro(got, want, m * n);
                double bound = route == LM_SVD_GRAM_F32 ? est32
                             : route == LM_SVD_GRAM_F64 ? est : 1e-8;
                ck_assert_msg(err <= 2 * bound && err <= LM_SVD_TOL,
                              "shape %zu kind %d route %d: error %g, "
                              "estimate %g", c, kind, (int)route, err, bound);
                ck_assert_msg(fabs(mean - sum_s / sum_g) <=
                                  2 * bound * sum_s / sum_g + 1e-12,
                              "mean %g, want %g", mean, sum_s / sum_g);
            }
            /* Kinds 0-3 take the Gram route; kind 4 (the floor at G's
             * noise) must not. */
            if (kind < 4)
                ck_assert(route != LM_SVD_EXACT);
            if (kind == 4) {
                ck_assert(route == LM_SVD_EXACT && !isfinite(est));
                force = LM_SVD_GRAM_F64;
                bool done;
                struct lm__whiten_dest dest = {got, NULL, 1.0};
                ck_assert_ok(lm__polar_whiten_gram(ctx, a, m, n, eps_in, tol,
                                                   LM_SVD_TOL, &force, &dest,
                                                   NULL, &done, &route, NULL));
                double err = rel_fro(got, want, m * n);
                ck_assert_msg(done && err > LM_SVD_TOL, "forced f64: %g", err);
            }
            if (kind == 5) { /* spread over 1e8: f32 must be refused */
                ck_assert(est32 > LM_SVD_TOL);
                force = LM_SVD_GRAM_F32;
                bool done;
                struct lm__whiten_dest dest = {got, NULL, 1.0};
                ck_assert_ok(lm__polar_whiten_gram(ctx, a, m, n, eps_in, tol,
                                                   LM_SVD_TOL, &force, &dest,
                                                   NULL, &done, &route, NULL));
                double err = rel_fro(got, want, m * n);
                ck_assert_msg(done && err > LM_SVD_TOL, "forced f32: %g", err);
            }
        }
        free(l); free(r); free(s); free(g); free(w); free(a); free(want);
        free(got);
    }
    lm_context_destroy(ctx);
}
END_TEST

/* The Gram route on a factor large enough for the split eigensolver and
 * the blocked products (d = 300 >= LM_EIGH_SPLIT_MIN): 1 and 2 threads
 * give the same bytes; the f32 destination is the f64 one scaled. */
START_TEST(gram_route_threads)
{
    size_t m = 300, n = 420, k = 300;
    lm_context *one = tu_context(1, 0), *two = tu_context(2, 0);
    double *l = basis(one, m, k, 500), *r = basis(one, n, k, 501);
    double *s = calloc(k, 8), *a = calloc(m * n, 8), *p1 = calloc(m * n, 8),
           *p2 = calloc(m * n, 8), mean1 = 0, mean2 = 0;
    for (size_t j = 0; j < k; j++)
        s[j] = j < 200 ? pow(0.97, (double)j) : 0.0;
    compose(l, s, r, m, n, k, a);
    lm_svd_route r1, r2;
    ck_assert_ok(lm__polar_whiten(one, a, m, n, 1e-6, 1e-5, LM_SVD_TOL, p1,
                                  &mean1, &r1));
    ck_assert_ok(lm__polar_whiten(two, a, m, n, 1e-6, 1e-5, LM_SVD_TOL, p2,
                                  &mean2, &r2));
    ck_assert(r1 == LM_SVD_GRAM_F64 && r2 == r1);
    ck_assert(memcmp(p1, p2, m * n * 8) == 0 && mean1 == mean2);
    /* The f32 destination (Iso-C's output): the f64 factor times scale and
     * the mean, rounded, bit for bit, on the Gram route and on the SVD
     * route (route_tol 0). */
    float *o = malloc(m * n * 4);
    for (int exact = 0; exact < 2; exact++) {
        double tol = exact ? 0.0 : LM_SVD_TOL, mean3 = 0;
        ck_assert_ok(lm__polar_whiten(two, a, m, n, 1e-6, 1e-5, tol, p1,
                                      &mean1, &r1));
        ck_assert_ok(lm__polar_whiten_f32(two, a, m, n, 1e-6, 1e-5, tol, 0.7,
                                          o, &mean3, &r2));
        ck_assert(r1 == r2 && mean1 == mean3);
        ck_assert(r1 == (exact ? LM_SVD_EXACT : LM_SVD_GRAM_F64));
        for (size_t i = 0; i < m * n; i++)
            ck_assert(o[i] == (float)(p1[i] * (0.7 * mean1)));
    }
    free(o);
    free(l); free(r); free(s); free(a); free(p1); free(p2);
    lm_context_destroy(one);
    lm_context_destroy(two);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("linalg_whiten");
    TCase *tc = tcase_create("whiten");
    tcase_add_test(tc, shrunk_polar_matches_the_formula);
    tcase_add_test(tc, weights_floor_and_precision);
    tcase_add_test(tc, released_pair_and_bad_input);
    tcase_add_test(tc, gram_route_rule);
    tcase_add_test(tc, gram_route_threads);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
