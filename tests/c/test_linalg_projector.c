/* The LAPACK layer and projectors: reconstructions, orthonormality,
 * failure paths, determinism. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libmerge/projector.h"
#include "core/internal.h"
#include "linalg/linalg.h"
#include "strategies/esm.h"
#include "testutil.h"

static double *rand_mat(size_t m, size_t n, uint64_t seed)
{
    double *a = malloc(m * n * sizeof(double));
    uint64_t s = seed;
    for (size_t i = 0; i < m * n; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        a[i] = (double)(s >> 11) / 9007199254740992.0 * 2 - 1;
    }
    return a;
}

static double max_abs_diff(const double *a, const double *b, size_t n)
{
    double d = 0;
    for (size_t i = 0; i < n; i++)
        d = fmax(d, fabs(a[i] - b[i]));
    return d;
}

/* |Q^T Q - I| for Q (m x k). */
static double orthonormality(const double *q, size_t m, size_t k)
{
    double worst = 0;
    for (size_t a = 0; a < k; a++)
        for (size_t b = 0; b < k; b++) {
            double dot = 0;
            for (size_t i = 0; i < m; i++)
                dot += q[i * k + a] * q[i * k + b];
            worst = fmax(worst, fabs(dot - (a == b)));
        }
    return worst;
}

static void check_svd(size_t m, size_t n, bool fallback)
{
    lm_context *ctx = tu_context(1, 0);
    size_t k = m < n ? m : n;
    double *a = rand_mat(m, n, m * 31 + n);
    double *u = malloc(m * k * 8), *s = malloc(k * 8), *vt = malloc(k * n * 8);
    double *r = calloc(m * n, 8), *us = malloc(m * k * 8);
    if (fallback)
        lm__svd_force_fallback_once();
    ck_assert_ok(lm__svd(ctx, a, m, n, u, s, vt));
    for (size_t i = 0; i + 1 < k; i++)
        ck_assert(s[i] >= s[i + 1]);
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < k; j++)
            us[i * k + j] = u[i * k + j] * s[j];
    lm__gemm(false, false, m, n, k, 1.0, us, vt, 0.0, r);
    ck_assert(max_abs_diff(r, a, m * n) < 1e-12);
    ck_assert(orthonormality(u, m, k) < 1e-12);
    /* Canonical signs: the largest |entry| of each u column is positive. */
    for (size_t j = 0; j < k; j++) {
        size_t best = 0;
        for (size_t i = 1; i < m; i++)
            if (fabs(u[i * k + j]) > fabs(u[best * k + j]))
                best = i;
        ck_assert(u[best * k + j] > 0);
    }
    free(a); free(u); free(s); free(vt); free(r); free(us);
    lm_context_destroy(ctx);
}

/* 32-bit LAPACK: dsyevd of n needs 1 + 6n + 2n^2 workspace elements, so
 * ESM's Gram route stops fitting at n = 32766; the output route at the same
 * d_out only decomposes C (d_in) and B (min(n, d_in) x d_out). */
START_TEST(lapack_integer_limits)
{
    ck_assert(lm__lapack_fits(2147483647.0));
    ck_assert(!lm__lapack_fits(2147483648.0));
    ck_assert(lm__esm_route_fits_lapack(ESD_GRAM, 32765, 4096, 100000, 4000));
    ck_assert(!lm__esm_route_fits_lapack(ESD_GRAM, 32767, 4096, 100000, 4000));
    ck_assert(!lm__esm_route_fits_lapack(ESD_GRAM, 128256, 4096, 100000, 1));
    ck_assert(lm__esm_route_fits_lapack(ESD_OUTPUT, 128256, 4096, 100000, 1));
    ck_assert(lm__esm_route_fits_lapack(ESD_RANDOMIZED, 128256, 4096, 100000,
                                        64));
    /* The Gram route's estimate at 32k: five d_out^2 arrays, ~39 GiB. */
    double g = lm__esm_route_bytes(ESD_GRAM, 32000, 4096, 8192, 4000);
    ck_assert(g > 39.0 * 1073741824.0 && g < 39.2 * 1073741824.0);
    double o = lm__esm_route_bytes(ESD_OUTPUT, 32000, 4096, 8192, 4000);
    ck_assert(o < g / 8);
}
END_TEST

START_TEST(svd_reconstructs)
{
    check_svd(30, 20, false);
    check_svd(20, 30, false);
    check_svd(25, 25, true); /* dgesvd fallback path */
}
END_TEST

