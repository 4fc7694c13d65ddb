/* lm_stats: X^T X against a naive f64 loop, batching, merge, threads,
 * files and their corruption. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

static float *random_rows(size_t n, size_t d, uint64_t seed)
{
    float *x = malloc(n * d * sizeof(float));
    uint64_t s = seed;
    for (size_t i = 0; i < n * d; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = (float)((double)(s >> 11) / 9007199254740992.0 * 2 - 1);
    }
    return x;
}

static void naive_gram(const float *x, size_t n, size_t d, double *g)
{
    memset(g, 0, d * d * sizeof(double));
    for (size_t r = 0; r < n; r++)
        for (size_t i = 0; i < d; i++)
            for (size_t j = 0; j < d; j++)
                g[i * d + j] += (double)x[r * d + i] * x[r * d + j];
}

static void assert_gram_close(const double *got, const double *want, size_t d)
{
    for (size_t k = 0; k < d * d; k++)
        ck_assert_msg(fabs(got[k] - want[k]) <= 1e-12 * (1 + fabs(want[k])),
                      "gram[%zu]: %.17g vs %.17g", k, got[k], want[k]);
}

START_TEST(gram_matches_naive_in_batches)
{
    lm_context *ctx = tu_context(1, 0);
    lm_stats *s = NULL;
    ck_assert_ok(lm_stats_create(ctx, &s));
    const size_t n = 700, d = 37; /* 700 rows cross the internal blocks */
    float *x = random_rows(n, d, 1);
    ck_assert_ok(lm_stats_observe(s, 0, "fc.weight", x, 300, d));
    ck_assert_ok(lm_stats_observe(s, 0, "fc.weight", x + 300 * d, 400, d));
    const double *g;
    size_t din;
    uint64_t rows;
    ck_assert_ok(lm_stats_find(s, 0, "fc.weight", &g, &din, &rows));
    ck_assert_uint_eq(din, d);
    ck_assert_uint_eq(rows, n);
    double *want = malloc(d * d * sizeof(double));
    naive_gram(x, n, d, want);
    assert_gram_close(g, want, d);
    ck_assert_status(lm_stats_find(s, 1, "fc.weight", &g, &din, &rows),
                     LM_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "model 1"));
    free(want);
    free(x);
    lm_stats_destroy(s);
    lm_stats_destroy(NULL);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(tensor_input_and_errors)
{
    lm_context *ctx = tu_context(1, 0);
    lm_stats *s = NULL;
    lm_stats_create(ctx, &s);
    lm_tensor *t = tu_random_tensor(ctx, LM_BF16, 2, (int64_t[]){9, 5}, 3);
    ck_assert_ok(lm_stats_observe_tensor(s, 2, "w", t));
    float f[45];
    for (size_t i = 0; i < 45; i++)
        f[i] = (float)tu_get(t, i);
    double want[25];
    naive_gram(f, 9, 5, want);
    const double *g;
    ck_assert_ok(lm_stats_find(s, 2, "w", &g, NULL, NULL));
    assert_gram_close(g, want, 5);
    ck_assert_status(lm_stats_observe(s, 2, "w", f, 5, 9), LM_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "d_in 5"));
    f[7] = NAN;
    ck_assert_status(lm_stats_observe(s, 3, "w", f, 9, 5), LM_ERR_NONFINITE);
    ck_assert_status(lm_stats_observe(s, 3, "", f, 9, 5),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_status(lm_stats_observe(s, 3, "w", f, 9, 0),
                     LM_ERR_INVALID_ARGUMENT);
    lm_tensor *t1 = tu_random_tensor(ctx, LM_F32, 1, (int64_t[]){9}, 3);
    ck_assert_status(lm_stats_observe_tensor(s, 0, "v", t1), LM_ERR_SHAPE);
    ck_assert_uint_eq(lm_stats_count(s), 1);
    size_t model;
    const char *name;
    ck_assert_ok(lm_stats_at(s, 0, &model, &name));
    ck_assert_uint_eq(model, 2);
    ck_assert_str_eq(name, "w");
    ck_assert_status(lm_stats_at(s, 1, &model, &name), LM_ERR_OUT_OF_RANGE);
    lm_tensor_destroy(t);
    lm_tensor_destroy(t1);
    lm_stats_destroy(s);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(merge_adds)
{
    lm_context *ctx = tu_context(1, 0);
    lm_stats *a = NULL, *b = NULL;
    lm_stats_create(ctx, &a);
    lm_stats_create(ctx, &b);
    float *x = random_rows(50, 6, 5);
    lm_stats_observe(a, 0, "w", x, 20, 6);
    lm_stats_observe(b, 0, "w", x + 20 * 6, 30, 6);
    lm_stats_observe(b, 1, "w", x, 10, 6);
    ck_assert_ok(lm_stats_merge(a, b));
    const double *g;
    uint64_t rows;
    lm_stats_find(a, 0, "w", &g, NULL, &rows);
    ck_assert_uint_eq(rows, 50);
    double want[36];
    naive_gram(x, 50, 6, want);
    assert_gram_close(g, want, 6);
    ck_assert_uint_eq(lm_stats_count(a), 2);
    lm_stats *c = NULL;
    lm_stats_create(ctx, &c);
    lm_stats_observe(c, 0, "w", x, 3, 2);
    ck_assert_status(lm_stats_merge(a, c), LM_ERR_SHAPE);
    free(x);
    lm_stats_destroy(a);
    lm_stats_destroy(b);
    lm_stats_destroy(c);
    lm_context_destroy(ctx);
}
END_TEST

struct observer {
    lm_stats *s;
    const float *x;
    int id;
};

static void *observe_many(void *arg)
{
    struct observer *o = arg;
    char name[16];
    snprintf(name, sizeof(name), "layer%d", o->id % 3);
    for (int k = 0; k < 20; k++)
        ck_assert_ok(lm_stats_observe(o->s, 0, name, o->x + k * 8 * 16, 8, 16));
    return NULL;
}

START_TEST(concurrent_observers)
{
    lm_context *ctx = tu_context(1, 0);
    lm_stats *s = NULL;
    lm_stats_create(ctx, &s);
    float *x = random_rows(160, 16, 9);
    pthread_t th[6];
    struct observer o[6];
    for (int i = 0; i < 6; i++) {
        o[i] = (struct observer){s, x, i};
        pthread_create(&th[i], NULL, observe_many, &o[i]);
    }
    for (int i = 0; i < 6; i++)
        pthread_join(th[i], NULL);
    double want[256];
    naive_gram(x, 160, 16, want);
    for (int k = 0; k < 256; k++)
        want[k] *= 2; /* two threads per key */
    for (int l = 0; l < 3; l++) {
        char name[16];
        snprintf(name, sizeof(name), "layer%d", l);
        const double *g;
        uint64_t rows;
        ck_assert_ok(lm_stats_find(s, 0, name, &g, NULL, &rows));
        ck_assert_uint_eq(rows, 320);
        for (int k = 0; k < 256; k++)
            ck_assert(fabs(g[k] - want[k]) <= 1e-9 * (1 + fabs(want[k])));
    }
    free(x);
    lm_stats_destroy(s);
    lm_context_destroy(ctx);
}
END_TEST

static char *temp_path(void)
{
    static char buf[64];
    snprintf(buf, sizeof(buf), "/tmp/lm_stats_%d.bin", (int)getpid());
    return buf;
}

static unsigned char *slurp(const char *p, size_t *n)
{
    FILE *f = fopen(p, "rb");
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(*n);
    ck_assert_uint_eq(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

static void spit(const char *p, const unsigned char *b, size_t n)
{
    FILE *f = fopen(p, "wb");
    fwrite(b, 1, n, f);
    fclose(f);
}

START_TEST(file_round_trip_and_corruption)
{
    lm_context *ctx = tu_context(1, 0);
    lm_stats *s = NULL, *t = NULL;
    lm_stats_create(ctx, &s);
    float *x = random_rows(40, 7, 11);
    lm_stats_observe(s, 0, "a.weight", x, 40, 7);
    lm_stats_observe(s, 3, "b.weight", x, 20, 14);
    const char *path = temp_path();
    ck_assert_ok(lm_stats_save(s, path));
    ck_assert_ok(lm_stats_load(ctx, path, &t));
    ck_assert_uint_eq(lm_stats_count(t), 2);
    for (size_t i = 0; i < 2; i++) {
        size_t m;
        const char *name;
        lm_stats_at(s, i, &m, &name);
        const double *g1, *g2;
        size_t d1, d2;
        uint64_t r1, r2;
        lm_stats_find(s, m, name, &g1, &d1, &r1);
        ck_assert_ok(lm_stats_find(t, m, name, &g2, &d2, &r2));
        ck_assert_uint_eq(d1, d2);
        ck_assert_uint_eq(r1, r2);
        ck_assert_int_eq(memcmp(g1, g2, d1 * d1 * sizeof(double)), 0);
    }
    lm_stats_destroy(t);
    t = NULL;

    size_t n;
    unsigned char *good = slurp(path, &n);
    unsigned char *bad = malloc(n);
    struct {
        const char *what;
        size_t at;
        unsigned char value;
        size_t len;
        const char *message;
    } cases[] = {
        {"bad magic", 0, 'X', n, "bad magic"},
        {"flipped data", 100, 0x55, n, "checksum"},
        {"truncated", 0, 0, n / 2, "checksum"},
        {"too short", 0, 0, 3, "too short"},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        memcpy(bad, good, n);
        if (cases[c].len == n)
            bad[cases[c].at] ^= cases[c].value;
        spit(path, bad, cases[c].len);
        ck_assert_msg(lm_stats_load(ctx, path, &t) == LM_ERR_FORMAT,
                      "%s accepted", cases[c].what);
        ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), cases[c].message));
        ck_assert_ptr_null(t);
    }
    ck_assert_status(lm_stats_load(ctx, "/nonexistent/stats.bin", &t),
                     LM_ERR_IO);
    ck_assert_status(lm_stats_save(s, "/nonexistent/dir/stats.bin"),
                     LM_ERR_IO);
    unlink(path);
    free(good);
    free(bad);
    free(x);
    lm_stats_destroy(s);
    lm_context_destroy(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("stats");
    TCase *tc = tcase_create("stats");
    tcase_add_test(tc, gram_matches_naive_in_batches);
    tcase_add_test(tc, tensor_input_and_errors);
    tcase_add_test(tc, merge_adds);
    tcase_add_test(tc, concurrent_observers);
    tcase_add_test(tc, file_round_trip_and_corruption);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
