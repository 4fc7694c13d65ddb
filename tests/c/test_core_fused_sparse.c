/* The fused path for ties, dare_ties and dare_linear
 * (lib/core/fused_sparse.c) against the plain path (forced with
 * LIBMERGE_FUSED=0): under the methods' options, every input dtype and
 * mixtures of them (f64 ones included), output dtype overrides, per-model
 * densities, odd sizes (1 element, block boundaries +-1, a tensor larger
 * than the selection's sample, one split into parallel chunks) and 1, 2
 * or 8 threads, the outputs must be bit-identical (tolerance: 0 ulps,
 * compared as bytes), and the fused path must have taken every tensor it
 * can (DARE's L1 rescale included: its norms, whole-tensor sums, come from
 * a streaming pass in the plain path's blocked order, core/l1_norm.h).
 * Magnitudes that tie at the threshold (coarse, repeated values; a
 * model equal to the base) across chunk boundaries check that the kept
 * set is lm__keep_top_k's, index order included. The plain path is itself
 * checked against numpy references (tests/python, strategies_ref). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/context_private.h"
#include "testutil.h"

/* Around the fused block (2048). Tensors past the selection's sample
 * (65536 elements: the bracket then comes from a sample, not the whole
 * tensor) are sparse_chunked_ties'. */
static const int64_t sizes[][2] = {
    {1, 0}, {7, 0}, {2047, 0}, {2049, 0}, {37, 61}, {3, 8191},
};
#define N_SIZES (sizeof(sizes) / sizeof(sizes[0]))

static lm_model *random_model(lm_context *ctx, lm_dtype dtype, uint64_t seed,
                              double offset)
{
    lm_model *m;
    ck_assert_ok(lm_model_create(ctx, &m));
    for (size_t i = 0; i < N_SIZES; i++) {
        char name[32];
        snprintf(name, sizeof(name), "t%zu", i);
        int ndim = sizes[i][1] ? 2 : 1;
        ck_assert_ok(lm_model_add(
            m, name,
            tu_random_tensor_quiet(ctx, dtype, ndim, sizes[i],
                                   seed * 100 + i, offset, 0.01)));
    }
    return m;
}

struct config {
    const char *method;
    const char *keys[4]; /* "name=value" through lm_plan_set_param */
    double density1;     /* model 1's own density, or 0 */
    bool fused;          /* the fused path takes it */
};

static const struct config configs[] = {
    {"ties", {"density=0.3", "lambda=0.7"}, 0, true},
    {"ties", {"density=0.2", "consensus=count", "divide=weights"}, 0.9, true},
    {"ties", {"density=0.5", "weights_in_election=1", "divide=none"}, 1.0,
     true},
    {"ties", {"density=0.999", "lambda=1.3"}, 0, true},
    {"dare_ties", {"density=0.4", "lambda=0.9"}, 0.6, true},
    {"dare_ties", {"density=0.7", "rescale=0", "consensus=count"}, 0, true},
    {"dare_linear", {"density=0.3", "normalize=1"}, 0.8, true},
    {"dare_linear", {"density=0.5", "rescale=0", "lambda=2"}, 0, true},
    /* mergekit's L1 rescale of DARE (norms from the streaming pass). */
    {"dare_ties", {"density=0.3", "rescale_mode=l1"}, 0, true},
    {"dare_ties", {"density=0.6", "rescale_mode=l1", "consensus=count"}, 0.2,
     true},
    {"dare_linear", {"density=0.3", "rescale_mode=l1", "normalize=1"}, 0.9,
     true},
    {"dare_linear", {"density=0.5", "rescale_mode=l1", "lambda=2"}, 1.0,
     true},
    /* ties' L1 rescale and a whole-model trim stay with the plain path. */
    {"ties", {"density=0.3", "rescale=1"}, 0, false},
    {"ties", {"density=0.3", "scope=model"}, 0, false},
};
#define N_CONFIGS (sizeof(configs) / sizeof(configs[0]))