START_TEST(failures_are_reported)
{
    lm_context *ctx = tu_context(1, 0);
    double *a = rand_mat(4, 4, 1), u[16], s[4], vt[16], l[16];
    a[5] = NAN;
    ck_assert_status(lm__svd(ctx, a, 4, 4, u, s, vt), LM_ERR_NONFINITE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "element 5"));
    ck_assert_status(lm__eigh(ctx, a, 4, s, u), LM_ERR_NONFINITE);
    double neg[4] = {1, 2, 2, 1}; /* eigenvalues 3 and -1 */
    ck_assert_status(lm__cholesky(ctx, neg, 2, 0.0, l), LM_ERR_LINALG);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "dpotrf"));
    free(a);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(eigh_cholesky_qr_polar)
{
    lm_context *ctx = tu_context(1, 0);
    size_t n = 12;
    double *b = rand_mat(n, n, 7), *a = calloc(n * n, 8);
    lm__gemm(true, false, n, n, n, 1.0, b, b, 0.0, a); /* SPD */
    double *w = malloc(n * 8), *v = malloc(n * n * 8), *r = calloc(n * n, 8);
    ck_assert_ok(lm__eigh(ctx, a, n, w, v));
    for (size_t i = 0; i + 1 < n; i++)
        ck_assert(w[i] >= w[i + 1]);
    double *vw = malloc(n * n * 8);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            vw[i * n + j] = v[i * n + j] * w[j];
    lm__gemm(false, true, n, n, n, 1.0, vw, v, 0.0, r);
    ck_assert(max_abs_diff(r, a, n * n) < 1e-10);

    double *l = malloc(n * n * 8), *x = rand_mat(n, 2, 9), *rhs = malloc(n * 2 * 8);
    memcpy(rhs, x, n * 2 * 8);
    ck_assert_ok(lm__cholesky(ctx, a, n, 0.0, l));
    ck_assert_ok(lm__cholesky_solve(ctx, l, n, rhs, 2));
    double *ax = calloc(n * 2, 8);
    lm__gemm(false, false, n, 2, n, 1.0, a, rhs, 0.0, ax);
    ck_assert(max_abs_diff(ax, x, n * 2) < 1e-9);

    double *c = rand_mat(20, 6, 3), *q = malloc(20 * 6 * 8), *p = malloc(20 * 6 * 8);
    ck_assert_ok(lm__qr_q(ctx, c, 20, 6, q));
    ck_assert(orthonormality(q, 20, 6) < 1e-12);
    ck_assert_ok(lm__polar(ctx, c, 20, 6, p));
    /* cond(c) is small: the f32 Gram route, held to LM_SVD_TOL */
    ck_assert(orthonormality(p, 20, 6) < LM_SVD_TOL);
    free(b); free(a); free(w); free(v); free(r); free(vw); free(l); free(x);
    free(rhs); free(ax); free(c); free(q); free(p);
    lm_context_destroy(ctx);
}
END_TEST

/* U V^T from lm__svd: the reference polar factor. */
static void polar_by_svd(lm_context *ctx, const double *a, size_t m, size_t n,
                         double *p, double *mean_sv)
{
    size_t k = m < n ? m : n;
    double *u = malloc(m * k * 8), *s = malloc(k * 8), *vt = malloc(k * n * 8);
    ck_assert_ok(lm__svd(ctx, a, m, n, u, s, vt));
    lm__gemm(false, false, m, n, k, 1.0, u, vt, 0.0, p);
    double sum = 0;
    for (size_t i = 0; i < k; i++)
        sum += s[i];
    *mean_sv = sum / (double)k;
    free(u); free(s); free(vt);
}

/* Well-conditioned inputs take the Gram route and must agree with the SVD
 * route within the precision rule's tolerance (f32 route: cond <= ~6,
 * 40 x 25 and 25 x 40 here; f64 route: to rounding, 30 x 30);
 * rank-deficient ones take the SVD route itself. */
