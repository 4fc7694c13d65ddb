#include "testutil.h"

#include <stdlib.h>

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
