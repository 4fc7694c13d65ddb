/* Per-tensor and per-model parameters (lm_plan_set_float_for): a probe
 * strategy writes what it reads into its output, so each lookup rule is
 * checked on the values a strategy actually sees; task arithmetic with a
 * per-tensor weight is checked against the formula computed here. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "testutil.h"

#define N_MODELS 3
#define NUMEL 16

static const lm_param_desc probe_params[] = {
    {sizeof(lm_param_desc), "density", LM_PARAM_FLOAT, 0.5, 0.0, 1.0, NULL,
     "read per model", LM_PARAM_PER_TENSOR | LM_PARAM_PER_MODEL},
    {sizeof(lm_param_desc), "steps", LM_PARAM_INT, 3, 0, 100, NULL, "",
     LM_PARAM_PER_TENSOR},
    {sizeof(lm_param_desc), "flag", LM_PARAM_BOOL, 0, 0, 1, NULL, "",
     LM_PARAM_PER_TENSOR},
    {sizeof(lm_param_desc), "global", LM_PARAM_FLOAT, 1, 0, 9, NULL, "", 0},
    {sizeof(lm_param_desc), "mode", LM_PARAM_CHOICE, 0, 0, 0, "a|b", "", 0},
};

/* out[t] = density for model t, out[3] = density (tensor-wide),
 * out[4] = steps, out[5] = flag, out[6..8] = weights, out[9] = is_set. */
static lm_status probe_merge(void *state, const lm_tensor_job *job,
                             void *user)
{
    (void)state;
    (void)user;
    double d;
    lm_status st = LM_OK;
    for (size_t t = 0; t < job->n_models && st == LM_OK; t++) {
        st = lm_params_get_model_float(job->params, "density", t, &d);
        job->out[t] = (float)d;
    }
    int64_t steps = 0;
    int flag = 0;
    if (st == LM_OK)
        st = lm_params_get_float(job->params, "density", &d);
    job->out[3] = (float)d;
    if (st == LM_OK)
        st = lm_params_get_int(job->params, "steps", &steps);
    if (st == LM_OK)
        st = lm_params_get_bool(job->params, "flag", &flag);
    if (st != LM_OK)
        return st;
    job->out[4] = (float)steps;
    job->out[5] = (float)flag;
    for (size_t t = 0; t < job->n_models; t++)
        job->out[6 + t] = (float)job->weights[t];
    job->out[9] = (float)lm_params_is_set(job->params, "density");
    return LM_OK;
}

struct fixture {
    lm_context *ctx;
    lm_model *base, *models[N_MODELS];
    lm_plan *plan;
};

static void fixture_init(struct fixture *f, const char *strategy)
{
    f->ctx = tu_context(2, 7);
    lm_strategy_vtable vt = {
        .struct_size = sizeof(vt),
        .abi_version = LM_STRATEGY_ABI_VERSION,
        .name = "probe",
        .description = "reports its parameters",
        .params = probe_params,
        .n_params = sizeof(probe_params) / sizeof(probe_params[0]),
        .merge_tensor = probe_merge,
    };
    ck_assert_ok(lm_register_strategy(f->ctx, &vt));
    int64_t shape[1] = {NUMEL};
    const char *names[3] = {"layers.0.mlp.weight", "layers.0.attn.weight",
                            "norm.weight"};
    ck_assert_ok(lm_model_create(f->ctx, &f->base));
    for (size_t i = 0; i < 3; i++)
        tu_add_random(f->ctx, f->base, names[i], LM_F32, 1, shape, 100 + i);
    for (size_t m = 0; m < N_MODELS; m++) {
        ck_assert_ok(lm_model_create(f->ctx, &f->models[m]));
        for (size_t i = 0; i < 3; i++)
            tu_add_random(f->ctx, f->models[m], names[i], LM_F32, 1, shape,
                          10 * m + i);
    }
    ck_assert_ok(lm_plan_create(f->ctx, strategy, &f->plan));
    ck_assert_ok(lm_plan_set_base(f->plan, f->base));
    for (size_t m = 0; m < N_MODELS; m++)
        ck_assert_ok(lm_plan_add_model(f->plan, f->models[m], 1.0 + m));
}