START_TEST(polar_routes_agree)
{
    lm_context *ctx = tu_context(1, 0);
    size_t dims[][2] = {{40, 25}, {25, 40}, {30, 30}};
    for (size_t c = 0; c < 3; c++) {
        size_t m = dims[c][0], n = dims[c][1];
        double *a = rand_mat(m, n, 100 + c), *p = malloc(m * n * 8),
               *want = malloc(m * n * 8), mean, want_mean;
        ck_assert_ok(lm__polar_scaled(ctx, a, m, n, p, &mean));
        polar_by_svd(ctx, a, m, n, want, &want_mean);
        double tol = m == n ? 1e-10 : LM_SVD_TOL;
        ck_assert_msg(max_abs_diff(p, want, m * n) < tol, "%zu x %zu: %g", m,
                      n, max_abs_diff(p, want, m * n));
        ck_assert(fabs(mean - want_mean) < tol * want_mean);
        free(a); free(p); free(want);
    }
    /* Rank 3 of 10 columns: no unique polar factor, the SVD route's. */
    size_t m = 20, n = 10;
    double *l = rand_mat(m, 3, 7), *r = rand_mat(3, n, 8), *a = calloc(m * n, 8);
    lm__gemm(false, false, m, n, 3, 1.0, l, r, 0.0, a);
    double *p = malloc(m * n * 8), *want = malloc(m * n * 8), mean, want_mean;
    ck_assert_ok(lm__polar_scaled(ctx, a, m, n, p, &mean));
    polar_by_svd(ctx, a, m, n, want, &want_mean);
    ck_assert(memcmp(p, want, m * n * 8) == 0);
    ck_assert(mean == want_mean);
    a[3] = INFINITY;
    ck_assert_status(lm__polar(ctx, a, m, n, p), LM_ERR_NONFINITE);
    free(l); free(r); free(a); free(p); free(want);
    lm_context_destroy(ctx);
}
END_TEST

struct items {
    int runs[16];
    pthread_t who[16];
    size_t fail_from;
};

static lm_status count_item(void *arg, size_t i)
{
    struct items *it = arg;
    it->runs[i]++;
    it->who[i] = pthread_self();
    return i >= it->fail_from ? LM_ERR_LINALG - (int)(i - it->fail_from)
                              : LM_OK;
}

START_TEST(parallel_loops)
{
    /* Every item once; one thread only uses the caller. */
    lm_context *one = tu_context(1, 0);
    struct items it = {.fail_from = 99};
    ck_assert_ok(lm__parallel_for(one, 16, count_item, &it));
    for (int i = 0; i < 16; i++) {
        ck_assert_int_eq(it.runs[i], 1);
        ck_assert(pthread_equal(it.who[i], pthread_self()));
    }
    lm_context_destroy(one);
    /* Four threads: every item once, the budget returned afterwards, and
     * the status is the first failing item's by index. */
    lm_context *four = tu_context(4, 0);
    memset(&it, 0, sizeof(it));
    it.fail_from = 99;
    ck_assert_ok(lm__parallel_for(four, 16, count_item, &it));
    for (int i = 0; i < 16; i++)
        ck_assert_int_eq(it.runs[i], 1);
    ck_assert_int_eq(atomic_load(&four->busy_threads), 0);
    /* Three of four threads held elsewhere: at most one helper joins. */
    lm__threads_hold(four, 3);
    memset(&it, 0, sizeof(it));
    it.fail_from = 99;
    ck_assert_ok(lm__parallel_for(four, 16, count_item, &it));
    ck_assert_int_eq(atomic_load(&four->busy_threads), 3);
    lm__threads_release(four, 3);
    memset(&it, 0, sizeof(it));
    it.fail_from = 0;
    ck_assert_status(lm__parallel_for(four, 1, count_item, &it), LM_ERR_LINALG);
    ck_assert_ok(lm__parallel_for(four, 0, count_item, &it));
    lm_context_destroy(four);
}
END_TEST