static lm_model *run(lm_context *ctx, const struct config *c, lm_model *base,
                     lm_model **models, size_t k, int out, bool fused,
                     size_t *n_fused)
{
    if (fused)
        unsetenv("LIBMERGE_FUSED");
    else
        setenv("LIBMERGE_FUSED", "0", 1);
    static const double w[3] = {0.7, -0.2, 1.1};
    lm_plan *p;
    ck_assert_ok(lm_plan_create(ctx, c->method, &p));
    ck_assert_ok(lm_plan_set_base(p, base));
    for (size_t t = 0; t < k; t++)
        ck_assert_ok(lm_plan_add_model(p, models[t], w[t]));
    for (size_t i = 0; i < 4 && c->keys[i]; i++) {
        char key[64];
        snprintf(key, sizeof(key), "%s", c->keys[i]);
        char *eq = strchr(key, '=');
        *eq = '\0';
        ck_assert_ok(lm_plan_set_string(p, key, eq + 1));
    }
    if (c->density1 > 0)
        ck_assert_ok(lm_plan_set_float_for(p, "density", c->density1, NULL,
                                           1));
    if (out >= 0)
        ck_assert_ok(lm_plan_set_output_dtype(p, (lm_dtype)out));
    size_t before = atomic_load(&ctx->fused_tensors);
    lm_model *merged;
    ck_assert_ok(lm_plan_execute(p, &merged));
    *n_fused = atomic_load(&ctx->fused_tensors) - before;
    lm_plan_destroy(p);
    unsetenv("LIBMERGE_FUSED");
    return merged;
}


/* Plain and fused merges of the same inputs, compared. */
static void compare(lm_context *ctx, const struct config *c, lm_model *base,
                    lm_model **models, size_t k, int out, size_t n_tensors,
                    const char *what)
{
    size_t nf, np;
    lm_model *plain = run(ctx, c, base, models, k, out, false, &np);
    lm_model *fused = run(ctx, c, base, models, k, out, true, &nf);
    char msg[160];
    snprintf(msg, sizeof(msg), "%s, %s %s%s", what, c->method, c->keys[0],
             c->keys[1] ? c->keys[1] : "");
    ck_assert_uint_eq(np, 0);
    if (nf != (c->fused ? n_tensors : 0))
        ck_abort_msg("%s: %zu of %zu tensors fused", msg, nf, n_tensors);
    tu_assert_same_bytes(fused, plain, msg);
    lm_model_destroy(plain);
    lm_model_destroy(fused);
}

struct dtypes {
    lm_dtype base, models[3];
    int out; /* -1: the base's */
};

static const struct dtypes dtype_cases[] = {
    {LM_F32, {LM_F32, LM_F32, LM_F32}, -1},
    {LM_BF16, {LM_BF16, LM_BF16, LM_BF16}, -1},
    {LM_F16, {LM_F16, LM_F16, LM_F16}, -1},
    {LM_F64, {LM_F64, LM_F64, LM_F64}, -1},
    {LM_BF16, {LM_F32, LM_F16, LM_BF16}, -1},    /* mixed, narrow   */
    {LM_F32, {LM_F64, LM_BF16, LM_F32}, -1},     /* mixed, wide     */
    {LM_F32, {LM_F32, LM_F32, LM_F32}, LM_BF16}, /* f32 -> bf16 out */
    {LM_F64, {LM_F64, LM_F16, LM_F64}, LM_F16},  /* wide -> f16 out */
};
#define N_DTYPES (sizeof(dtype_cases) / sizeof(dtype_cases[0]))

START_TEST(sparse_fused_matches_plain)
{
    /* Every dtype case on 1 thread, the first on 2 as well (tensors below
     * a chunk: threads take whole tensors; sparse_chunked_ties splits
     * one). */
    const struct dtypes *d = &dtype_cases[(size_t)_i % N_DTYPES];
    int n_threads = (size_t)_i < N_DTYPES ? 1 : 2;
    lm_context *ctx = tu_context(n_threads, 7);
    lm_model *base = random_model(ctx, d->base, 1, 0.5);
    lm_model *models[3];
    for (size_t t = 0; t < 3; t++)
        models[t] = random_model(ctx, d->models[t], 10 + t, 0.5);
    char what[64];
    snprintf(what, sizeof(what), "dtypes %d, %d thread(s)",
             (int)((size_t)_i % N_DTYPES), n_threads);
    for (size_t c = 0; c < N_CONFIGS; c++)
        compare(ctx, &configs[c], base, models, 3, d->out, N_SIZES, what);
    lm_model_destroy(base);
    for (size_t t = 0; t < 3; t++)
        lm_model_destroy(models[t]);
    lm_context_destroy(ctx);
}
END_TEST

