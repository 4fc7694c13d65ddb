/* mergekit's geometric strategies from C (their numbers are checked by
 * test_strategies_ref against the numpy references): every allocation of
 * a merge may fail without a leak or a crash, the model counts each one
 * needs and its other refusals are clear statuses whose messages name the
 * method (and tensor), and per-tensor values set with
 * lm_plan_set_float_for reach the strategy (slerp's t at 0 and 1 gives
 * the two ends exactly). */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static const int64_t shape2[] = {6, 4}, shape1[] = {5};

/* Model i: two random tensors (a matrix and a vector). */
static lm_model *model(lm_context *ctx, uint64_t seed)
{
    lm_model *m = NULL;
    ck_assert_ok(lm_model_create(ctx, &m));
    tu_add_random(ctx, m, "w", LM_F32, 2, shape2, seed);
    tu_add_random(ctx, m, "b", LM_F32, 1, shape1, seed + 100);
    return m;
}

static const struct geo_case {
    const char *method;
    size_t n_models;
    const char *param, *value;
} cases[] = {
    {"linear", 3, "normalize", "false"},
    {"slerp", 1, "t", "0.4"},
    {"nuslerp", 2, "nuslerp_flatten", "false"},
    {"multislerp", 3, "with_base", "false"},
    {"karcher", 3, "max_iter", "5"},
    {"model_stock", 3, "filter_wise", "true"},
    {"nearswap", 1, "t", "0.3"},
    {"arcee_fusion", 1, NULL, NULL},
    {"passthrough", 2, "source", "1"},
};

/* Merge case c in ctx; the first failing status. */
static lm_status run_case(lm_context *ctx, const struct geo_case *c,
                          lm_model **out)
{
    lm_model *ms[4] = {NULL};
    lm_plan *p = NULL;
    lm_status st = LM_OK;
    for (size_t i = 0; i <= c->n_models && st == LM_OK; i++) {
        st = lm_model_create(ctx, &ms[i]);
        const char *names[] = {"w", "b"};
        for (int k = 0; k < 2 && st == LM_OK; k++) {
            lm_tensor *t = NULL;
            st = lm_tensor_create(ctx, LM_F32, k ? 1 : 2, k ? shape1 : shape2,
                                  &t);
            if (st == LM_OK) {
                float *d = lm_tensor_data(t);
                for (size_t j = 0; j < lm_tensor_numel(t); j++)
                    d[j] = (float)sin(1.0 + (double)(7 * j + 13 * i + k));
                st = lm_model_add(ms[i], names[k], t);
                if (st != LM_OK)
                    lm_tensor_destroy(t);
            }
        }
    }
    if (st == LM_OK)
        st = lm_plan_create(ctx, c->method, &p);
    if (st == LM_OK && c->param)
        st = lm_plan_set_string(p, c->param, c->value);
    if (st == LM_OK)
        st = lm_plan_set_base(p, ms[0]);
    for (size_t i = 1; i <= c->n_models && st == LM_OK; i++)
        st = lm_plan_add_model(p, ms[i], 1.0);
    if (st == LM_OK)
        st = lm_plan_execute(p, out);
    lm_plan_destroy(p);
    for (size_t i = 0; i < 4; i++)
        lm_model_destroy(ms[i]);
    return st;
}

static lm_status run_and_drop(lm_context *ctx, const void *arg)
{
    lm_model *out = NULL;
    lm_status st = run_case(ctx, arg, &out);
    lm_model_destroy(out);
    return st;
}

START_TEST(every_allocation_may_fail)
{
    const struct geo_case *c = &cases[_i];
    ck_assert_int_gt(tu_sweep_alloc_failures(c->method, run_and_drop, c), 10);
}
END_TEST

/* Execute `method` with n models; expect `want` and a message holding
 * both fragments. */
