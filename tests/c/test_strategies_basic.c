/* average and task_arithmetic against an independent f64 computation. */
#include <math.h>
#include <string.h>

#include "testutil.h"

#define N_MODELS 3

/* Tolerance: the library computes in f32 (deltas, sum, base + sum), so
 * allow a few f32 roundings of the magnitudes involved (`scale` = |base| +
 * sum of |terms|), plus one rounding to the output dtype. */
static void check_close(lm_dtype dtype, double got, double want, double scale,
                        const char *what, size_t i)
{
    double tol = 4.0 * 0x1p-24 * scale;
    switch (dtype) {
    case LM_F16: tol += 0x1p-11 * fmax(fabs(want), 0x1p-14); break;
    case LM_BF16: tol += 0x1p-8 * fabs(want); break;
    default: break;
    }
    ck_assert_msg(fabs(got - want) <= tol,
                  "%s[%zu] (%s): got %.10g want %.10g (tol %.3g)", what, i,
                  lm_dtype_name(dtype), got, want, tol);
}

static void run_case(const char *method, lm_dtype dtype, double lambda,
                     int normalize)
{
    lm_context *ctx = tu_context(2, 0);
    lm_model *base, *models[N_MODELS];
    const double weights[N_MODELS] = {0.5, 1.25, -0.25};
    int64_t shape[3] = {4, 5, 6};
    lm_model_create(ctx, &base);
    tu_add_random(ctx, base, "w", dtype, 3, shape, 1);
    tu_add_random(ctx, base, "b", dtype, 1, shape, 2);
    tu_add_random(ctx, base, "s", dtype, 0, NULL, 3);
    for (int m = 0; m < N_MODELS; m++) {
        lm_model_create(ctx, &models[m]);
        tu_add_random(ctx, models[m], "w", dtype, 3, shape, 10 + m);
        tu_add_random(ctx, models[m], "b", dtype, 1, shape, 20 + m);
        tu_add_random(ctx, models[m], "s", dtype, 0, NULL, 30 + m);
    }
    lm_plan *p = NULL;
    ck_assert_ok(lm_plan_create(ctx, method, &p));
    if (lambda == lambda && strcmp(method, "task_arithmetic") == 0)
        ck_assert_ok(lm_plan_set_float(p, "lambda", lambda));
    if (normalize >= 0)
        ck_assert_ok(lm_plan_set_float(p, "normalize", normalize));
    lm_plan_set_base(p, base);
    for (int m = 0; m < N_MODELS; m++)
        lm_plan_add_model(p, models[m], weights[m]);
    lm_model *out = NULL;
    ck_assert_ok(lm_plan_execute(p, &out));
    ck_assert_uint_eq(lm_model_count(out), 3);

    double wsum = 0;
    for (int m = 0; m < N_MODELS; m++)
        wsum += weights[m];
    for (size_t k = 0; k < 3; k++) {
        const char *name = lm_model_name_at(base, k);
        ck_assert_str_eq(lm_model_name_at(out, k), name);
        lm_tensor *bt, *ot;
        lm_model_find(base, name, &bt);
        lm_model_find(out, name, &ot);
        ck_assert_int_eq(lm_tensor_dtype(ot), dtype);
        ck_assert_int_eq(lm_tensor_ndim(ot), lm_tensor_ndim(bt));
        for (size_t i = 0; i < lm_tensor_numel(bt); i++) {
            double b = tu_get(bt, i), acc = 0, mag = 0;
            for (int m = 0; m < N_MODELS; m++) {
                lm_tensor *mt;
                lm_model_find(models[m], name, &mt);
                acc += weights[m] * (tu_get(mt, i) - b);
                mag += fabs(weights[m]) * (fabs(tu_get(mt, i)) + fabs(b));
            }
            double want;
            if (strcmp(method, "task_arithmetic") == 0)
                want = b + lambda * acc;
            else
                want = b + (normalize ? acc / wsum : acc);
            double factor = fabs(lambda);
            if (strcmp(method, "average") == 0)
                factor = normalize ? 1.0 / fabs(wsum) : 1.0;
            double scale = fabs(b) + mag * factor;
            check_close(dtype, tu_get(ot, i), want, scale, name, i);
        }
    }
    lm_model_destroy(out);
    lm_plan_destroy(p);
    lm_model_destroy(base);
    for (int m = 0; m < N_MODELS; m++)
        lm_model_destroy(models[m]);
    lm_context_destroy(ctx);
}

START_TEST(task_arithmetic_all_dtypes)
{
    lm_dtype types[] = {LM_F32, LM_F16, LM_BF16, LM_F64};
    for (int k = 0; k < 4; k++) {
        run_case("task_arithmetic", types[k], 0.5, -1);
        run_case("task_arithmetic", types[k], -1.5, -1);
    }
}
END_TEST

START_TEST(average_all_dtypes)
{
    lm_dtype types[] = {LM_F32, LM_F16, LM_BF16, LM_F64};
    for (int k = 0; k < 4; k++) {
        run_case("average", types[k], NAN, 1);
        run_case("average", types[k], NAN, 0);
    }
}
END_TEST

/* Unweighted exact case: the mean of {1, 2, 4} around base 0 is 7/3. */
START_TEST(average_exact_small)
{
    lm_context *ctx = tu_context(1, 0);
    lm_model *base, *m[3];
    float zero = 0, v[3] = {1, 2, 4};
    lm_tensor *t;
    lm_model_create(ctx, &base);
    lm_tensor_wrap(ctx, LM_F32, 0, NULL, &zero, 4, &t);
    lm_model_add(base, "x", t);
    lm_plan *p;
    lm_plan_create(ctx, "average", &p);
    lm_plan_set_base(p, base);
    for (int i = 0; i < 3; i++) {
        lm_model_create(ctx, &m[i]);
        lm_tensor_wrap(ctx, LM_F32, 0, NULL, &v[i], 4, &t);
        lm_model_add(m[i], "x", t);
        lm_plan_add_model(p, m[i], 1.0);
    }
    lm_model *out;
    ck_assert_ok(lm_plan_execute(p, &out));
    ck_assert(tu_get(lm_model_at(out, 0), 0) == (double)(7.0f / 3.0f));
    lm_model_destroy(out);
    lm_plan_destroy(p);

    /* Weights summing to zero cannot be normalised. */
    lm_plan_create(ctx, "average", &p);
    lm_plan_set_base(p, base);
    lm_plan_add_model(p, m[0], 1.0);
    lm_plan_add_model(p, m[1], -1.0);
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_OUT_OF_RANGE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "sum to 0"));
    lm_plan_destroy(p);
    lm_model_destroy(base);
    for (int i = 0; i < 3; i++)
        lm_model_destroy(m[i]);
    lm_context_destroy(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("strategies_basic");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, task_arithmetic_all_dtypes);
    tcase_add_test(tc, average_all_dtypes);
    tcase_add_test(tc, average_exact_small);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
