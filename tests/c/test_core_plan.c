/* Plans: parameters by name, inputs, execution and its failure paths. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "testutil.h"

static lm_model *make_model(lm_context *ctx, uint64_t seed, lm_dtype dtype,
                            int n_tensors)
{
    lm_model *m = NULL;
    ck_assert_ok(lm_model_create(ctx, &m));
    char name[32];
    for (int i = 0; i < n_tensors; i++) {
        snprintf(name, sizeof(name), "blocks.%d.w", i);
        int64_t shape[2] = {3 + i % 5, 7 + i % 3};
        tu_add_random(ctx, m, name, dtype, 2, shape, seed * 1000 + (uint64_t)i);
    }
    return m;
}

START_TEST(parameters_by_name)
{
    lm_context *ctx = tu_context(1, 0);
    lm_plan *p = NULL;
    ck_assert_status(lm_plan_create(ctx, "nonexistent", &p), LM_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "average"));
    ck_assert_ok(lm_plan_create(ctx, "task_arithmetic", &p));
    ck_assert_str_eq(lm_plan_strategy(p), "task_arithmetic");
    ck_assert_ok(lm_plan_set_float(p, "lambda", 0.5));
    ck_assert_ok(lm_plan_set_string(p, "lambda", " -0.25 "));
    ck_assert_status(lm_plan_set_float(p, "lamda", 0.5), LM_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "'lamda'"));
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "lambda"));
    ck_assert_status(lm_plan_set_float(p, "lambda", 11.0), LM_ERR_OUT_OF_RANGE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "outside"));
    ck_assert_status(lm_plan_set_float(p, "lambda", NAN), LM_ERR_OUT_OF_RANGE);
    ck_assert_status(lm_plan_set_string(p, "lambda", "abc"),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_status(lm_plan_set_string(p, "lambda", "1e999"),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_status(lm_plan_set_string(p, "lambda", ""),
                     LM_ERR_INVALID_ARGUMENT);
    lm_plan_destroy(p);

    ck_assert_ok(lm_plan_create(ctx, "average", &p));
    ck_assert_ok(lm_plan_set_string(p, "normalize", "false"));
    ck_assert_ok(lm_plan_set_string(p, "normalize", "YES"));
    ck_assert_status(lm_plan_set_string(p, "normalize", "maybe"),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_status(lm_plan_set_float(p, "normalize", 0.5),
                     LM_ERR_OUT_OF_RANGE);
    lm_plan_destroy(p);
    lm_plan_destroy(NULL);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(execution_preconditions)
{
    lm_context *ctx = tu_context(1, 0);
    lm_model *base = make_model(ctx, 1, LM_F32, 3);
    lm_plan *p = NULL;
    lm_model *out = (lm_model *)0x1;
    ck_assert_ok(lm_plan_create(ctx, "task_arithmetic", &p));
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "base"));
    lm_plan_set_base(p, base);
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "no models"));
    ck_assert_status(lm_plan_add_model(p, base, INFINITY),
                     LM_ERR_OUT_OF_RANGE);
    ck_assert_uint_eq(lm_plan_model_count(p), 0);
    ck_assert_ptr_eq(out, (lm_model *)0x1); /* untouched on failure */
    lm_plan_destroy(p);
    lm_model_destroy(base);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(mismatched_models_are_named)
{
    lm_context *ctx = tu_context(1, 0);
    lm_model *base = make_model(ctx, 1, LM_F32, 3);
    lm_model *good = make_model(ctx, 2, LM_F32, 3);
    lm_model *small = make_model(ctx, 3, LM_F32, 2);
    lm_model *half = make_model(ctx, 4, LM_F16, 3);
    lm_model *extra = make_model(ctx, 5, LM_F32, 4);
    lm_model *out = NULL;
    lm_plan *p = NULL;

    lm_plan_create(ctx, "task_arithmetic", &p);
    lm_plan_set_base(p, base);
    lm_plan_add_model(p, good, 1.0);
    lm_plan_add_model(p, small, 1.0);
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "model 1"));
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "blocks.2.w"));
    lm_plan_destroy(p);

    lm_plan_create(ctx, "task_arithmetic", &p);
    lm_plan_set_base(p, base);
    lm_plan_add_model(p, half, 1.0);
    ck_assert_ok(lm_plan_execute(p, &out)); /* mixed dtypes merge */
    lm_model_destroy(out);
    out = NULL;
    lm_plan_destroy(p);

    lm_plan_create(ctx, "task_arithmetic", &p);
    lm_plan_set_base(p, base);
    lm_plan_add_model(p, extra, 1.0);
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "blocks.3.w"));
    ck_assert_ptr_null(out);
    lm_plan_destroy(p);

    lm_model_destroy(base);
    lm_model_destroy(good);
    lm_model_destroy(small);
    lm_model_destroy(half);
    lm_model_destroy(extra);
    lm_context_destroy(ctx);
}
END_TEST