static void refused(const char *method, size_t n, const char *param,
                    const char *value, lm_status want, const char *frag1,
                    const char *frag2)
{
    lm_context *ctx = tu_context(2, 0);
    lm_model *ms[4];
    for (size_t i = 0; i <= n; i++)
        ms[i] = model(ctx, 10 + i);
    lm_plan *p = NULL;
    ck_assert_ok(lm_plan_create(ctx, method, &p));
    if (param)
        ck_assert_ok(lm_plan_set_string(p, param, value));
    ck_assert_ok(lm_plan_set_base(p, ms[0]));
    for (size_t i = 1; i <= n; i++)
        ck_assert_ok(lm_plan_add_model(p, ms[i], 1.0));
    lm_model *out = NULL;
    ck_assert_status(lm_plan_execute(p, &out), want);
    ck_assert_ptr_null(out);
    const char *msg = lm_context_error(ctx);
    ck_assert_msg(strstr(msg, frag1) && strstr(msg, frag2),
                  "%s: message '%s' lacks '%s' or '%s'", method, msg, frag1,
                  frag2);
    lm_plan_destroy(p);
    for (size_t i = 0; i <= n; i++)
        lm_model_destroy(ms[i]);
    lm_context_destroy(ctx);
}

START_TEST(refusals_are_clear)
{
    refused("slerp", 2, "t", "0.5", LM_ERR_INVALID_ARGUMENT, "slerp",
            "exactly one model");
    refused("slerp", 1, NULL, NULL, LM_ERR_INVALID_ARGUMENT,
            "'t' is required", "tensor '");
    refused("nearswap", 1, NULL, NULL, LM_ERR_INVALID_ARGUMENT,
            "nearswap: parameter 't' is required", "tensor '");
    refused("nearswap", 3, "t", "0.1", LM_ERR_INVALID_ARGUMENT, "nearswap",
            "exactly one model");
    refused("nuslerp", 1, NULL, NULL, LM_ERR_INVALID_ARGUMENT, "nuslerp",
            "exactly two models");
    refused("nuslerp", 3, NULL, NULL, LM_ERR_INVALID_ARGUMENT, "nuslerp",
            "exactly two models");
    refused("model_stock", 1, NULL, NULL, LM_ERR_INVALID_ARGUMENT,
            "model_stock", "at least two");
    refused("arcee_fusion", 2, NULL, NULL, LM_ERR_INVALID_ARGUMENT,
            "arcee_fusion", "exactly one model");
    refused("passthrough", 2, "source", "2", LM_ERR_OUT_OF_RANGE,
            "passthrough: source 2", "tensor '");
}
END_TEST

/* slerp's t per tensor: t = 0 on "w" gives the base, t = 1 on "b" the
 * model, exactly (the colinear-free path multiplies by sin 0 = 0 and
 * sin(theta) / sin(theta) = 1). */
START_TEST(slerp_t_per_tensor)
{
    lm_context *ctx = tu_context(2, 0);
    lm_model *base = model(ctx, 1), *m = model(ctx, 2), *out = NULL;
    lm_plan *p = NULL;
    ck_assert_ok(lm_plan_create(ctx, "slerp", &p));
    ck_assert_ok(lm_plan_set_float(p, "t", 0.5));
    ck_assert_ok(lm_plan_set_float_for(p, "t", 0.0, "w", LM_ALL_MODELS));
    ck_assert_ok(lm_plan_set_float_for(p, "t", 1.0, "b", LM_ALL_MODELS));
    ck_assert_ok(lm_plan_set_base(p, base));
    ck_assert_ok(lm_plan_add_model(p, m, 1.0));
    ck_assert_ok(lm_plan_execute(p, &out));
    const lm_model *want[2] = {base, m};
    const char *names[2] = {"w", "b"};
    for (int k = 0; k < 2; k++) {
        lm_tensor *got = NULL, *ref = NULL;
        ck_assert_ok(lm_model_find(out, names[k], &got));
        ck_assert_ok(lm_model_find(want[k], names[k], &ref));
        for (size_t i = 0; i < lm_tensor_numel(got); i++)
            ck_assert_msg(fabs(tu_get(got, i) - tu_get(ref, i)) <=
                              2e-7 * (1 + fabs(tu_get(ref, i))),
                          "%s[%zu]: %g, want %g", names[k], i,
                          tu_get(got, i), tu_get(ref, i));
    }
    lm_model_destroy(out);
    lm_plan_destroy(p);
    lm_model_destroy(base);
    lm_model_destroy(m);
    lm_context_destroy(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("strategies_geo");
    TCase *tc = tcase_create("geo");
    tcase_add_loop_test(tc, every_allocation_may_fail, 0,
                        (int)(sizeof(cases) / sizeof(cases[0])));
    tcase_add_test(tc, refusals_are_clear);
    tcase_add_test(tc, slerp_t_per_tensor);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
