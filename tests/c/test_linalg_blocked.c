/* One factorization spread over threads (blocked.c, eigh_split.c): the
 * blocked gemm and Gram products against plain triple loops, the split
 * eigendecomposition against its definition (G Z = Z diag(w), Z
 * orthonormal) and LAPACK's own syevd eigenvalues, and the same bytes for
 * 1, 2 and 8 threads, on odd sizes that leave partial blocks. Run under
 * ASan/UBSan in CI. */
#include <float.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "linalg/linalg.h"
#include "testutil.h"

static const int THREADS[] = {1, 2, 8};

static double *gauss(size_t n, uint64_t seed)
{
    double *a = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++)
        a[i] = lm__gaussian(seed, i);
    return a;
}

/* op(X)[i][j] of a row-major matrix with `cols` columns. */
static double at(const double *x, bool t, size_t cols, size_t i, size_t j)
{
    return t ? x[j * cols + i] : x[i * cols + j];
}

START_TEST(gemm_blocked_matches_loops_and_threads)
{
    /* m spans one partial block, several with a partial tail, exact
     * blocks; every transpose combination; beta != 0 keeps C's input. */
    static const size_t shapes[][3] = {{1, 7, 5}, {63, 9, 17}, {64, 3, 4},
                                       {130, 33, 70}, {257, 5, 300}};
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
        for (int tr = 0; tr < 4; tr++) {
            size_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
            bool ta = tr & 1, tb = tr & 2;
            double *a = gauss(m * k, 1 + s), *b = gauss(k * n, 20 + s);
            double *c0 = gauss(m * n, 40 + s), *want = malloc(m * n * 8);
            for (size_t i = 0; i < m; i++)
                for (size_t j = 0; j < n; j++) {
                    double acc = 0;
                    for (size_t l = 0; l < k; l++)
                        acc += at(a, ta, ta ? m : k, i, l) *
                               at(b, tb, tb ? k : n, l, j);
                    want[i * n + j] = 0.5 * acc - 2.0 * c0[i * n + j];
                }
            double *first = NULL;
            for (size_t t = 0; t < 3; t++) {
                lm_context *ctx = tu_context(THREADS[t], 0);
                double *c = malloc(m * n * 8);
                memcpy(c, c0, m * n * 8);
                ck_assert_ok(lm__gemm_blocked(ctx, ta, tb, m, n, k, 0.5, a, b,
                                              -2.0, c));
                for (size_t i = 0; i < m * n; i++)
                    tu_check(fabs(c[i] - want[i]) <=
                                 1e-12 * (1 + fabs(want[i])) * (double)k,
                             "product element %zu: %g, wanted %g", i, c[i],
                             want[i]);
                if (!first)
                    first = c;
                else {
                    ck_assert(memcmp(first, c, m * n * 8) == 0);
                    free(c);
                }
                lm_context_destroy(ctx);
            }
            free(first); free(a); free(b); free(c0); free(want);
        }
}
END_TEST

/* lm__gemm_blocked_f32: each element (float)(scale * lm__gemm_blocked's
 * product with alpha 1), the same bytes for 1, 2 and 8 threads, on row
 * counts with partial and several blocks. */
START_TEST(gemm_blocked_f32_matches_blocked)
{
    static const size_t shapes[][3] = {{1, 7, 5}, {63, 9, 17}, {130, 33, 70},
                                       {257, 5, 300}};
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
        for (int tr = 0; tr < 4; tr++) {
            size_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
            bool ta = tr & 1, tb = tr & 2;
            double *a = gauss(m * k, 101 + s), *b = gauss(k * n, 120 + s);
            double *c = malloc(m * n * 8);
            lm_context *one = tu_context(1, 0);
            ck_assert_ok(lm__gemm_blocked(one, ta, tb, m, n, k, 1.0, a, b, 0.0,
                                          c));
            lm_context_destroy(one);
            for (size_t t = 0; t < 3; t++) {
                lm_context *ctx = tu_context(THREADS[t], 0);
                float *out = malloc(m * n * sizeof(float));
                ck_assert_ok(lm__gemm_blocked_f32(ctx, ta, tb, m, n, k, a, b,
                                                  -0.3, out));
                for (size_t i = 0; i < m * n; i++)
                    tu_check(out[i] == (float)(c[i] * -0.3),
                             "shape %zu op %d threads %d: element %zu %.9g, "
                             "wanted %.9g", s, tr, THREADS[t], i,
                             (double)out[i], (double)(float)(c[i] * -0.3));
                free(out);
                lm_context_destroy(ctx);
            }
            free(a); free(b); free(c);
        }
}
END_TEST