static void fixture_fini(struct fixture *f)
{
    lm_plan_destroy(f->plan);
    for (size_t m = 0; m < N_MODELS; m++)
        lm_model_destroy(f->models[m]);
    lm_model_destroy(f->base);
    lm_context_destroy(f->ctx);
}

/* What the probe reported for `tensor`: merged − base. */
static void report(struct fixture *f, const lm_model *merged,
                   const char *tensor, double *got)
{
    lm_tensor *b, *m;
    ck_assert_ok(lm_model_find(f->base, tensor, &b));
    ck_assert_ok(lm_model_find(merged, tensor, &m));
    for (size_t i = 0; i < 10; i++)
        got[i] = tu_get(m, i) - tu_get(b, i);
}

static void expect_near(double got, double want, const char *what)
{
    /* The report passes through base + value in f32. */
    ck_assert_msg(fabs(got - want) <= 1e-6, "%s: got %.7f, want %.7f", what,
                  got, want);
}

START_TEST(lookup_order)
{
    struct fixture f;
    fixture_init(&f, "probe");
    const char *mlp = "layers.0.mlp.weight", *attn = "layers.0.attn.weight";
    ck_assert_ok(lm_plan_set_float(f.plan, "density", 0.9));
    /* every tensor, model 1 */
    ck_assert_ok(lm_plan_set_float_for(f.plan, "density", 0.3, NULL, 1));
    /* mlp, every model; then mlp, model 2 (more specific) */
    ck_assert_ok(lm_plan_set_float_for(f.plan, "density", 0.7, mlp,
                                       LM_ALL_MODELS));
    ck_assert_ok(lm_plan_set_float_for(f.plan, "density", 0.1, mlp, 2));
    /* a later call replaces the slot */
    ck_assert_ok(lm_plan_set_float_for(f.plan, "density", 0.2, mlp, 2));
    ck_assert_ok(lm_plan_set_float_for(f.plan, "steps", 9, attn,
                                       LM_ALL_MODELS));
    ck_assert_ok(lm_plan_set_float_for(f.plan, "flag", 1, attn,
                                       LM_ALL_MODELS));
    lm_model *out;
    ck_assert_ok(lm_plan_execute(f.plan, &out));
    double g[10];
    report(&f, out, mlp, g);
    expect_near(g[0], 0.7, "mlp model 0: (tensor, all)");
    expect_near(g[1], 0.7, "mlp model 1: (tensor, all) before (all, model)");
    expect_near(g[2], 0.2, "mlp model 2: (tensor, model)");
    expect_near(g[3], 0.7, "mlp tensor-wide");
    expect_near(g[4], 3, "mlp steps: default");
    expect_near(g[5], 0, "mlp flag: default");
    report(&f, out, attn, g);
    expect_near(g[0], 0.9, "attn model 0: plan-wide");
    expect_near(g[1], 0.3, "attn model 1: (all, model)");
    expect_near(g[2], 0.9, "attn model 2: plan-wide");
    expect_near(g[3], 0.9, "attn tensor-wide");
    expect_near(g[4], 9, "attn steps");
    expect_near(g[5], 1, "attn flag");
    lm_model_destroy(out);
    fixture_fini(&f);
}
END_TEST

START_TEST(is_set_sees_overrides)
{
    struct fixture f;
    fixture_init(&f, "probe");
    ck_assert_ok(lm_plan_set_float_for(f.plan, "density", 0.4,
                                       "norm.weight", 0));
    lm_model *out;
    ck_assert_ok(lm_plan_execute(f.plan, &out));
    double g[10];
    report(&f, out, "norm.weight", g);
    expect_near(g[9], 1, "set for norm.weight");
    expect_near(g[0], 0.4, "norm model 0");
    expect_near(g[1], 0.5, "norm model 1: default");
    report(&f, out, "layers.0.mlp.weight", g);
    expect_near(g[9], 0, "nothing set for mlp");
    lm_model_destroy(out);
    fixture_fini(&f);
}
END_TEST

