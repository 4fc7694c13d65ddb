/* The fused single-pass path (lib/core/fused.c) against the plain path
 * (forced with LIBMERGE_FUSED=0): for task_arithmetic, average and linear
 * under every parameter combination, every input dtype and mixtures of
 * them (f64 ones included), output dtype overrides, per-tensor weights,
 * odd sizes (1 element, block and chunk boundaries +-1, a tensor split
 * into parallel chunks) and 1 or 2 threads, the outputs must be
 * bit-identical (tolerance: 0 ulps, compared as bytes). The plain path is
 * itself checked against numpy references (tests/python,
 * strategies_ref). Also: non-finite inputs leave the error to the plain
 * path (same status and message), and what the fused path must not take
 * (plugins, transposed layouts) goes the plain way. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/context_private.h"
#include "testutil.h"

/* Sizes around the fused block (2048 elements); chunked_tensor below
 * crosses the chunk size (2048 * 256). */
static const int64_t sizes[][2] = {
    {1, 0}, {7, 0}, {2047, 0}, {2049, 0}, {37, 61}, {3, 4099},
};
#define N_SIZES (sizeof(sizes) / sizeof(sizes[0]))

struct dtypes {
    lm_dtype base, models[3];
    int out; /* -1: the base's */
};

static lm_model *random_model(lm_context *ctx, lm_dtype dtype,
                              uint64_t seed, double offset)
{
    lm_model *m;
    ck_assert_ok(lm_model_create(ctx, &m));
    for (size_t i = 0; i < N_SIZES; i++) {
        char name[32];
        snprintf(name, sizeof(name), "t%zu", i);
        int ndim = sizes[i][1] ? 2 : 1;
        ck_assert_ok(lm_model_add(
            m, name, tu_random_tensor_quiet(ctx, dtype, ndim, sizes[i],
                                            seed * 100 + i, offset, 0.01)));
    }
    return m;
}

struct config {
    const char *method;
    const char *param;   /* a float parameter, or NULL */
    double value;
    int normalize;       /* -1: default */
    bool tensor_weight;  /* a per-tensor weight for model 1 on t3 */
};

static const struct config configs[] = {
    {"task_arithmetic", "lambda", 0.3, -1, false},
    {"task_arithmetic", "lambda", -1.7, 1, true},
    {"average", NULL, 0, -1, false},
    {"average", NULL, 0, 0, true},
    {"linear", NULL, 0, 1, true},
    {"linear", NULL, 0, 0, false},
};

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
    if (c->param)
        ck_assert_ok(lm_plan_set_float(p, c->param, c->value));
    if (c->normalize >= 0)
        ck_assert_ok(lm_plan_set_float(p, "normalize", c->normalize));
    if (c->tensor_weight)
        ck_assert_ok(lm_plan_set_float_for(p, "weight", 2.5, "t3", 1));
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


static void check_dtypes(const struct dtypes *d, int n_threads)
{
    lm_context *ctx = tu_context(n_threads, 7);
    /* Weights around 0.5 and models within 0.01 of them, so the deltas
     * are small and their f32 rounding matters. */
    lm_model *base = random_model(ctx, d->base, 1, 0.5);
    lm_model *models[3];
    for (size_t t = 0; t < 3; t++)
        models[t] = random_model(ctx, d->models[t], 10 + t, 0.5);
    for (size_t c = 0; c < sizeof(configs) / sizeof(configs[0]); c++) {
        size_t fused_count, plain_count;
        lm_model *plain = run(ctx, &configs[c], base, models, 3, d->out,
                              false, &plain_count);
        lm_model *fused = run(ctx, &configs[c], base, models, 3, d->out,
                              true, &fused_count);
        char what[96];
        snprintf(what, sizeof(what), "%s config %zu, %d thread(s)",
                 configs[c].method, c, n_threads);
        ck_assert_uint_eq(plain_count, 0);
        ck_assert_uint_eq(fused_count, N_SIZES);
        tu_assert_same_bytes(fused, plain, what);
        lm_model_destroy(plain);
        lm_model_destroy(fused);
    }
    lm_model_destroy(base);
    for (size_t t = 0; t < 3; t++)
        lm_model_destroy(models[t]);
    lm_context_destroy(ctx);
}

