/* mergekit's sparsification strategies from C (their numbers are checked
 * by test_strategies_ref against tests/python/mergekit_reference.py):
 * every allocation of a merge may fail without a leak or a crash; bad
 * values are clear statuses whose messages name the parameters, the
 * tensor and the model; per-model values set with lm_plan_set_float_for
 * reach the strategy (a per-model density of 0 removes exactly that
 * model's contribution). */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static const int64_t shape2[] = {6, 4}, shape1[] = {5};

static const struct sparse_case {
    const char *method;
    const char *param, *value, *param2, *value2;
} cases[] = {
    {"breadcrumbs", "density", "0.5", "gamma", "0.2"},
    {"breadcrumbs_ties", "density", "0.5", "rescale", "true"},
    {"della", "density", "0.5", "epsilon", "0.2"},
    {"della_linear", "density", "0.4", NULL, NULL},
    {"sce", "select_topk", "0.5", NULL, NULL},
    {"ram", "epsilon", "0.1", NULL, NULL},
    {"ramplus_tl", "epsilon", "0.1", "alpha", "3"},
    {"ties", "density", "0.5", "rescale", "true"},
    {"dare_ties", "density", "0.5", "rescale_mode", "l1"},
    {"dare_linear", "density", "0.5", "rescale_mode", "l1"},
    {"task_arithmetic", "normalize", "true", NULL, NULL},
};

#define N_MODELS 3

/* Merge case c in ctx (base and N_MODELS models); the first failing
 * status. */
static lm_status run_case(lm_context *ctx, const struct sparse_case *c,
                          lm_model **out)
{
    lm_model *ms[N_MODELS + 1] = {NULL};
    lm_plan *p = NULL;
    lm_status st = LM_OK;
    for (size_t i = 0; i <= N_MODELS && st == LM_OK; i++) {
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
    if (st == LM_OK && c->param2)
        st = lm_plan_set_string(p, c->param2, c->value2);
    if (st == LM_OK)
        st = lm_plan_set_base(p, ms[0]);
    for (size_t i = 1; i <= N_MODELS && st == LM_OK; i++)
        st = lm_plan_add_model(p, ms[i], i == 2 ? -0.5 : 1.0);
    if (st == LM_OK)
        st = lm_plan_execute(p, out);
    lm_plan_destroy(p);
    for (size_t i = 0; i <= N_MODELS; i++)
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
    const struct sparse_case *c = &cases[_i];
    ck_assert_int_gt(tu_sweep_alloc_failures(c->method, run_and_drop, c), 10);
}
END_TEST

static lm_model *model(lm_context *ctx, uint64_t seed)
{
    lm_model *m = NULL;
    ck_assert_ok(lm_model_create(ctx, &m));
    tu_add_random(ctx, m, "w", LM_F32, 2, shape2, seed);
    tu_add_random(ctx, m, "b", LM_F32, 1, shape1, seed + 100);
    return m;
}

struct fixture {
    lm_context *ctx;
    lm_model *ms[N_MODELS + 1];
    lm_plan *plan;
};

static void setup(struct fixture *f, const char *method)
{
    f->ctx = tu_context(2, 0);
    for (size_t i = 0; i <= N_MODELS; i++)
        f->ms[i] = model(f->ctx, 10 + i);
    ck_assert_ok(lm_plan_create(f->ctx, method, &f->plan));
    ck_assert_ok(lm_plan_set_base(f->plan, f->ms[0]));
    for (size_t i = 1; i <= N_MODELS; i++)
        ck_assert_ok(lm_plan_add_model(f->plan, f->ms[i], 1.0));
}

static void teardown(struct fixture *f)
{
    lm_plan_destroy(f->plan);
    for (size_t i = 0; i <= N_MODELS; i++)
        lm_model_destroy(f->ms[i]);
    lm_context_destroy(f->ctx);
}

/* Execution fails with `want`, no output, and a message holding every
 * fragment. */
static void expect_refusal(struct fixture *f, lm_status want,
                           const char *const *frags)
{
    lm_model *out = NULL;
    ck_assert_status(lm_plan_execute(f->plan, &out), want);
    ck_assert_ptr_null(out);
    const char *msg = lm_context_error(f->ctx);
    for (; *frags; frags++)
        ck_assert_msg(strstr(msg, *frags), "message '%s' lacks '%s'", msg,
                      *frags);
}

START_TEST(della_refuses_probabilities_outside_0_1)
{
    struct fixture f;
    setup(&f, "della");
    ck_assert_ok(lm_plan_set_float(f.plan, "density", 0.5));
    /* Model 1 only: density 0.9 + epsilon 0.15 >= 1. */
    ck_assert_ok(lm_plan_set_float_for(f.plan, "density", 0.9, NULL, 1));
    const char *frags[] = {"della", "tensor '", "model 1", "density 0.9",
                           "epsilon 0.15", NULL};
    expect_refusal(&f, LM_ERR_OUT_OF_RANGE, frags);
    teardown(&f);
}
END_TEST

START_TEST(out_of_range_values_name_the_parameter)
{
    static const struct {
        const char *method, *param;
        double value;
    } bad[] = {
        {"breadcrumbs", "gamma", 1.5},    {"breadcrumbs_ties", "density", -0.1},
        {"della", "epsilon", 2.0},        {"della_linear", "density", 1.5},
        {"sce", "select_topk", 1.01},     {"ram", "epsilon", -1.0},
        {"ramplus_tl", "alpha", -1.0},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        lm_context *ctx = tu_context(1, 0);
        lm_plan *p = NULL;
        ck_assert_ok(lm_plan_create(ctx, bad[i].method, &p));
        ck_assert_status(lm_plan_set_float(p, bad[i].param, bad[i].value),
                         LM_ERR_OUT_OF_RANGE);
        ck_assert_msg(strstr(lm_context_error(ctx), bad[i].param),
                      "%s: '%s'", bad[i].method, lm_context_error(ctx));
        /* Per model too (density, gamma, epsilon are per-model). */
        lm_status st = lm_plan_set_float_for(p, bad[i].param, bad[i].value,
                                             NULL, 0);
        ck_assert_int_ne(st, LM_OK);
        ck_assert_msg(strstr(lm_context_error(ctx), bad[i].param),
                      "%s: '%s'", bad[i].method, lm_context_error(ctx));
        lm_plan_destroy(p);
        lm_context_destroy(ctx);
    }
    lm_context *ctx = tu_context(1, 0);
    lm_plan *p = NULL;
    ck_assert_ok(lm_plan_create(ctx, "dare_ties", &p));
    ck_assert_int_ne(lm_plan_set_string(p, "rescale_mode", "l2"), LM_OK);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "rescale_mode"));
    lm_plan_destroy(p);
    lm_context_destroy(ctx);
}
END_TEST