/* One tensor of more than one chunk (2048 * 256 elements), split across
 * threads when some are idle; 1, 2 or 8 threads (_i % 3). _i / 3: 0
 * smooth values; 1 values of a few levels (magnitudes tie at the
 * threshold in every chunk; model 1 equals the base: all its magnitudes
 * are 0 and tie). */
START_TEST(sparse_chunked_ties)
{
    static const int threads[3] = {1, 2, 8};
    bool coarse = _i / 3 == 1;
    lm_context *ctx = tu_context(threads[_i % 3], 7);
    int64_t shape[1] = {2048 * 256 + 2051}; /* two chunks */
    static const lm_dtype dt[3] = {LM_BF16, LM_BF16, LM_F32};
    lm_model *m[3];
    for (size_t t = 0; t < 3; t++) {
        ck_assert_ok(lm_model_create(ctx, &m[t]));
        uint64_t seed = coarse && t == 2 ? 40 : 40 + t;
        ck_assert_ok(lm_model_add(
            m[t], "w",
            tu_random_tensor_levels(ctx, dt[t], 1, shape, seed,
                                    coarse && t ? 0.0 : 0.1, 1.0,
                                    coarse ? 8 : 0)));
    }
    if (coarse) { /* model 2 (the second fine-tune) = the base */
        lm_model_destroy(m[2]);
        ck_assert_ok(lm_model_create(ctx, &m[2]));
        ck_assert_ok(lm_model_add(
            m[2], "w",
            tu_random_tensor_levels(ctx, LM_BF16, 1, shape, 40, 0.1, 1.0,
                                    8)));
    }
    static const char *const methods[] = {"ties", "dare_ties", "dare_ties",
                                          "dare_linear"};
    for (size_t c = 0; c < 4; c++) {
        struct config cfg = {methods[c],
                             {"density=0.3", "lambda=0.8",
                              c >= 2 ? "rescale_mode=l1" : NULL},
                             0.55, true};
        compare(ctx, &cfg, m[0], m + 1, 2, -1, 1,
                coarse ? "chunked, coarse" : "chunked");
    }
    for (size_t t = 0; t < 3; t++)
        lm_model_destroy(m[t]);
    lm_context_destroy(ctx);
}
END_TEST

/* A non-finite value under the default policy: the plain path reports
 * it, with the same status and message as with the fused path off. */
START_TEST(sparse_nonfinite_input)
{
    lm_context *ctx = tu_context(2, 7);
    int64_t shape[1] = {20000};
    lm_model *m[3];
    for (size_t t = 0; t < 3; t++) {
        ck_assert_ok(lm_model_create(ctx, &m[t]));
        ck_assert_ok(lm_model_add(
            m[t], "w",
            tu_random_tensor_quiet(ctx, LM_BF16, 1, shape, 5 + t, 0.0,
                                   1.0)));
    }
    lm_tensor *w;
    ck_assert_ok(lm_model_find(m[2], "w", &w));
    ck_assert_ok(lm_tensor_set(w, 17321, 0.0 / 0.0));
    char msg[2][512];
    for (int fused = 0; fused < 2; fused++) {
        if (!fused)
            setenv("LIBMERGE_FUSED", "0", 1);
        lm_plan *p;
        ck_assert_ok(lm_plan_create(ctx, "ties", &p));
        ck_assert_ok(lm_plan_set_base(p, m[0]));
        ck_assert_ok(lm_plan_add_model(p, m[1], 1.0));
        ck_assert_ok(lm_plan_add_model(p, m[2], 1.0));
        lm_model *out = NULL;
        ck_assert_int_eq(lm_plan_execute(p, &out), LM_ERR_NONFINITE);
        snprintf(msg[fused], sizeof(msg[fused]), "%s",
                 lm_context_error(ctx));
        lm_plan_destroy(p);
        unsetenv("LIBMERGE_FUSED");
    }
    ck_assert_str_eq(msg[0], msg[1]);
    ck_assert_ptr_nonnull(strstr(msg[1], "17321"));
    for (size_t t = 0; t < 3; t++)
        lm_model_destroy(m[t]);
    lm_context_destroy(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("fused_sparse");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, sparse_fused_matches_plain, 0,
                        (int)N_DTYPES + 1);
    tcase_add_loop_test(tc, sparse_chunked_ties, 0, 6);
    tcase_add_test(tc, sparse_nonfinite_input);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