START_TEST(randomized_svd)
{
    lm_context *ctx = tu_context(1, 0);
    size_t m = 120, n = 90, k = 5;
    /* Rank 5 plus tiny noise. */
    double *l = rand_mat(m, k, 1), *rr = rand_mat(k, n, 2), *a = calloc(m * n, 8);
    lm__gemm(false, false, m, n, k, 1.0, l, rr, 0.0, a);
    double *noise = rand_mat(m, n, 3);
    for (size_t i = 0; i < m * n; i++)
        a[i] += 1e-6 * noise[i];
    size_t full = 90;
    double *u = malloc(m * full * 8), *s = malloc(full * 8), *vt = malloc(full * n * 8);
    ck_assert_ok(lm__svd(ctx, a, m, n, u, s, vt));
    double *u1 = malloc(m * k * 8), *s1 = malloc(k * 8), *v1 = malloc(k * n * 8);
    double *u2 = malloc(m * k * 8), *s2 = malloc(k * 8), *v2 = malloc(k * n * 8);
    ck_assert_ok(lm__svd_randomized(ctx, a, m, n, k, 6, 2, 42, u1, s1, v1));
    for (size_t i = 0; i < k; i++)
        ck_assert(fabs(s1[i] - s[i]) <= 1e-6 * s[0]);
    ck_assert_ok(lm__svd_randomized(ctx, a, m, n, k, 6, 2, 42, u2, s2, v2));
    ck_assert_int_eq(memcmp(u1, u2, m * k * 8), 0);
    ck_assert_ok(lm__svd_randomized(ctx, a, m, n, k, 6, 0, 43, u2, s2, v2));
    ck_assert_int_ne(memcmp(s1, s2, k * 8), 0);
    ck_assert_status(lm__svd_randomized(ctx, a, m, n, 200, 6, 2, 1, u2, s2, v2),
                     LM_ERR_OUT_OF_RANGE);
    free(l); free(rr); free(a); free(noise); free(u); free(s); free(vt);
    free(u1); free(s1); free(v1); free(u2); free(s2); free(v2);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(projectors)
{
    lm_context *ctx = tu_context(1, 0);
    lm_tensor *a = tu_random_tensor(ctx, LM_F32, 2, (int64_t[]){16, 10}, 5);
    lm_projector *p = NULL;
    ck_assert_ok(lm_projector_from_tensor(ctx, a, LM_BASIS_LEFT, 4, 0, &p));
    ck_assert_uint_eq(lm_projector_dim(p), 16);
    ck_assert_uint_eq(lm_projector_rank(p), 4);
    ck_assert(lm_projector_energy(p) > 0 && lm_projector_energy(p) < 1);
    float x[2 * 16], px[2 * 16], ppx[2 * 16], cx[2 * 16];
    for (int i = 0; i < 32; i++)
        x[i] = (float)sin(i + 1.0);
    ck_assert_ok(lm_projector_project(p, x, 2, px));
    ck_assert_ok(lm_projector_project(p, px, 2, ppx));
    ck_assert_ok(lm_projector_complement(p, x, 2, cx));
    for (int i = 0; i < 32; i++) {
        ck_assert(fabsf(px[i] - ppx[i]) < 1e-5f);   /* idempotent */
        ck_assert(fabsf(px[i] + cx[i] - x[i]) < 1e-5f); /* splits x */
    }
    double dot = 0;
    for (int i = 0; i < 16; i++)
        dot += (double)px[i] * cx[i];
    ck_assert(fabs(dot) < 1e-5);
    lm_projector_destroy(p);

    /* The energy rule keeps the fewest directions reaching the fraction. */
    ck_assert_ok(lm_projector_from_tensor(ctx, a, LM_BASIS_RIGHT, 0, 0.9, &p));
    const double *sv = lm_projector_values(p);
    ck_assert(lm_projector_energy(p) >= 0.9);
    ck_assert_uint_eq(lm_projector_dim(p), 10);
    size_t r = lm_projector_rank(p);
    double total = 0, kept = 0;
    lm_projector *full = NULL;
    lm_projector_from_tensor(ctx, a, LM_BASIS_RIGHT, 0, 0, &full);
    const double *fv = lm_projector_values(full);
    for (size_t i = 0; i < 10; i++)
        total += fv[i] * fv[i];
    for (size_t i = 0; i + 1 < r; i++)
        kept += sv[i] * sv[i];
    ck_assert(kept / total < 0.9); /* one fewer would not do */
    lm_projector_destroy(p);
    lm_projector_destroy(full);

    ck_assert_status(lm_projector_from_tensor(ctx, a, LM_BASIS_LEFT, 11, 0, &p),
                     LM_ERR_OUT_OF_RANGE);
    ck_assert_status(lm_projector_from_tensor(ctx, a, LM_BASIS_LEFT, 0, 1.5, &p),
                     LM_ERR_OUT_OF_RANGE);
    ck_assert_status(lm_projector_from_tensor(ctx, a, LM_BASIS_EIGEN, 0, 0, &p),
                     LM_ERR_SHAPE);

    /* PCA from stats: eigenvectors of X^T X / n. */
    lm_stats *st = NULL;
    lm_stats_create(ctx, &st);
    float rows[40 * 6];
    for (int i = 0; i < 240; i++)
        rows[i] = (float)((i % 6 == 0 ? 3.0 : 0.1) * cos(i * 0.7));
    lm_stats_observe(st, 0, "fc", rows, 40, 6);
    ck_assert_ok(lm_projector_from_stats(ctx, st, 0, "fc", 1, 0, &p));
    const double *b = lm_projector_basis(p);
    ck_assert(fabs(b[0]) > 0.99); /* the dominant input feature */
    lm_projector_destroy(p);
    ck_assert_status(lm_projector_from_stats(ctx, st, 1, "fc", 1, 0, &p),
                     LM_ERR_NOT_FOUND);
    lm_stats_destroy(st);
    lm_projector_destroy(NULL);
    lm_tensor_destroy(a);
    lm_context_destroy(ctx);
}
END_TEST

/* The message ends with "element <i>", so "element 1" cannot pass for 13. */
static void assert_names_element(lm_context *ctx, const char *what, size_t i)
{
    char want[48];
    snprintf(want, sizeof(want), "at element %zu", i);
    const char *msg = lm_context_error(ctx);
    size_t lm = strlen(msg), lw = strlen(want);
    ck_assert_msg(lm >= lw && strcmp(msg + lm - lw, want) == 0 &&
                      strstr(msg, what),
                  "message '%s' should name %s and end with '%s'", msg, what,
                  want);
}

START_TEST(nonfinite_inputs_are_named)
{
    lm_context *ctx = tu_context(1, 0);
    /* QR: NaN inside, +Inf as the very last element. */
    double *a = rand_mat(20, 6, 11), *q = malloc(20 * 6 * 8);
    a[13] = NAN;
    ck_assert_status(lm__qr_q(ctx, a, 20, 6, q), LM_ERR_NONFINITE);
    assert_names_element(ctx, "QR", 13);
    a[13] = 0.5;
    a[119] = INFINITY;
    ck_assert_status(lm__qr_q(ctx, a, 20, 6, q), LM_ERR_NONFINITE);
    assert_names_element(ctx, "QR", 119);
    free(a); free(q);

    /* Randomized SVD: the range-finder path (k + p < min(m, n)) and the
     * exact path it takes when the probes would cover everything. */
    size_t m = 30, n = 24, k = 3;
    double *b = rand_mat(m, n, 12), *u = malloc(m * k * 8), *s = malloc(k * 8),
           *vt = malloc(k * n * 8);
    b[0] = -INFINITY;
    ck_assert_status(lm__svd_randomized(ctx, b, m, n, k, 4, 1, 5, u, s, vt),
                     LM_ERR_NONFINITE);
    assert_names_element(ctx, "randomized SVD", 0);
    b[0] = 0.25;
    b[m * n - 2] = NAN;
    ck_assert_status(lm__svd_randomized(ctx, b, m, n, k, 40, 1, 5, u, s, vt),
                     LM_ERR_NONFINITE);
    assert_names_element(ctx, "randomized SVD", m * n - 2);
    free(b); free(u); free(s); free(vt);

    /* Cholesky of an SPD matrix with one entry spoiled. */
    size_t d = 5;
    double *r = rand_mat(d, d, 13), *spd = calloc(d * d, 8), *l = malloc(d * d * 8);
    lm__gemm(true, false, d, d, d, 1.0, r, r, 0.0, spd);
    ck_assert_ok(lm__cholesky(ctx, spd, d, 1e-3, l));
    spd[7] = NAN;
    ck_assert_status(lm__cholesky(ctx, spd, d, 1e-3, l), LM_ERR_NONFINITE);
    assert_names_element(ctx, "Cholesky", 7);
    spd[7] = spd[11];
    spd[24] = INFINITY;
    ck_assert_status(lm__cholesky(ctx, spd, d, 0.0, l), LM_ERR_NONFINITE);
    assert_names_element(ctx, "Cholesky", 24);
    spd[24] = spd[18];
    ck_assert_status(lm__cholesky(ctx, spd, d, NAN, l), LM_ERR_NONFINITE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "ridge"));
    free(r); free(spd); free(l);
    lm_context_destroy(ctx);
}
END_TEST