static const struct dtypes dtype_cases[] = {
    {LM_F32, {LM_F32, LM_F32, LM_F32}, -1},
    {LM_BF16, {LM_BF16, LM_BF16, LM_BF16}, -1},
    {LM_F16, {LM_F16, LM_F16, LM_F16}, -1},
    {LM_F64, {LM_F64, LM_F64, LM_F64}, -1},
    {LM_BF16, {LM_F32, LM_F16, LM_BF16}, -1},     /* mixed, narrow   */
    {LM_F32, {LM_F64, LM_BF16, LM_F32}, -1},      /* mixed, wide     */
    {LM_F32, {LM_F32, LM_F32, LM_F32}, LM_BF16},  /* f32 -> bf16 out */
    {LM_F64, {LM_F64, LM_F16, LM_F64}, LM_F16},   /* wide -> f16 out */
    {LM_BF16, {LM_BF16, LM_BF16, LM_BF16}, LM_F64},
};

START_TEST(fused_matches_plain)
{
    check_dtypes(&dtype_cases[_i / 2], 1 + _i % 2);
}
END_TEST

/* A tensor of more than one chunk, split across threads when some are
 * idle (2 threads, one tensor): narrow and wide inputs. */
START_TEST(chunked_tensor)
{
    static const lm_dtype dt[2][3] = {{LM_BF16, LM_F32, LM_BF16},
                                      {LM_F32, LM_F64, LM_F16}};
    lm_context *ctx = tu_context(1 + _i % 2, 7);
    int64_t shape[1] = {2048 * 256 * 2 + 3};
    lm_model *m[3];
    for (size_t t = 0; t < 3; t++) {
        ck_assert_ok(lm_model_create(ctx, &m[t]));
        ck_assert_ok(lm_model_add(
            m[t], "w", tu_random_tensor_quiet(ctx, dt[_i / 2][t], 1, shape,
                                              40 + t, 0.0, 1.0)));
    }
    struct config c = {"task_arithmetic", "lambda", 0.4, 1, false};
    size_t nf, np;
    lm_model *plain = run(ctx, &c, m[0], m + 1, 2, -1, false, &np);
    lm_model *fused = run(ctx, &c, m[0], m + 1, 2, -1, true, &nf);
    ck_assert_uint_eq(np, 0);
    ck_assert_uint_eq(nf, 1);
    tu_assert_same_bytes(fused, plain, "chunked");
    lm_model_destroy(plain);
    lm_model_destroy(fused);
    for (size_t t = 0; t < 3; t++)
        lm_model_destroy(m[t]);
    lm_context_destroy(ctx);
}
END_TEST

static lm_model *one(lm_context *ctx, lm_dtype dtype, size_t n,
                     uint64_t seed)
{
    int64_t shape[1] = {(int64_t)n};
    lm_model *m;
    ck_assert_ok(lm_model_create(ctx, &m));
    ck_assert_ok(lm_model_add(
        m, "w", tu_random_tensor_quiet(ctx, dtype, 1, shape, seed, 0.0, 1.0)));
    return m;
}

/* A non-finite value: under the default policy the plain path reports
 * it (same status and message as with the fused path off); allowed, the
 * fused path merges it, bit-identically. */
START_TEST(nonfinite_inputs)
{
    lm_context *ctx = tu_context(2, 7);
    lm_model *base = one(ctx, LM_BF16, 5000, 1);
    lm_model *models[2] = {one(ctx, LM_BF16, 5000, 2),
                           one(ctx, LM_BF16, 5000, 3)};
    lm_tensor *t;
    ck_assert_ok(lm_model_find(models[1], "w", &t));
    ck_assert_ok(lm_tensor_set(t, 4321, 1.0 / 0.0));
    char msg[2][512];
    for (int fused = 0; fused < 2; fused++) {
        if (!fused)
            setenv("LIBMERGE_FUSED", "0", 1);
        lm_plan *p;
        ck_assert_ok(lm_plan_create(ctx, "task_arithmetic", &p));
        ck_assert_ok(lm_plan_set_base(p, base));
        ck_assert_ok(lm_plan_add_model(p, models[0], 1.0));
        ck_assert_ok(lm_plan_add_model(p, models[1], 1.0));
        lm_model *out = NULL;
        ck_assert_int_eq(lm_plan_execute(p, &out), LM_ERR_NONFINITE);
        snprintf(msg[fused], sizeof(msg[fused]), "%s",
                 lm_context_error(ctx));
        lm_plan_destroy(p);
        unsetenv("LIBMERGE_FUSED");
    }
    ck_assert_str_eq(msg[0], msg[1]);
    ck_assert_ptr_nonnull(strstr(msg[1], "model 1"));
    ck_assert_ptr_nonnull(strstr(msg[1], "4321"));

    struct config c = {"task_arithmetic", "lambda", 0.5, -1, false};
    lm_model *r[2];
    size_t count[2];
    for (int fused = 0; fused < 2; fused++) {
        if (!fused)
            setenv("LIBMERGE_FUSED", "0", 1);
        lm_plan *p;
        ck_assert_ok(lm_plan_create(ctx, c.method, &p));
        ck_assert_ok(lm_plan_set_base(p, base));
        ck_assert_ok(lm_plan_add_model(p, models[0], 1.0));
        ck_assert_ok(lm_plan_add_model(p, models[1], 1.0));
        ck_assert_ok(lm_plan_set_float(p, "lambda", 0.5));
        ck_assert_ok(lm_plan_set_nonfinite(p, LM_NONFINITE_ALLOW));
        size_t before = atomic_load(&ctx->fused_tensors);
        ck_assert_ok(lm_plan_execute(p, &r[fused]));
        count[fused] = atomic_load(&ctx->fused_tensors) - before;
        lm_plan_destroy(p);
        unsetenv("LIBMERGE_FUSED");
    }
    ck_assert_uint_eq(count[0], 0);
    ck_assert_uint_eq(count[1], 1);
    tu_assert_same_bytes(r[1], r[0], "non-finite allowed");
    lm_model_destroy(r[0]);
    lm_model_destroy(r[1]);
    lm_model_destroy(base);
    lm_model_destroy(models[0]);
    lm_model_destroy(models[1]);
    lm_context_destroy(ctx);
}
END_TEST

