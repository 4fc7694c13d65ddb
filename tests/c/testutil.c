#include "testutil.h"

#include <stdlib.h>
#include <string.h>

lm_context *tu_context(int n_threads, uint64_t seed)
{
    lm_context_options o = LM_CONTEXT_OPTIONS_INIT;
    o.n_threads = n_threads;
    o.seed = seed;
    lm_context *ctx = NULL;
    ck_assert_ok(lm_context_create(&o, &ctx));
    return ctx;
}

static uint64_t next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

lm_tensor *tu_random_tensor(lm_context *ctx, lm_dtype dtype, int ndim,
                            const int64_t *shape, uint64_t seed)
{
    lm_tensor *t = NULL;
    ck_assert_ok(lm_tensor_create(ctx, dtype, ndim, shape, &t));
    uint64_t s = seed;
    for (size_t i = 0; i < lm_tensor_numel(t); i++) {
        double v = (double)(next(&s) >> 11) / 9007199254740992.0 * 2.0 - 1.0;
        ck_assert_ok(lm_tensor_set(t, i, v));
    }
    return t;
}

lm_tensor *tu_random_tensor_quiet(lm_context *ctx, lm_dtype dtype, int ndim,
                                  const int64_t *shape, uint64_t seed,
                                  double offset, double scale)
{
    return tu_random_tensor_levels(ctx, dtype, ndim, shape, seed, offset,
                                   scale, 0);
}

lm_tensor *tu_random_tensor_levels(lm_context *ctx, lm_dtype dtype, int ndim,
                                   const int64_t *shape, uint64_t seed,
                                   double offset, double scale, int levels)
{
    lm_tensor *t = NULL;
    ck_assert_ok(lm_tensor_create(ctx, dtype, ndim, shape, &t));
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    lm_status st = LM_OK;
    for (size_t i = 0; i < lm_tensor_numel(t); i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        double u = (double)(x >> 11) / 9007199254740992.0 * 2.0 - 1.0;
        if (levels)
            u = (double)((int)((u + 1.0) / 2.0 * levels) - levels / 2) /
                levels;
        if (lm_tensor_set(t, i, offset + scale * u) != LM_OK)
            st = LM_ERR_INTERNAL;
    }
    ck_assert_ok(st);
    return t;
}

void tu_assert_same_bytes(const lm_model *a, const lm_model *b,
                          const char *what)
{
    ck_assert_uint_eq(lm_model_count(a), lm_model_count(b));
    for (size_t i = 0; i < lm_model_count(a); i++) {
        const lm_tensor *x = lm_model_at(a, i), *y = lm_model_at(b, i);
        ck_assert_int_eq(lm_tensor_dtype(x), lm_tensor_dtype(y));
        ck_assert_uint_eq(lm_tensor_nbytes(x), lm_tensor_nbytes(y));
        if (memcmp(lm_tensor_cdata(x), lm_tensor_cdata(y),
                   lm_tensor_nbytes(x)) != 0)
            ck_abort_msg("%s: tensor %s differs between the fused and the "
                         "plain path", what, lm_model_name_at(a, i));
    }
}

void tu_add_random(lm_context *ctx, lm_model *model, const char *name,
                   lm_dtype dtype, int ndim, const int64_t *shape,
                   uint64_t seed)
{
    lm_tensor *t = tu_random_tensor(ctx, dtype, ndim, shape, seed);
    ck_assert_ok(lm_model_add(model, name, t));
}

double tu_get(const lm_tensor *t, size_t i)
{
    double v = 0;
    ck_assert_ok(lm_tensor_get(t, i, &v));
    return v;
}