/* |Q Q^T A - A| (Frobenius) for Q (m x k). */
static double span_residual(const double *q, const double *a, size_t m,
                            size_t k, size_t n)
{
    double *c = calloc(k * n, 8), *qc = calloc(m * n, 8), sum = 0;
    lm__gemm(true, false, k, n, m, 1.0, q, a, 0.0, c);
    lm__gemm(false, false, m, n, k, 1.0, q, c, 0.0, qc);
    for (size_t i = 0; i < m * n; i++)
        sum += (qc[i] - a[i]) * (qc[i] - a[i]);
    free(c); free(qc);
    return sqrt(sum);
}

START_TEST(qr_spans_columns)
{
    lm_context *ctx = tu_context(1, 0);
    double *a = rand_mat(20, 6, 21), *q = malloc(20 * 6 * 8);
    ck_assert_ok(lm__qr_q(ctx, a, 20, 6, q));
    ck_assert(orthonormality(q, 20, 6) < 1e-12);
    double res = span_residual(q, a, 20, 6, 6);
    ck_assert_msg(res < 1e-12, "|Q Q^T A - A| = %g", res);
    /* Wide: Q (6 x 6) spans all of R^6. */
    double *w = rand_mat(6, 20, 22), *qw = malloc(6 * 6 * 8);
    ck_assert_ok(lm__qr_q(ctx, w, 6, 20, qw));
    ck_assert(orthonormality(qw, 6, 6) < 1e-12);
    res = span_residual(qw, w, 6, 6, 20);
    ck_assert_msg(res < 1e-12, "wide: |Q Q^T A - A| = %g", res);
    free(a); free(q); free(w); free(qw);
    lm_context_destroy(ctx);
}
END_TEST

