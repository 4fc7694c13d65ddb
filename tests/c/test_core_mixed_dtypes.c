/* Inputs of different dtypes merge (a bf16 base with f32 and f16
 * fine-tunes, f64 checkpoints): the output takes the base's dtype unless
 * lm_plan_set_output_dtype says otherwise, and f64 inputs keep f64
 * precision — each task vector is the f64 difference, the base is added
 * back in f64. Expected values are task arithmetic computed here in f64
 * from the inputs' exact values. */
#include <math.h>
#include <string.h>

#include "testutil.h"

#define N 64

/* A 1-D tensor of `dtype` holding offset + scale * (pseudo-random in
 * [-1, 1)), rounded to the dtype. */
static lm_tensor *filled(lm_context *ctx, lm_dtype dtype, double offset,
                         double scale, uint64_t seed)
{
    int64_t shape[1] = {N};
    lm_tensor *t;
    ck_assert_ok(lm_tensor_create(ctx, dtype, 1, shape, &t));
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < N; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        double u = (double)(x >> 11) / 9007199254740992.0 * 2.0 - 1.0;
        ck_assert_ok(lm_tensor_set(t, i, offset + scale * u));
    }
    return t;
}

static lm_model *one_tensor_model(lm_context *ctx, lm_tensor *t)
{
    lm_model *m;
    ck_assert_ok(lm_model_create(ctx, &m));
    ck_assert_ok(lm_model_add(m, "w", t));
    return m;
}

/* base + lambda * sum_t w_t (m_t - base) in f64. */
static double expected(const lm_tensor *base, lm_tensor *const *models,
                       const double *w, size_t k, size_t i)
{
    double b = tu_get(base, i), s = 0;
    for (size_t t = 0; t < k; t++)
        s += w[t] * (tu_get(models[t], i) - b);
    return b + s;
}

static lm_model *merge(lm_context *ctx, lm_model *base, lm_model **models,
                       const double *w, size_t k, int out_dtype)
{
    lm_plan *p;
    ck_assert_ok(lm_plan_create(ctx, "task_arithmetic", &p));
    ck_assert_ok(lm_plan_set_base(p, base));
    for (size_t t = 0; t < k; t++)
        ck_assert_ok(lm_plan_add_model(p, models[t], w[t]));
    if (out_dtype >= 0)
        ck_assert_ok(lm_plan_set_output_dtype(p, (lm_dtype)out_dtype));
    lm_model *out;
    ck_assert_ok(lm_plan_execute(p, &out));
    lm_plan_destroy(p);
    return out;
}

START_TEST(bf16_base_with_f32_and_f16_finetunes)
{
    lm_context *ctx = tu_context(2, 1);
    lm_tensor *b = filled(ctx, LM_BF16, 0, 1, 1);
    lm_tensor *t[2] = {filled(ctx, LM_F32, 0, 1, 2),
                       filled(ctx, LM_F16, 0, 1, 3)};
    double w[2] = {0.5, 0.25};
    lm_model *base = one_tensor_model(ctx, b);
    lm_model *ms[2] = {one_tensor_model(ctx, t[0]), one_tensor_model(ctx, t[1])};
    lm_model *out = merge(ctx, base, ms, w, 2, -1);
    lm_tensor *o;
    ck_assert_ok(lm_model_find(out, "w", &o));
    ck_assert_int_eq(lm_tensor_dtype(o), LM_BF16);
    for (size_t i = 0; i < N; i++) {
        double want = expected(b, t, w, 2, i), got = tu_get(o, i);
        /* one bf16 rounding of the result (2^-8 relative), plus the f32
         * arithmetic before it */
        ck_assert_msg(fabs(got - want) <= ldexp(fabs(want), -8) + 1e-6,
                      "[%zu] %.8f want %.8f", i, got, want);
    }
    /* An f32 output on request: only f32 rounding left. */
    lm_model *out32 = merge(ctx, base, ms, w, 2, LM_F32);
    ck_assert_ok(lm_model_find(out32, "w", &o));
    ck_assert_int_eq(lm_tensor_dtype(o), LM_F32);
    for (size_t i = 0; i < N; i++) {
        double want = expected(b, t, w, 2, i);
        ck_assert_msg(fabs(tu_get(o, i) - want) <= 1e-6 * (1 + fabs(want)),
                      "f32 out [%zu]", i);
    }
    lm_model_destroy(out32);
    lm_model_destroy(out);
    lm_model_destroy(ms[0]);
    lm_model_destroy(ms[1]);
    lm_model_destroy(base);
    lm_context_destroy(ctx);
}
END_TEST