START_TEST(weights_per_tensor)
{
    struct fixture f;
    fixture_init(&f, "probe");
    const char *attn = "layers.0.attn.weight";
    ck_assert_ok(lm_plan_set_float_for(f.plan, "weight", 0.25, attn, 1));
    ck_assert_ok(lm_plan_set_float_for(f.plan, "weight", 5.0, NULL, 2));
    lm_model *out;
    ck_assert_ok(lm_plan_execute(f.plan, &out));
    double g[10];
    report(&f, out, attn, g);
    expect_near(g[6], 1.0, "attn weight 0: as added");
    expect_near(g[7], 0.25, "attn weight 1: per tensor");
    expect_near(g[8], 5.0, "attn weight 2: every tensor");
    report(&f, out, "norm.weight", g);
    expect_near(g[7], 2.0, "norm weight 1: as added");
    expect_near(g[8], 5.0, "norm weight 2: every tensor");
    lm_model_destroy(out);
    fixture_fini(&f);
}
END_TEST

/* Task arithmetic, lambda 1: base + sum_t w_t (m_t - base), with the
 * weights as resolved for each tensor; computed here in f64. */
START_TEST(task_arithmetic_per_tensor_weight)
{
    struct fixture f;
    fixture_init(&f, "task_arithmetic");
    const char *mlp = "layers.0.mlp.weight";
    ck_assert_ok(lm_plan_set_float_for(f.plan, "weight", -0.5, mlp, 0));
    ck_assert_ok(lm_plan_set_float_for(f.plan, "lambda", 0.5, mlp,
                                       LM_ALL_MODELS));
    lm_model *out;
    ck_assert_ok(lm_plan_execute(f.plan, &out));
    const char *names[2] = {mlp, "norm.weight"};
    for (size_t k = 0; k < 2; k++) {
        double w[N_MODELS] = {k == 0 ? -0.5 : 1.0, 2.0, 3.0};
        double lambda = k == 0 ? 0.5 : 1.0;
        lm_tensor *b, *m, *t[N_MODELS];
        ck_assert_ok(lm_model_find(f.base, names[k], &b));
        ck_assert_ok(lm_model_find(out, names[k], &m));
        for (size_t j = 0; j < N_MODELS; j++)
            ck_assert_ok(lm_model_find(f.models[j], names[k], &t[j]));
        for (size_t i = 0; i < NUMEL; i++) {
            double want = 0;
            for (size_t j = 0; j < N_MODELS; j++)
                want += w[j] * (tu_get(t[j], i) - tu_get(b, i));
            want = tu_get(b, i) + lambda * want;
            ck_assert_msg(fabs(tu_get(m, i) - want) <= 1e-5,
                          "%s[%zu]: %.7f want %.7f", names[k], i,
                          tu_get(m, i), want);
        }
    }
    lm_model_destroy(out);
    fixture_fini(&f);
}
END_TEST

