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
        ck_assert_ok(lm__polar_whiten(ctx, a, m, n, eps_in, tol, got, &mean));
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
        ck_assert_ok(lm__polar_whiten(ctx, a, m, n, eps_in, tol, got, &mean));
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
    ck_assert_ok(lm__polar_pair_whiten(ctx, LM_WHITEN_RELEASED, 1e-3, 1e-3, a, m,
                                       n, p2, &ma2, b, n, m, q2, &mb2));
    ck_assert(memcmp(p1, p2, m * n * 8) == 0 && memcmp(q1, q2, m * n * 8) == 0);
    ck_assert(ma1 == ma2 && mb1 == mb2);
    /* Well conditioned: rank-aware equals the polar factor to ~tau^2 --
     * here to the released route's own accuracy (its Gram route may run
     * in f32 within LM_SVD_TOL). */
    ck_assert_ok(lm__polar_pair_whiten(ctx, LM_WHITEN_RANK_AWARE, FLT_EPSILON,
                                       0.0, a, m, n, p2, &ma2, b, n, m, q2,
                                       &mb2));
    for (size_t i = 0; i < m * n; i++) {
        ck_assert(fabs(p1[i] - p2[i]) < 1e-4);
        ck_assert(fabs(q1[i] - q2[i]) < 1e-4);
    }
    ck_assert(fabs(ma1 - ma2) < 1e-4 * ma1 && fabs(mb1 - mb2) < 1e-4 * mb1);
    a[5] = NAN;
    ck_assert_status(lm__polar_whiten(ctx, a, m, n, FLT_EPSILON, 0.0, p2, NULL),
                     LM_ERR_NONFINITE);
    free(a); free(b); free(p1); free(q1); free(p2); free(q2);
    lm_context_destroy(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("linalg_whiten");
    TCase *tc = tcase_create("whiten");
    tcase_add_test(tc, shrunk_polar_matches_the_formula);
    tcase_add_test(tc, weights_floor_and_precision);
    tcase_add_test(tc, released_pair_and_bad_input);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