/* A plugin with task_arithmetic's merge function declares no rule. */
static lm_status plugin_merge(void *state, const lm_tensor_job *job,
                              void *user)
{
    (void)user;
    const lm_strategy_vtable *ta = NULL;
    lm_strategy_find(job->ctx, "average", &ta);
    return ta->merge_tensor(state, job, ta->user);
}

START_TEST(plain_path_when_not_fusable)
{
    lm_context *ctx = tu_context(2, 7);
    lm_strategy_vtable vt = {
        .struct_size = sizeof(vt),
        .abi_version = LM_STRATEGY_ABI_VERSION,
        .name = "my_average",
        .merge_tensor = plugin_merge,
    };
    static const lm_param_desc params[] = {
        {sizeof(lm_param_desc), "normalize", LM_PARAM_BOOL, 1.0, 0.0, 1.0,
         NULL, "", LM_PARAM_PER_TENSOR},
    };
    vt.params = params;
    vt.n_params = 1;
    ck_assert_ok(lm_register_strategy(ctx, &vt));
    int64_t shape[2] = {33, 17};
    lm_model *base, *m1;
    ck_assert_ok(lm_model_create(ctx, &base));
    ck_assert_ok(lm_model_create(ctx, &m1));
    ck_assert_ok(lm_model_add(
        base, "w", tu_random_tensor_quiet(ctx, LM_F32, 2, shape, 1, 0.0, 1.0)));
    ck_assert_ok(lm_model_add(
        m1, "w", tu_random_tensor_quiet(ctx, LM_F32, 2, shape, 2, 0.0, 1.0)));
    const char *methods[2] = {"my_average", "average"};
    lm_model *out[3];
    for (int i = 0; i < 3; i++) {
        lm_plan *p;
        ck_assert_ok(lm_plan_create(ctx, methods[i == 0 ? 0 : 1], &p));
        ck_assert_ok(lm_plan_set_base(p, base));
        ck_assert_ok(lm_plan_add_model(p, m1, 1.0));
        if (i == 2) /* a transposed layout goes the plain way */
            ck_assert_ok(lm_plan_set_transposed(p, "w"));
        size_t before = atomic_load(&ctx->fused_tensors);
        ck_assert_ok(lm_plan_execute(p, &out[i]));
        ck_assert_uint_eq(atomic_load(&ctx->fused_tensors) - before,
                          i == 1 ? 1 : 0);
        lm_plan_destroy(p);
    }
    tu_assert_same_bytes(out[0], out[1], "plugin");
    tu_assert_same_bytes(out[2], out[1], "transposed");
    for (int i = 0; i < 3; i++)
        lm_model_destroy(out[i]);
    lm_model_destroy(base);
    lm_model_destroy(m1);
    lm_context_destroy(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("fused");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, fused_matches_plain, 0,
                        2 * (int)(sizeof(dtype_cases) /
                                  sizeof(dtype_cases[0])));
    tcase_add_loop_test(tc, chunked_tensor, 0, 4);
    tcase_add_test(tc, nonfinite_inputs);
    tcase_add_test(tc, plain_path_when_not_fusable);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