START_TEST(gram_matches_loops_and_threads)
{
    /* Wide and tall, d from 1 to past two 64-row blocks. */
    static const size_t shapes[][2] = {{1, 5}, {5, 1}, {63, 80}, {80, 63},
                                       {130, 131}, {301, 129}, {129, 301}};
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        size_t m = shapes[s][0], n = shapes[s][1];
        bool wide = m <= n;
        size_t d = wide ? m : n, o = wide ? n : m;
        double *a = gauss(m * n, 60 + s);
        float *af = malloc(m * n * sizeof(float));
        for (size_t i = 0; i < m * n; i++)
            af[i] = (float)a[i];
        double *first = NULL;
        float *first_f = NULL;
        for (size_t t = 0; t < 3; t++) {
            lm_context *ctx = tu_context(THREADS[t], 0);
            double *g = calloc(d * d, 8);
            float *gf = calloc(d * d, sizeof(float));
            ck_assert_ok(lm__gram_upper_f64(ctx, a, m, n, g));
            ck_assert_ok(lm__gram_upper_f32(ctx, af, m, n, gf));
            for (size_t i = 0; i < d; i++)
                for (size_t j = i; j < d; j++) {
                    /* Reference sums in f64 (the f32 products are exact
                     * there); bound: o u sum |x y| (dot-product error). */
                    double acc = 0, accf = 0, mag = 0, magf = 0;
                    for (size_t l = 0; l < o; l++) {
                        double x = wide ? a[i * n + l] : a[l * n + i];
                        double y = wide ? a[j * n + l] : a[l * n + j];
                        acc += x * y;
                        mag += fabs(x * y);
                        double xf = wide ? af[i * n + l] : af[l * n + i];
                        double yf = wide ? af[j * n + l] : af[l * n + j];
                        accf += xf * yf;
                        magf += fabs(xf * yf);
                    }
                    tu_check(fabs(g[i * d + j] - acc) <=
                                 (double)o * DBL_EPSILON * mag,
                             "f64 Gram [%zu, %zu]: %g, wanted %g", i, j,
                             g[i * d + j], acc);
                    tu_check(fabs(gf[i * d + j] - accf) <=
                                 (double)o * FLT_EPSILON * magf,
                             "f32 Gram [%zu, %zu]: %g, wanted %g", i, j,
                             (double)gf[i * d + j], accf);
                }
            if (!first) {
                first = g;
                first_f = gf;
            } else {
                /* Only the upper triangle is specified. */
                for (size_t i = 0; i < d; i++) {
                    tu_check(memcmp(first + i * d + i, g + i * d + i,
                                    (d - i) * 8) == 0,
                             "f64 Gram row %zu differs across threads", i);
                    tu_check(memcmp(first_f + i * d + i, gf + i * d + i,
                                    (d - i) * sizeof(float)) == 0,
                             "f32 Gram row %zu differs across threads", i);
                }
                free(g); free(gf);
            }
            lm_context_destroy(ctx);
        }
        free(first); free(first_f); free(a); free(af);
    }
}
END_TEST

/* G = A A^T (n x n, col-major lower = full here) of a Gaussian A. */
static double *gram_of_gaussian(size_t n, size_t other, uint64_t seed)
{
    double *a = gauss(n * other, seed), *g = malloc(n * n * 8);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            double acc = 0;
            for (size_t l = 0; l < other; l++)
                acc += a[i * other + l] * a[j * other + l];
            g[i * n + j] = acc;
        }
    free(a);
    return g;
}

/* max |G z_j - w_j z_j| / w_max and max |Z^T Z - I| in f64. */
static void eig_errors(const double *g, const double *z, const double *w,
                       size_t n, double *resid, double *orth)
{
    *resid = 0;
    *orth = 0;
    for (size_t j = 0; j < n; j++) {
        for (size_t i = 0; i < n; i++) {
            double acc = 0;
            for (size_t l = 0; l < n; l++)
                acc += g[i * n + l] * z[j * n + l];
            *resid = fmax(*resid, fabs(acc - w[j] * z[j * n + i]));
        }
        for (size_t k = j; k < n; k++) {
            double dot = 0;
            for (size_t l = 0; l < n; l++)
                dot += z[j * n + l] * z[k * n + l];
            *orth = fmax(*orth, fabs(dot - (j == k)));
        }
    }
    *resid /= fabs(w[n - 1]);
}