int tu_run(Suite *suite)
{
    SRunner *sr = srunner_create(suite);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

void tu_assert_merger_matches(lm_context *ctx, lm_merger *merger,
                              const lm_model *base, const lm_model *want)
{
    for (size_t i = 0; i < lm_model_count(base); i++) {
        const lm_tensor *b = lm_model_at(base, i);
        int64_t shape[LM_MAX_DIMS];
        for (int d = 0; d < lm_tensor_ndim(b); d++)
            shape[d] = lm_tensor_dim(b, d);
        lm_tensor *out, *expected;
        ck_assert_ok(lm_tensor_create(ctx, lm_tensor_dtype(b),
                                      lm_tensor_ndim(b), shape, &out));
        ck_assert_ok(lm_merger_apply_to(merger, lm_model_name_at(base, i), b,
                                        out));
        ck_assert_ok(lm_model_find(want, lm_model_name_at(base, i), &expected));
        ck_assert_msg(memcmp(lm_tensor_cdata(out), lm_tensor_cdata(expected),
                             lm_tensor_nbytes(out)) == 0,
                      "merger and execution differ on '%s'",
                      lm_model_name_at(base, i));
        lm_tensor_destroy(out);
    }
}

static void *failing_alloc(size_t n, void *user)
{
    struct tu_failing_alloc *f = user;
    long k = atomic_fetch_add(&f->count, 1) + 1;
    if (f->fail_at && k == f->fail_at)
        return NULL;
    void *p = malloc(n);
    if (p)
        atomic_fetch_add(&f->live, 1);
    return p;
}

static void failing_free(void *p, void *user)
{
    struct tu_failing_alloc *f = user;
    if (p)
        atomic_fetch_sub(&f->live, 1);
    free(p);
}

void tu_failing_alloc_init(struct tu_failing_alloc *f, long fail_at)
{
    atomic_init(&f->count, 0);
    atomic_init(&f->live, 0);
    f->fail_at = fail_at;
    f->alloc = (lm_allocator){sizeof(f->alloc), failing_alloc, failing_free,
                              f};
}

#define TU_HEADER 16 /* keeps malloc's alignment for the caller */

static void raise_to(atomic_llong *x, long long v)
{
    long long cur = atomic_load(x);
    while (v > cur && !atomic_compare_exchange_weak(x, &cur, v))
        ;
}

static void *counting_alloc(size_t n, void *user)
{
    struct tu_counting_alloc *c = user;
    char *p = malloc(n + TU_HEADER);
    if (!p)
        return NULL;
    memcpy(p, &n, sizeof(n));
    raise_to(&c->peak, atomic_fetch_add(&c->live, (long long)n) +
                           (long long)n);
    raise_to(&c->largest, (long long)n);
    return p + TU_HEADER;
}

static void counting_free(void *q, void *user)
{
    struct tu_counting_alloc *c = user;
    if (!q)
        return;
    char *p = (char *)q - TU_HEADER;
    size_t n;
    memcpy(&n, p, sizeof(n));
    atomic_fetch_sub(&c->live, (long long)n);
    free(p);
}

void tu_counting_alloc_init(struct tu_counting_alloc *c)
{
    atomic_init(&c->live, 0);
    atomic_init(&c->peak, 0);
    atomic_init(&c->largest, 0);
    c->alloc = (lm_allocator){sizeof(c->alloc), counting_alloc,
                              counting_free, c};
}

void tu_counting_alloc_mark(struct tu_counting_alloc *c)
{
    atomic_store(&c->peak, atomic_load(&c->live));
    atomic_store(&c->largest, 0);
}

long tu_sweep_alloc_failures(const char *what,
                             lm_status (*run)(lm_context *ctx,
                                              const void *arg),
                             const void *arg)
{
    long failures = 0;
    for (long n = 1;; n++) {
        ck_assert_msg(n < 100000, "%s: no run succeeded", what);
        struct tu_failing_alloc f;
        tu_failing_alloc_init(&f, n);
        lm_context_options o = LM_CONTEXT_OPTIONS_INIT;
        o.allocator = &f.alloc;
        o.n_threads = 2;
        lm_context *ctx = NULL;
        lm_status st = lm_context_create(&o, &ctx);
        if (st == LM_OK) {
            st = run(ctx, arg);
            lm_context_destroy(ctx);
        }
        ck_assert_msg(atomic_load(&f.live) == 0,
                      "%s, allocation %ld failed: %ld blocks leaked", what,
                      n, atomic_load(&f.live));
        if (atomic_load(&f.count) < n) {
            ck_assert_msg(st == LM_OK, "%s: status %d with no failure",
                          what, (int)st);
            return failures;
        }
        ck_assert_msg(st == LM_ERR_OUT_OF_MEMORY,
                      "%s, allocation %ld failed: status %d", what, n,
                      (int)st);
        failures++;
    }
}