/* Weights near 1000 with task vectors near 1e-4: through f32 the result
 * would be off by up to ~6e-5 (half an f32 ulp of 1000); merged wide it
 * is off by the f32 rounding of the task vectors only. */
START_TEST(f64_models_keep_f64_precision)
{
    lm_context *ctx = tu_context(2, 1);
    lm_tensor *b = filled(ctx, LM_F64, 1000, 1, 1);
    lm_tensor *t[2];
    for (size_t k = 0; k < 2; k++) {
        t[k] = filled(ctx, LM_F64, 0, 1e-4, 10 + k);
        double *d = lm_tensor_data(t[k]);
        const double *bd = lm_tensor_cdata(b);
        for (size_t i = 0; i < N; i++)
            d[i] += bd[i];
    }
    double w[2] = {1.0, 0.5};
    lm_model *base = one_tensor_model(ctx, b);
    lm_model *ms[2] = {one_tensor_model(ctx, t[0]), one_tensor_model(ctx, t[1])};
    lm_model *out = merge(ctx, base, ms, w, 2, -1);
    lm_tensor *o;
    ck_assert_ok(lm_model_find(out, "w", &o));
    ck_assert_int_eq(lm_tensor_dtype(o), LM_F64);
    for (size_t i = 0; i < N; i++) {
        double want = expected(b, t, w, 2, i), got = tu_get(o, i);
        /* task vectors <= 1.5e-4, f32-rounded: <= 1e-11 */
        ck_assert_msg(fabs(got - want) <= 1e-11, "[%zu] off by %.3g", i,
                      fabs(got - want));
    }
    /* The load-time merger gives the same bytes. */
    lm_plan *p;
    ck_assert_ok(lm_plan_create(ctx, "task_arithmetic", &p));
    ck_assert_ok(lm_plan_set_base(p, base));
    for (size_t k = 0; k < 2; k++)
        ck_assert_ok(lm_plan_add_model(p, ms[k], w[k]));
    lm_merger *m;
    ck_assert_ok(lm_merger_create(p, &m));
    tu_assert_merger_matches(ctx, m, base, out);
    lm_merger_destroy(m);
    lm_plan_destroy(p);
    lm_model_destroy(out);
    lm_model_destroy(ms[0]);
    lm_model_destroy(ms[1]);
    lm_model_destroy(base);
    lm_context_destroy(ctx);
}
END_TEST

/* One f64 fine-tune over an f32 base: wide merge, f32 output. */
START_TEST(f64_finetune_over_f32_base)
{
    lm_context *ctx = tu_context(1, 1);
    lm_tensor *b = filled(ctx, LM_F32, 10, 1, 1);
    lm_tensor *t[1] = {filled(ctx, LM_F64, 10, 1, 2)};
    double w[1] = {0.3};
    lm_model *base = one_tensor_model(ctx, b);
    lm_model *ms[1] = {one_tensor_model(ctx, t[0])};
    lm_model *out = merge(ctx, base, ms, w, 1, -1);
    lm_tensor *o;
    ck_assert_ok(lm_model_find(out, "w", &o));
    ck_assert_int_eq(lm_tensor_dtype(o), LM_F32);
    for (size_t i = 0; i < N; i++) {
        double want = expected(b, t, w, 1, i);
        ck_assert_msg(fabs(tu_get(o, i) - want) <= ldexp(fabs(want), -24) +
                                                       1e-7,
                      "[%zu]", i);
    }
    lm_model_destroy(out);
    lm_model_destroy(ms[0]);
    lm_model_destroy(base);
    lm_context_destroy(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("mixed_dtypes");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, bf16_base_with_f32_and_f16_finetunes);
    tcase_add_test(tc, f64_models_keep_f64_precision);
    tcase_add_test(tc, f64_finetune_over_f32_base);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
