/* Row splits carried by a stats object (lm_stats_set_split): which rows go
 * where, merging, companion files, errors. The same numbers as the Python
 * bindings' split of 0.1 are checked in tests/python/test_policy_reference.py. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

#define D 3

/* X^T X of the rows of x (n x D) whose index i satisfies pick(i). */
static void gram_of(const float *x, size_t n, size_t every, int held,
                    double *g, uint64_t *count)
{
    memset(g, 0, D * D * sizeof(double));
    *count = 0;
    for (size_t i = 0; i < n; i++) {
        if ((int)(i % every == every - 1) != held)
            continue;
        ++*count;
        for (size_t a = 0; a < D; a++)
            for (size_t b = 0; b < D; b++)
                g[a * D + b] += (double)x[i * D + a] * x[i * D + b];
    }
}

static void rows(float *x, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n * D; i++)
        x[i] = (float)((i * 37 + seed * 11) % 17) / 8.0f - 1.0f;
}

static lm_stats *split_stats(lm_context *ctx, double fraction, size_t folds)
{
    lm_stats *s = NULL;
    lm_stats_split_options o;
    lm_stats_split_options_init(&o);
    o.heldout_fraction = fraction;
    o.folds = folds;
    ck_assert_ok(lm_stats_create(ctx, &s));
    ck_assert_ok(lm_stats_set_split(s, &o));
    return s;
}

static void assert_gram(const lm_stats *s, const char *name, const double *want,
                        uint64_t want_n)
{
    const double *g;
    size_t d;
    uint64_t n;
    ck_assert_ok(lm_stats_find(s, 0, name, &g, &d, &n));
    ck_assert_uint_eq(n, want_n);
    for (size_t i = 0; i < D * D; i++)
        ck_assert_double_eq_tol(g[i], want[i], 1e-9);
}