/* A per-model density of 0 (breadcrumbs keeps nothing of that model)
 * gives exactly the merge without it: the per-model value reaches the
 * strategy for that model only. */
START_TEST(per_model_density_reaches_the_strategy)
{
    struct fixture a, b;
    setup(&a, "breadcrumbs");
    ck_assert_ok(lm_plan_set_float(a.plan, "density", 0.5));
    ck_assert_ok(lm_plan_set_float_for(a.plan, "density", 0.0, NULL, 2));
    lm_model *with_zero = NULL, *without = NULL;
    ck_assert_ok(lm_plan_execute(a.plan, &with_zero));
    b.ctx = tu_context(2, 0);
    for (size_t i = 0; i <= N_MODELS; i++)
        b.ms[i] = model(b.ctx, 10 + i);
    ck_assert_ok(lm_plan_create(b.ctx, "breadcrumbs", &b.plan));
    ck_assert_ok(lm_plan_set_float(b.plan, "density", 0.5));
    ck_assert_ok(lm_plan_set_base(b.plan, b.ms[0]));
    for (size_t i = 1; i < N_MODELS; i++)
        ck_assert_ok(lm_plan_add_model(b.plan, b.ms[i], 1.0));
    ck_assert_ok(lm_plan_execute(b.plan, &without));
    for (size_t k = 0; k < 2; k++) {
        const lm_tensor *x = lm_model_at(with_zero, k);
        const lm_tensor *y = lm_model_at(without, k);
        ck_assert_mem_eq(lm_tensor_cdata(x), lm_tensor_cdata(y),
                         lm_tensor_numel(x) * sizeof(float));
    }
    /* And it does change the result: the full merge differs. */
    ck_assert_ok(lm_plan_set_float_for(a.plan, "density", 0.5, NULL, 2));
    lm_model *full = NULL;
    ck_assert_ok(lm_plan_execute(a.plan, &full));
    ck_assert_int_ne(memcmp(lm_tensor_cdata(lm_model_at(full, 0)),
                            lm_tensor_cdata(lm_model_at(without, 0)),
                            24 * sizeof(float)),
                     0);
    lm_model_destroy(full);
    lm_model_destroy(with_zero);
    lm_model_destroy(without);
    teardown(&a);
    teardown(&b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("strategies_sparse");
    TCase *tc = tcase_create("sparse");
    tcase_add_loop_test(tc, every_allocation_may_fail, 0,
                        (int)(sizeof(cases) / sizeof(cases[0])));
    tcase_add_test(tc, della_refuses_probabilities_outside_0_1);
    tcase_add_test(tc, out_of_range_values_name_the_parameter);
    tcase_add_test(tc, per_model_density_reaches_the_strategy);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
