/* The LAPACK layer and projectors: reconstructions, orthonormality,
 * failure paths, determinism. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "libmerge/projector.h"
#include "core/internal.h"
#include "linalg/linalg.h"
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
    ck_assert(orthonormality(p, 20, 6) < 1e-12);
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
 * route to rounding; rank-deficient ones take the SVD route itself. */
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
        ck_assert_msg(max_abs_diff(p, want, m * n) < 1e-10, "%zu x %zu: %g", m,
                      n, max_abs_diff(p, want, m * n));
        ck_assert(fabs(mean - want_mean) < 1e-12 * want_mean);
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
    suite_add_tcase(s, tc);
    return tu_run(s);
}