START_TEST(bad_overrides)
{
    struct fixture f;
    fixture_init(&f, "probe");
    lm_plan *p = f.plan;
    ck_assert_status(lm_plan_set_float_for(p, "nope", 1, NULL, 0),
                     LM_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "nope"));
    ck_assert_status(lm_plan_set_float_for(p, "density", 2, "norm.weight",
                                           0), LM_ERR_OUT_OF_RANGE);
    ck_assert_status(lm_plan_set_float_for(p, "steps", 1.5, NULL, 1),
                     LM_ERR_OUT_OF_RANGE);
    ck_assert_status(lm_plan_set_float_for(p, "mode", 1, NULL, 1),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_status(lm_plan_set_float_for(p, "density", 0.1, NULL,
                                           N_MODELS), LM_ERR_INVALID_ARGUMENT);
    ck_assert_status(lm_plan_set_float_for(p, "weight", 1, "norm.weight",
                                           LM_ALL_MODELS),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_status(lm_plan_set_float_for(p, "weight", NAN, NULL, 0),
                     LM_ERR_OUT_OF_RANGE);
    /* Slots the strategy does not read are refused, not ignored. */
    ck_assert_status(lm_plan_set_float_for(p, "steps", 4, NULL, 1),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "model 1"));
    ck_assert_status(lm_plan_set_float_for(p, "global", 4, "norm.weight",
                                           LM_ALL_MODELS),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "norm.weight"));
    ck_assert_ok(lm_plan_set_float_for(p, "global", 4, NULL, LM_ALL_MODELS));
    ck_assert_status(lm_plan_set_float_for(NULL, "density", 0.1, NULL, 0),
                     LM_ERR_INVALID_ARGUMENT);
    /* A tensor the base lacks: refused at execution, by name. */
    ck_assert_ok(lm_plan_set_float_for(p, "density", 0.1, "lm_head.weight",
                                       0));
    lm_model *out = NULL;
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_NOT_FOUND);
    ck_assert_ptr_null(out);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "lm_head.weight"));
    fixture_fini(&f);
}
END_TEST

/* Many tensors with their own values (a gradient over 200 layers). */
START_TEST(many_tensors)
{
    lm_context *ctx = tu_context(4, 1);
    lm_strategy_vtable vt = {
        .struct_size = sizeof(vt),
        .abi_version = LM_STRATEGY_ABI_VERSION,
        .name = "probe",
        .params = probe_params,
        .n_params = 5,
        .merge_tensor = probe_merge,
    };
    ck_assert_ok(lm_register_strategy(ctx, &vt));
    lm_model *base, *m[N_MODELS];
    ck_assert_ok(lm_model_create(ctx, &base));
    for (size_t j = 0; j < N_MODELS; j++)
        ck_assert_ok(lm_model_create(ctx, &m[j]));
    int64_t shape[1] = {NUMEL};
    char name[64];
    for (int l = 0; l < 200; l++) {
        snprintf(name, sizeof(name), "layers.%d.w", l);
        tu_add_random(ctx, base, name, LM_F32, 1, shape, l);
        for (size_t j = 0; j < N_MODELS; j++)
            tu_add_random(ctx, m[j], name, LM_F32, 1, shape, l + 1000 * j);
    }
    lm_plan *p;
    ck_assert_ok(lm_plan_create(ctx, "probe", &p));
    ck_assert_ok(lm_plan_set_base(p, base));
    for (size_t j = 0; j < N_MODELS; j++)
        ck_assert_ok(lm_plan_add_model(p, m[j], 1));
    for (int l = 0; l < 200; l++) {
        snprintf(name, sizeof(name), "layers.%d.w", l);
        ck_assert_ok(lm_plan_set_float_for(p, "density", l / 199.0, name, 1));
    }
    lm_model *out;
    ck_assert_ok(lm_plan_execute(p, &out));
    for (int l = 0; l < 200; l++) {
        snprintf(name, sizeof(name), "layers.%d.w", l);
        lm_tensor *b, *o;
        ck_assert_ok(lm_model_find(base, name, &b));
        ck_assert_ok(lm_model_find(out, name, &o));
        expect_near(tu_get(o, 1) - tu_get(b, 1), (float)(l / 199.0), name);
        expect_near(tu_get(o, 0) - tu_get(b, 0), 0.5, name);
    }
    lm_model_destroy(out);
    lm_plan_destroy(p);
    for (size_t j = 0; j < N_MODELS; j++)
        lm_model_destroy(m[j]);
    lm_model_destroy(base);
    lm_context_destroy(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("param_overrides");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, lookup_order);
    tcase_add_test(tc, is_set_sees_overrides);
    tcase_add_test(tc, weights_per_tensor);
    tcase_add_test(tc, task_arithmetic_per_tensor_weight);
    tcase_add_test(tc, bad_overrides);
    tcase_add_test(tc, many_tensors);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