/* A strategy that fails on one tensor, and one that emits Inf. */
static lm_status fail_on_7(void *state, const lm_tensor_job *job, void *user)
{
    (void)state;
    (void)user;
    if (strcmp(job->name, "blocks.7.w") == 0)
        return lm_context_set_error(job->ctx, LM_ERR_LINALG,
                                    "synthetic failure on '%s'", job->name);
    return LM_OK;
}

static lm_status emit_inf(void *state, const lm_tensor_job *job, void *user)
{
    (void)state;
    (void)user;
    job->out[job->numel - 1] = INFINITY;
    return LM_OK;
}

START_TEST(strategy_failures_propagate)
{
    lm_context *ctx = tu_context(2, 0);
    lm_strategy_vtable vt = {
        .struct_size = sizeof(vt),
        .abi_version = LM_STRATEGY_ABI_VERSION,
        .name = "fails",
        .merge_tensor = fail_on_7,
    };
    ck_assert_ok(lm_register_strategy(ctx, &vt));
    vt.name = "emits_inf";
    vt.merge_tensor = emit_inf;
    ck_assert_ok(lm_register_strategy(ctx, &vt));

    lm_model *base = make_model(ctx, 1, LM_F32, 12);
    lm_model *m = make_model(ctx, 2, LM_F32, 12);
    lm_model *out = NULL;
    lm_plan *p = NULL;
    lm_plan_create(ctx, "fails", &p);
    lm_plan_set_base(p, base);
    lm_plan_add_model(p, m, 1.0);
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_LINALG);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "blocks.7.w"));
    ck_assert_ptr_null(out);
    lm_plan_destroy(p);

    lm_plan_create(ctx, "emits_inf", &p);
    lm_plan_set_base(p, base);
    lm_plan_add_model(p, m, 1.0);
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_NONFINITE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "emits_inf"));
    ck_assert_ptr_null(out);
    lm_plan_destroy(p);
    lm_model_destroy(base);
    lm_model_destroy(m);
    lm_context_destroy(ctx);
}
END_TEST

/* Same inputs, 1..4 threads: identical bytes. */
START_TEST(thread_count_does_not_change_bits)
{
    lm_dtype types[] = {LM_F32, LM_BF16};
    for (int k = 0; k < 2; k++) {
        lm_model *results[4];
        lm_context *ctxs[4];
        for (int th = 1; th <= 4; th++) {
            lm_context *ctx = tu_context(th, 9);
            lm_model *base = make_model(ctx, 1, types[k], 40);
            lm_model *a = make_model(ctx, 2, types[k], 40);
            lm_model *b = make_model(ctx, 3, types[k], 40);
            lm_plan *p = NULL;
            lm_plan_create(ctx, "task_arithmetic", &p);
            lm_plan_set_float(p, "lambda", 0.3);
            lm_plan_set_base(p, base);
            lm_plan_add_model(p, a, 0.7);
            lm_plan_add_model(p, b, 1.3);
            ck_assert_ok(lm_plan_execute(p, &results[th - 1]));
            lm_plan_destroy(p);
            lm_model_destroy(base);
            lm_model_destroy(a);
            lm_model_destroy(b);
            ctxs[th - 1] = ctx;
        }
        for (int th = 1; th < 4; th++) {
            ck_assert_uint_eq(lm_model_count(results[th]), 40);
            for (size_t i = 0; i < 40; i++) {
                const lm_tensor *x = lm_model_at(results[0], i);
                const lm_tensor *y = lm_model_at(results[th], i);
                ck_assert_str_eq(lm_model_name_at(results[0], i),
                                 lm_model_name_at(results[th], i));
                ck_assert_int_eq(memcmp(lm_tensor_cdata(x),
                                        lm_tensor_cdata(y),
                                        lm_tensor_nbytes(x)), 0);
            }
        }
        for (int th = 0; th < 4; th++) {
            lm_model_destroy(results[th]);
            lm_context_destroy(ctxs[th]);
        }
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("plan");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, parameters_by_name);
    tcase_add_test(tc, execution_preconditions);
    tcase_add_test(tc, mismatched_models_are_named);
    tcase_add_test(tc, strategy_failures_propagate);
    tcase_add_test(tc, thread_count_does_not_change_bits);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