static void check_split(size_t n, bool single)
{
    double *g = gram_of_gaussian(n, n + 17, 90 + n);
    /* LAPACK's syevd eigenvalues: the split route must agree. */
    double *ga = malloc(n * n * 8), *wa = malloc(n * 8);
    memcpy(ga, g, n * n * 8);
    ck_assert_int_eq(LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'N', 'L', (lapack_int)n,
                                    ga, (lapack_int)n, wa), 0);
    size_t es = single ? sizeof(float) : sizeof(double);
    void *first = NULL;
    for (size_t t = 0; t < 3; t++) {
        lm_context *ctx = tu_context(THREADS[t], 0);
        void *z = malloc(n * n * es), *w = malloc(n * es);
        for (size_t i = 0; i < n * n; i++) {
            if (single)
                ((float *)z)[i] = (float)g[i];
            else
                ((double *)z)[i] = g[i];
        }
        int info = -1;
        bool used = false;
        ck_assert_ok(lm__eigh_split(ctx, single, z, n, w, &info, &used));
        ck_assert(used);
        ck_assert_int_eq(info, 0);
        double *zd = malloc(n * n * 8), *wd = malloc(n * 8);
        for (size_t i = 0; i < n * n; i++)
            zd[i] = single ? ((float *)z)[i] : ((double *)z)[i];
        for (size_t i = 0; i < n; i++)
            wd[i] = single ? ((float *)w)[i] : ((double *)w)[i];
        double resid, orth, tol = single ? 1e-4 : 1e-12;
        eig_errors(g, zd, wd, n, &resid, &orth);
        ck_assert_msg(resid < tol && orth < tol, "n %zu single %d: resid "
                      "%g orth %g", n, single, resid, orth);
        for (size_t i = 0; i < n; i++)
            tu_check(fabs(wd[i] - wa[i]) <= tol * wa[n - 1],
                     "eigenvalue %zu: %g, wanted %g", i, wd[i], wa[i]);
        if (!first)
            first = z;
        else {
            ck_assert(memcmp(first, z, n * n * es) == 0);
            free(z);
        }
        free(w); free(zd); free(wd);
        lm_context_destroy(ctx);
    }
    free(first); free(g); free(ga); free(wa);
}

START_TEST(eigh_split_is_an_eigendecomposition)
{
    /* The smallest split size, and sizes leaving partial column blocks
     * (128) and a partial reflector block (64). */
    check_split(LM_EIGH_SPLIT_MIN, false);
    check_split(301, false);
    check_split(301, true);
}
END_TEST

START_TEST(eigh_split_leaves_small_and_extreme_to_syevd)
{
    lm_context *ctx = tu_context(2, 0);
    size_t n = LM_EIGH_SPLIT_MIN;
    double *g = gram_of_gaussian(n, n, 5), *w = malloc(n * 8);
    int info = 7;
    bool used = true;
    ck_assert_ok(lm__eigh_split(ctx, false, g, n - 1, w, &info, &used));
    ck_assert(!used);
    /* Entries near overflow: syevd rescales, so it must run instead. */
    for (size_t i = 0; i < n * n; i++)
        g[i] *= 1e300;
    ck_assert_ok(lm__eigh_split(ctx, false, g, n, w, &info, &used));
    ck_assert(!used);
    g[0] = NAN;
    ck_assert_ok(lm__eigh_split(ctx, false, g, n, w, &info, &used));
    ck_assert(!used);
    float *gf = malloc(n * n * sizeof(float)), *wf = malloc(n * sizeof(float));
    for (size_t i = 0; i < n * n; i++)
        gf[i] = 1e-30f; /* below f32's rmin */
    ck_assert_ok(lm__eigh_split(ctx, true, gf, n, wf, &info, &used));
    ck_assert(!used);
    free(g); free(w); free(gf); free(wf);
    lm_context_destroy(ctx);
}
END_TEST

/* The routes that use these: the polar factor (f64 on a square sum of
 * Gaussians, cond ~ 10^3; f32 on a 4:1 tall one, cond ~ 3) is the same
 * bytes on 1, 2 and 8 threads and orthonormal. */
START_TEST(polar_same_bytes_for_any_thread_count)
{
    static const size_t shapes[][2] = {{300, 300}, {1031, 263}, {263, 1031}};
    for (size_t s = 0; s < 3; s++) {
        size_t m = shapes[s][0], n = shapes[s][1], k = m < n ? m : n;
        double *a = gauss(m * n, 120 + s), *first = NULL;
        double mean0 = 0;
        for (size_t t = 0; t < 3; t++) {
            lm_context *ctx = tu_context(THREADS[t], 0);
            double *p = malloc(m * n * 8), mean = 0;
            ck_assert_ok(lm__polar_scaled(ctx, a, m, n, p, &mean));
            if (!first) {
                first = p;
                mean0 = mean;
                /* P^T P = I (tall) or P P^T = I (wide), to 1e-5. */
                double *pp = malloc(k * k * 8);
                lm__gemm(m >= n, m < n, k, k, m >= n ? m : n, 1.0, p, p, 0.0,
                         pp);
                for (size_t i = 0; i < k; i++)
                    for (size_t j = 0; j < k; j++)
                        tu_check(fabs(pp[i * k + j] - (i == j)) < 1e-5,
                                 "P^T P [%zu, %zu] = %g", i, j,
                                 pp[i * k + j]);
                free(pp);
            } else {
                ck_assert(memcmp(first, p, m * n * 8) == 0);
                ck_assert(mean == mean0);
                free(p);
            }
            lm_context_destroy(ctx);
        }
        free(first); free(a);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("linalg_blocked");
    TCase *tc = tcase_create("blocked");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, gemm_blocked_matches_loops_and_threads);
    tcase_add_test(tc, gemm_blocked_f32_matches_blocked);
    tcase_add_test(tc, gram_matches_loops_and_threads);
    tcase_add_test(tc, eigh_split_is_an_eigendecomposition);
    tcase_add_test(tc, eigh_split_leaves_small_and_extreme_to_syevd);
    tcase_add_test(tc, polar_same_bytes_for_any_thread_count);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