START_TEST(heldout_rows_per_call)
{
    lm_context *ctx = tu_context(1, 0);
    /* 0.4: 1 / 0.4 = 2.5 rounds to 2 (half to even), so rows 1, 3, ... */
    lm_stats *s = split_stats(ctx, 0.4, 0);
    ck_assert_ptr_nonnull(lm_stats_heldout(s));
    ck_assert_uint_eq(lm_stats_fold_count(s), 0);
    float x[7 * D];
    rows(x, 7, 1);
    ck_assert_ok(lm_stats_observe(s, 0, "w", x, 7, D));
    double g[D * D];
    uint64_t n;
    gram_of(x, 7, 2, 1, g, &n);
    assert_gram(lm_stats_heldout(s), "w", g, 3);
    gram_of(x, 7, 2, 0, g, &n);
    assert_gram(s, "w", g, 4);
    /* 0.9 -> k = 1: every row is held out, the stats itself gets no key. */
    lm_stats *all = split_stats(ctx, 0.9, 0);
    ck_assert_ok(lm_stats_observe(all, 0, "w", x, 7, D));
    ck_assert_uint_eq(lm_stats_count(all), 0);
    ck_assert_uint_eq(lm_stats_count(lm_stats_heldout(all)), 1);
    /* A bad row changes nothing. */
    x[5 * D] = INFINITY;
    ck_assert_status(lm_stats_observe(s, 0, "w", x, 7, D), LM_ERR_NONFINITE);
    const double *h;
    size_t d;
    uint64_t held;
    ck_assert_ok(lm_stats_find(lm_stats_heldout(s), 0, "w", &h, &d, &held));
    ck_assert_uint_eq(held, 3);
    lm_stats_destroy(all);
    lm_stats_destroy(s);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(folds_keep_every_row)
{
    lm_context *ctx = tu_context(1, 0);
    lm_stats *s = split_stats(ctx, 0, 3);
    ck_assert_ptr_null(lm_stats_heldout(s));
    ck_assert_uint_eq(lm_stats_fold_count(s), 3);
    ck_assert_ptr_null(lm_stats_fold_at(s, 3));
    float x[10 * D];
    rows(x, 10, 2);
    ck_assert_ok(lm_stats_observe(s, 0, "w", x, 4, D));
    ck_assert_ok(lm_stats_observe(s, 0, "w", x + 4 * D, 6, D));
    double g[D * D];
    uint64_t n;
    gram_of(x, 10, 1, 1, g, &n);
    assert_gram(s, "w", g, 10);
    for (size_t k = 0; k < 3; k++) {
        const double *fg;
        size_t d;
        uint64_t fn;
        ck_assert_ok(lm_stats_find(lm_stats_fold_at(s, k), 0, "w", &fg, &d, &fn));
        ck_assert_uint_eq(fn, k == 0 ? 4 : 3); /* rows k, k + 3, ... */
    }
    lm_stats_destroy(s);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(merge_save_load)
{
    lm_context *ctx = tu_context(1, 0);
    lm_stats *a = split_stats(ctx, 0, 2), *b = split_stats(ctx, 0, 2);
    lm_stats *h = split_stats(ctx, 0.5, 0), *plain = NULL;
    ck_assert_ok(lm_stats_create(ctx, &plain));
    float x[8 * D];
    rows(x, 8, 3);
    ck_assert_ok(lm_stats_observe(a, 0, "w", x, 4, D));
    ck_assert_ok(lm_stats_observe(b, 0, "w", x + 4 * D, 4, D));
    ck_assert_ok(lm_stats_observe(h, 0, "w", x, 8, D));
    ck_assert_ok(lm_stats_merge(a, b));
    ck_assert_status(lm_stats_merge(a, h), LM_ERR_INVALID_ARGUMENT);
    ck_assert_status(lm_stats_merge(plain, a), LM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "split their rows differently"));
    char dir[] = "/tmp/lm_split_XXXXXX", path[128], hpath[128];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/a.lmstats", dir);
    snprintf(hpath, sizeof(hpath), "%s/h.lmstats", dir);
    ck_assert_ok(lm_stats_save(a, path));
    ck_assert_ok(lm_stats_save(h, hpath));
    lm_stats *la = NULL, *lh = NULL;
    ck_assert_ok(lm_stats_load(ctx, path, &la));
    ck_assert_ok(lm_stats_load(ctx, hpath, &lh));
    ck_assert_uint_eq(lm_stats_fold_count(la), 2);
    ck_assert_ptr_nonnull(lm_stats_heldout(lh));
    for (size_t k = 0; k < 2; k++) {
        const double *g1, *g2;
        size_t d;
        uint64_t n1, n2;
        ck_assert_ok(lm_stats_find(lm_stats_fold_at(a, k), 0, "w", &g1, &d, &n1));
        ck_assert_ok(lm_stats_find(lm_stats_fold_at(la, k), 0, "w", &g2, &d, &n2));
        ck_assert_uint_eq(n1, 4);
        ck_assert_uint_eq(n1, n2);
        ck_assert(memcmp(g1, g2, D * D * sizeof(double)) == 0);
    }
    /* A loaded held-out part is not fed again (the fraction is not stored). */
    ck_assert_ok(lm_stats_observe(lh, 0, "w", x, 8, D));
    const double *g;
    size_t d;
    uint64_t n;
    ck_assert_ok(lm_stats_find(lh, 0, "w", &g, &d, &n));
    ck_assert_uint_eq(n, 12);
    ck_assert_ok(lm_stats_find(lm_stats_heldout(lh), 0, "w", &g, &d, &n));
    ck_assert_uint_eq(n, 4);
    char rm[160];
    snprintf(rm, sizeof(rm), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(rm), 0);
    lm_stats_destroy(la);
    lm_stats_destroy(lh);
    lm_stats_destroy(a);
    lm_stats_destroy(b);
    lm_stats_destroy(h);
    lm_stats_destroy(plain);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(split_errors)
{
    lm_context *ctx = tu_context(1, 0);
    lm_stats *s = NULL;
    ck_assert_ok(lm_stats_create(ctx, &s));
    lm_stats_split_options o = LM_STATS_SPLIT_OPTIONS_INIT;
    o.heldout_fraction = 1.0;
    ck_assert_status(lm_stats_set_split(s, &o), LM_ERR_OUT_OF_RANGE);
    o.heldout_fraction = NAN;
    ck_assert_status(lm_stats_set_split(s, &o), LM_ERR_OUT_OF_RANGE);
    o.heldout_fraction = 0;
    o.folds = 1;
    ck_assert_status(lm_stats_set_split(s, &o), LM_ERR_OUT_OF_RANGE);
    o.folds = 2;
    o.heldout_fraction = 0.5;
    ck_assert_status(lm_stats_set_split(s, &o), LM_ERR_INVALID_ARGUMENT);
    o.heldout_fraction = 0;
    o.struct_size = 4;
    ck_assert_status(lm_stats_set_split(s, &o), LM_ERR_ABI);
    o.struct_size = sizeof(o);
    ck_assert_ok(lm_stats_set_split(s, &o));
    ck_assert_status(lm_stats_set_split(s, &o), LM_ERR_STATE);
    lm_stats *used = NULL;
    ck_assert_ok(lm_stats_create(ctx, &used));
    float x[D] = {1, 2, 3};
    ck_assert_ok(lm_stats_observe(used, 0, "w", x, 1, D));
    ck_assert_status(lm_stats_set_split(used, &o), LM_ERR_STATE);
    ck_assert_ptr_null(lm_stats_heldout(NULL));
    ck_assert_uint_eq(lm_stats_fold_count(NULL), 0);
    lm_stats_destroy(used);
    lm_stats_destroy(s);
    lm_context_destroy(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("stats_split");
    TCase *tc = tcase_create("split");
    tcase_add_test(tc, heldout_rows_per_call);
    tcase_add_test(tc, folds_keep_every_row);
    tcase_add_test(tc, merge_save_load);
    tcase_add_test(tc, split_errors);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