/* H = I - (2/d) 1 1^T: symmetric, orthogonal, entries exact in f32 for
 * d = 8 (0.75 on the diagonal, -0.25 elsewhere). */
#define EIG_D 8
static double householder(size_t i, size_t j)
{
    return (i == j ? 1.0 : 0.0) - 2.0 / EIG_D;
}

/* Column j of `basis` (dim x rank) equals +-want (length dim). */
static double col_diff_up_to_sign(const double *basis, size_t dim,
                                  size_t rank, size_t j, const double *want)
{
    double plus = 0, minus = 0;
    for (size_t i = 0; i < dim; i++) {
        plus = fmax(plus, fabs(basis[i * rank + j] - want[i]));
        minus = fmax(minus, fabs(basis[i * rank + j] + want[i]));
    }
    return fmin(plus, minus);
}

/* A = H diag(d) H with distinct d (one negative), stored exactly in f32:
 * its eigenvectors are H's columns, its eigenvalues d. */
START_TEST(projector_eigenbasis)
{
    lm_context *ctx = tu_context(1, 0);
    const double d[EIG_D] = {3, 10, -1, 5, 1, 7, 0.5, 2};
    /* Eigenvalues descending and the column of H each belongs to. */
    const double sorted[EIG_D] = {10, 7, 5, 3, 2, 1, 0.5, -1};
    const size_t col_of[EIG_D] = {1, 5, 3, 0, 7, 4, 6, 2};
    const double total = 28.5; /* the positive eigenvalues */
    lm_tensor *a = NULL;
    ck_assert_ok(lm_tensor_create(ctx, LM_F32, 2,
                                  (int64_t[]){EIG_D, EIG_D}, &a));
    float *af = lm_tensor_data(a);
    for (size_t i = 0; i < EIG_D; i++)
        for (size_t j = 0; j < EIG_D; j++) {
            double x = 0;
            for (size_t t = 0; t < EIG_D; t++)
                x += householder(i, t) * d[t] * householder(t, j);
            af[i * EIG_D + j] = (float)x;
            ck_assert((double)af[i * EIG_D + j] == x); /* exact */
        }

    /* All directions. */
    lm_projector *p = NULL;
    ck_assert_ok(lm_projector_from_tensor(ctx, a, LM_BASIS_EIGEN, 0, 0, &p));
    ck_assert_uint_eq(lm_projector_dim(p), EIG_D);
    ck_assert_uint_eq(lm_projector_rank(p), EIG_D);
    ck_assert(fabs(lm_projector_energy(p) - 1.0) < 1e-12);
    const double *b = lm_projector_basis(p), *vals = lm_projector_values(p);
    for (size_t j = 0; j < EIG_D; j++) {
        double h[EIG_D];
        for (size_t i = 0; i < EIG_D; i++)
            h[i] = householder(i, col_of[j]);
        ck_assert_msg(fabs(vals[j] - sorted[j]) < 1e-12, "value %zu: %g", j,
                      vals[j]);
        ck_assert_msg(col_diff_up_to_sign(b, EIG_D, EIG_D, j, h) < 1e-12,
                      "eigenvector %zu", j);
    }
    ck_assert(orthonormality(b, EIG_D, EIG_D) < 1e-12);
    lm_projector_destroy(p);

    /* A fixed rank: the top 3 and their share of the energy. */
    ck_assert_ok(lm_projector_from_tensor(ctx, a, LM_BASIS_EIGEN, 3, 0, &p));
    ck_assert_uint_eq(lm_projector_rank(p), 3);
    ck_assert(fabs(lm_projector_energy(p) - 22.0 / total) < 1e-12);
    b = lm_projector_basis(p);
    for (size_t j = 0; j < 3; j++) {
        double h[EIG_D];
        for (size_t i = 0; i < EIG_D; i++)
            h[i] = householder(i, col_of[j]);
        ck_assert(col_diff_up_to_sign(b, EIG_D, 3, j, h) < 1e-12);
    }
    lm_projector_destroy(p);

    /* Energy thresholds: the smallest rank whose cumulative positive
     * eigenvalues reach the fraction (10, 17, 22, 25, 27, 28, 28.5, 28.5). */
    struct { double energy; size_t rank; double kept; } cases[] = {
        {0.30, 1, 10},          {0.36, 2, 17},
        {0.75, 3, 22},          {22.0 / 28.5, 3, 22}, /* reached exactly */
        {22.0 / 28.5 + 1e-6, 4, 25}, {0.99, 7, 28.5},
        {1.0, 7, 28.5}, /* the negative eigenvalue adds no energy */
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        ck_assert_ok(lm_projector_from_tensor(ctx, a, LM_BASIS_EIGEN, 0,
                                              cases[c].energy, &p));
        ck_assert_msg(lm_projector_rank(p) == cases[c].rank,
                      "energy %.9g: rank %zu, want %zu", cases[c].energy,
                      lm_projector_rank(p), cases[c].rank);
        ck_assert(fabs(lm_projector_energy(p) - cases[c].kept / total) <
                  1e-12);
        ck_assert(lm_projector_energy(p) >= cases[c].energy * (1 - 1e-12));
        vals = lm_projector_values(p);
        ck_assert(fabs(vals[cases[c].rank - 1] - sorted[cases[c].rank - 1]) <
                  1e-12);
        lm_projector_destroy(p);
    }

    /* Not symmetric; not finite. */
    af[1] += 1.0f;
    p = NULL;
    ck_assert_status(lm_projector_from_tensor(ctx, a, LM_BASIS_EIGEN, 0, 0, &p),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_null(p);
    af[1] -= 1.0f;
    af[9] = NAN;
    ck_assert_status(lm_projector_from_tensor(ctx, a, LM_BASIS_EIGEN, 0, 0, &p),
                     LM_ERR_NONFINITE);
    ck_assert_ptr_null(p);
    lm_tensor_destroy(a);
    lm_context_destroy(ctx);
}
END_TEST

/* Rows c_t h_t (h_t the columns of H above, orthonormal): X^T X / n has
 * eigenvalues c_t^2 / n and eigenvectors h_t. */
START_TEST(projector_stats_energy)
{
    lm_context *ctx = tu_context(1, 0);
    const double c[EIG_D] = {1, 3, 0.25, 5, 1.5, 0.5, 4, 2};
    const double c2[EIG_D] = {25, 16, 9, 4, 2.25, 1, 0.25, 0.0625};
    const size_t col_of[EIG_D] = {3, 6, 1, 7, 4, 0, 5, 2};
    const double total = 57.5625;
    float rows[EIG_D * EIG_D];
    for (size_t t = 0; t < EIG_D; t++)
        for (size_t i = 0; i < EIG_D; i++)
            rows[t * EIG_D + i] = (float)(c[t] * householder(i, t));
    lm_stats *st = NULL;
    ck_assert_ok(lm_stats_create(ctx, &st));
    ck_assert_ok(lm_stats_observe(st, 0, "fc", rows, EIG_D, EIG_D));

    /* Cumulative 25, 41, 50, 54, 56.25, 57.25, 57.5, 57.5625. */
    struct { double energy; size_t rank; double kept; } cases[] = {
        {0.40, 1, 25}, {0.5, 2, 41}, {0.9, 4, 54},
        {50 / 57.5625, 3, 50}, /* reached exactly */
        {50 / 57.5625 + 1e-6, 4, 54}, {0.998, 7, 57.5}, {1.0, 8, total},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        lm_projector *p = NULL;
        ck_assert_ok(lm_projector_from_stats(ctx, st, 0, "fc", 0,
                                             cases[k].energy, &p));
        size_t r = lm_projector_rank(p);
        ck_assert_msg(r == cases[k].rank, "energy %.9g: rank %zu, want %zu",
                      cases[k].energy, r, cases[k].rank);
        ck_assert_uint_eq(lm_projector_dim(p), EIG_D);
        ck_assert(fabs(lm_projector_energy(p) - cases[k].kept / total) < 1e-12);
        const double *vals = lm_projector_values(p), *b = lm_projector_basis(p);
        for (size_t j = 0; j < r; j++) {
            double h[EIG_D];
            for (size_t i = 0; i < EIG_D; i++)
                h[i] = householder(i, col_of[j]);
            ck_assert(fabs(vals[j] - c2[j] / EIG_D) < 1e-12);
            ck_assert(col_diff_up_to_sign(b, EIG_D, r, j, h) < 1e-12);
        }
        lm_projector_destroy(p);
    }
    lm_projector *p = NULL;
    ck_assert_status(lm_projector_from_stats(ctx, st, 0, "fc", 0, 1.5, &p),
                     LM_ERR_OUT_OF_RANGE);
    ck_assert_status(lm_projector_from_stats(ctx, st, 0, "fc", EIG_D + 1, 0, &p),
                     LM_ERR_OUT_OF_RANGE);
    ck_assert_ptr_null(p);
    lm_stats_destroy(st);
    lm_context_destroy(ctx);
}
END_TEST

/* A (m x n) = L diag(s) R^T with orthonormal L, R from QR. */
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

START_TEST(randomized_svd_seeds)
{
    lm_context *ctx = tu_context(1, 0), *ctx4 = tu_context(4, 0);
    size_t m = 48, n = 40, k = 4, p = 4;
    double spec[40];
    const double top[4] = {10, 6, 4, 3};
    for (size_t i = 0; i < 40; i++)
        spec[i] = i < 4 ? top[i] : 1.0; /* a flat tail */
    double *a = with_spectrum(ctx, m, n, spec, 31);
    double *u[3], *s[3], *vt[3];
    for (int i = 0; i < 3; i++) {
        u[i] = malloc(m * k * 8);
        s[i] = malloc(k * 8);
        vt[i] = malloc(k * n * 8);
    }
    ck_assert_ok(lm__svd_randomized(ctx, a, m, n, k, p, 1, 7, u[0], s[0], vt[0]));
    /* Same seed, another context with more threads: bit-identical. */
    ck_assert_ok(lm__svd_randomized(ctx4, a, m, n, k, p, 1, 7, u[1], s[1], vt[1]));
    ck_assert_int_eq(memcmp(u[0], u[1], m * k * 8), 0);
    ck_assert_int_eq(memcmp(s[0], s[1], k * 8), 0);
    ck_assert_int_eq(memcmp(vt[0], vt[1], k * n * 8), 0);
    /* Another seed: other probes, so the flat tail leaks in differently. */
    ck_assert_ok(lm__svd_randomized(ctx, a, m, n, k, p, 1, 8, u[2], s[2], vt[2]));
    ck_assert_int_ne(memcmp(s[0], s[2], k * 8), 0);
    ck_assert_int_ne(memcmp(u[0], u[2], m * k * 8), 0);
    ck_assert_int_ne(memcmp(vt[0], vt[2], k * n * 8), 0);
    /* ... but only slightly: both near the exact values, signs canonical
     * (the same directions, not sign-flipped ones). */
    double worst_s = 0;
    for (size_t i = 0; i < k; i++)
        for (int r = 0; r < 3; r += 2) {
            worst_s = fmax(worst_s, fabs(s[r][i] - top[i]));
            ck_assert(s[r][i] <= top[i] * (1 + 1e-12)); /* Rayleigh-Ritz */
        }
    double du = max_abs_diff(u[0], u[2], m * k);
    ck_assert_msg(worst_s < 2e-2 * top[0] && du < 0.2, "s off by %g, u by %g",
                  worst_s, du);
    ck_assert(orthonormality(u[2], m, k) < 1e-12);

    /* When k + oversample covers min(m, n) the exact SVD is used: the seed
     * does not matter and the result is lm__svd's, truncated. */
    size_t full = 40;
    double *fu = malloc(m * full * 8), *fs = malloc(full * 8),
           *fvt = malloc(full * n * 8);
    ck_assert_ok(lm__svd(ctx, a, m, n, fu, fs, fvt));
    ck_assert_ok(lm__svd_randomized(ctx, a, m, n, k, 36, 1, 1, u[0], s[0], vt[0]));
    ck_assert_ok(lm__svd_randomized(ctx, a, m, n, k, 36, 1, 2, u[1], s[1], vt[1]));
    ck_assert_int_eq(memcmp(u[0], u[1], m * k * 8), 0);
    ck_assert_int_eq(memcmp(s[0], fs, k * 8), 0);
    ck_assert_int_eq(memcmp(vt[0], fvt, k * n * 8), 0);
    for (size_t i = 0; i < m; i++)
        ck_assert_int_eq(memcmp(u[0] + i * k, fu + i * full, k * 8), 0);
    free(fu); free(fs); free(fvt);
    for (int i = 0; i < 3; i++) {
        free(u[i]); free(s[i]); free(vt[i]);
    }
    free(a);
    lm_context_destroy(ctx);
    lm_context_destroy(ctx4);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("linalg");
    TCase *tc = tcase_create("linalg");
    tcase_add_test(tc, svd_reconstructs);
    tcase_add_test(tc, failures_are_reported);
    tcase_add_test(tc, eigh_cholesky_qr_polar);
    tcase_add_test(tc, randomized_svd);
    tcase_add_test(tc, polar_routes_agree);
    tcase_add_test(tc, parallel_loops);
    tcase_add_test(tc, projectors);
    tcase_add_test(tc, nonfinite_inputs_are_named);
    tcase_add_test(tc, qr_spans_columns);
    tcase_add_test(tc, projector_eigenbasis);
    tcase_add_test(tc, projector_stats_energy);
    tcase_add_test(tc, randomized_svd_seeds);
    tcase_add_test(tc, lapack_integer_limits);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
