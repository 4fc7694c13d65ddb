/* Strategy registration as a third party would do it. */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "testutil.h"

/* Example third-party strategy: per element, keep the task vector entry
 * of largest magnitude ("max_magnitude"), scaled by `gain`. */
static const lm_param_desc maxmag_params[] = {
    {sizeof(lm_param_desc), "gain", LM_PARAM_FLOAT, 1.0, 0.0, 4.0, NULL,
     "scale of the selected entries", 0},
    {sizeof(lm_param_desc), "mode", LM_PARAM_CHOICE, 0, 0, 0, "abs|signed",
     "compare |x| or x", 0},
};

struct maxmag_state {
    lm_context *ctx;
    double gain;
    int signed_mode;
};

static int maxmag_inits, maxmag_finis;

static lm_status maxmag_init(const lm_strategy_init_info *info, void **state,
                             void *user)
{
    (void)user;
    struct maxmag_state *s = lm_alloc(info->ctx, sizeof(*s));
    if (!s)
        return LM_ERR_OUT_OF_MEMORY;
    s->ctx = info->ctx;
    lm_params_get_float(info->params, "gain", &s->gain);
    const char *mode;
    lm_params_get_choice(info->params, "mode", &mode);
    s->signed_mode = strcmp(mode, "signed") == 0;
    *state = s;
    maxmag_inits++;
    return LM_OK;
}

static lm_status maxmag_merge(void *state, const lm_tensor_job *job,
                              void *user)
{
    (void)user;
    const struct maxmag_state *s = state;
    for (size_t i = 0; i < job->numel; i++) {
        float best = job->deltas[0][i];
        for (size_t t = 1; t < job->n_models; t++) {
            float v = job->deltas[t][i];
            if (s->signed_mode ? v > best : fabsf(v) > fabsf(best))
                best = v;
        }
        job->out[i] = (float)(s->gain * best);
    }
    return LM_OK;
}

static void maxmag_fini(void *state, void *user)
{
    (void)user;
    struct maxmag_state *s = state;
    maxmag_finis++;
    lm_free(s->ctx, s);
}

static lm_strategy_vtable maxmag_vtable(void)
{
    lm_strategy_vtable vt = {
        .struct_size = sizeof(vt),
        .abi_version = LM_STRATEGY_ABI_VERSION,
        .name = "max_magnitude",
        .description = "largest-magnitude task vector entry",
        .params = maxmag_params,
        .n_params = 2,
        .init = maxmag_init,
        .merge_tensor = maxmag_merge,
        .fini = maxmag_fini,
    };
    return vt;
}

START_TEST(builtins_are_registered)
{
    lm_context *ctx = tu_context(1, 0);
    ck_assert_uint_ge(lm_strategy_count(ctx), 2);
    const lm_strategy_vtable *vt = NULL;
    ck_assert_ok(lm_strategy_find(ctx, "task_arithmetic", &vt));
    ck_assert_str_eq(vt->name, "task_arithmetic");
    ck_assert_uint_eq(vt->n_params, 2);
    ck_assert_str_eq(vt->params[0].name, "lambda");
    ck_assert_str_eq(vt->params[1].name, "normalize");
    ck_assert_ok(lm_strategy_find(ctx, "average", &vt));
    ck_assert_str_eq(lm_strategy_at(ctx, 0)->name, "average");
    ck_assert_ptr_null(lm_strategy_at(ctx, 1000));
    ck_assert_status(lm_strategy_find(ctx, "no_such_method", &vt),
                     LM_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "task_arithmetic"));
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(third_party_registers_and_merges)
{
    lm_context *ctx = tu_context(2, 0);
    lm_strategy_vtable vt = maxmag_vtable();
    size_t before = lm_strategy_count(ctx);
    ck_assert_ok(lm_register_strategy(ctx, &vt));
    memset(&vt, 0, sizeof(vt)); /* the library keeps its own copy */
    ck_assert_uint_eq(lm_strategy_count(ctx), before + 1);

    lm_model *base, *m1, *m2;
    lm_model_create(ctx, &base);
    lm_model_create(ctx, &m1);
    lm_model_create(ctx, &m2);
    float b[3] = {1, 1, 1}, x[3] = {2, 0, 1.5f}, y[3] = {0.5f, 1.25f, -2};
    lm_tensor *t;
    lm_tensor_wrap(ctx, LM_F32, 1, (int64_t[]){3}, b, sizeof(b), &t);
    lm_model_add(base, "w", t);
    lm_tensor_wrap(ctx, LM_F32, 1, (int64_t[]){3}, x, sizeof(x), &t);
    lm_model_add(m1, "w", t);
    lm_tensor_wrap(ctx, LM_F32, 1, (int64_t[]){3}, y, sizeof(y), &t);
    lm_model_add(m2, "w", t);

    lm_plan *plan = NULL;
    ck_assert_ok(lm_plan_create(ctx, "max_magnitude", &plan));
    ck_assert_ok(lm_plan_set_string(plan, "gain", "2"));
    ck_assert_status(lm_plan_set_string(plan, "mode", "sideways"),
                     LM_ERR_OUT_OF_RANGE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "abs|signed"));
    lm_plan_set_base(plan, base);
    lm_plan_add_model(plan, m1, 1.0);
    lm_plan_add_model(plan, m2, 1.0);
    lm_model *out = NULL;
    int inits = maxmag_inits, finis = maxmag_finis;
    ck_assert_ok(lm_plan_execute(plan, &out));
    ck_assert_int_eq(maxmag_inits, inits + 1);
    ck_assert_int_eq(maxmag_finis, finis + 1);
    /* deltas: {1,-1,0.5} and {-0.5,0.25,-3}; max |.|: 1, -1, -3; x2 */
    lm_tensor *r;
    lm_model_find(out, "w", &r);
    ck_assert(tu_get(r, 0) == 1 + 2.0);
    ck_assert(tu_get(r, 1) == 1 - 2.0);
    ck_assert(tu_get(r, 2) == 1 - 6.0);
    lm_model_destroy(out);

    ck_assert_ok(lm_plan_set_string(plan, "mode", "signed"));
    ck_assert_ok(lm_plan_execute(plan, &out));
    lm_model_find(out, "w", &r);
    ck_assert(tu_get(r, 2) == 1 + 1.0); /* max(0.5, -3) = 0.5, x2 */
    lm_model_destroy(out);

    lm_plan_destroy(plan);
    lm_model_destroy(base);
    lm_model_destroy(m1);
    lm_model_destroy(m2);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(rejected_registrations)
{
    lm_context *ctx = tu_context(1, 0);
    lm_strategy_vtable vt = maxmag_vtable();
    vt.name = "average";
    ck_assert_status(lm_register_strategy(ctx, &vt), LM_ERR_EXISTS);

    vt = maxmag_vtable();
    vt.abi_version = 99;
    ck_assert_status(lm_register_strategy(ctx, &vt), LM_ERR_ABI);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "abi_version 99"));

    vt = maxmag_vtable();
    vt.struct_size = 8;
    ck_assert_status(lm_register_strategy(ctx, &vt), LM_ERR_ABI);

    vt = maxmag_vtable();
    vt.name = "Bad Name";
    ck_assert_status(lm_register_strategy(ctx, &vt), LM_ERR_INVALID_ARGUMENT);

    vt = maxmag_vtable();
    vt.merge_tensor = NULL;
    ck_assert_status(lm_register_strategy(ctx, &vt), LM_ERR_INVALID_ARGUMENT);

    lm_param_desc bad[2];
    memcpy(bad, maxmag_params, sizeof(bad));
    bad[1].name = "gain";
    vt = maxmag_vtable();
    vt.params = bad;
    ck_assert_status(lm_register_strategy(ctx, &vt), LM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "duplicate"));

    memcpy(bad, maxmag_params, sizeof(bad));
    bad[0].default_value = 9.0;
    ck_assert_status(lm_register_strategy(ctx, &vt), LM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "default"));

    memcpy(bad, maxmag_params, sizeof(bad));
    bad[1].choices = "";
    ck_assert_status(lm_register_strategy(ctx, &vt), LM_ERR_INVALID_ARGUMENT);

    vt = maxmag_vtable();
    vt.params = NULL;
    ck_assert_status(lm_register_strategy(ctx, &vt), LM_ERR_INVALID_ARGUMENT);
    ck_assert_status(lm_register_strategy(ctx, NULL), LM_ERR_INVALID_ARGUMENT);
    lm_context_destroy(ctx);
}
END_TEST

/* A plugin built against a newer header: larger vtable and larger param
 * descriptors. The library reads what it knows with the right stride. */
START_TEST(newer_plugin_layouts)
{
    lm_context *ctx = tu_context(1, 0);
    struct newer_desc {
        lm_param_desc d;
        double future_field;
    } params[2];
    memset(params, 0, sizeof(params));
    for (int i = 0; i < 2; i++) {
        params[i].d = maxmag_params[i];
        params[i].d.struct_size = sizeof(struct newer_desc);
        params[i].future_field = 123.0;
    }
    struct {
        lm_strategy_vtable vt;
        void *future_callback;
    } big;
    memset(&big, 0, sizeof(big));
    big.vt = maxmag_vtable();
    big.vt.struct_size = sizeof(big);
    big.vt.name = "max_magnitude_v2";
    big.vt.params = (const lm_param_desc *)params;
    ck_assert_ok(lm_register_strategy(ctx, &big.vt));
    const lm_strategy_vtable *vt = NULL;
    ck_assert_ok(lm_strategy_find(ctx, "max_magnitude_v2", &vt));
    ck_assert_str_eq(vt->params[1].name, "mode");
    ck_assert_str_eq(vt->params[1].choices, "abs|signed");
    ck_assert_uint_eq(vt->struct_size, sizeof(lm_strategy_vtable));
    lm_context_destroy(ctx);
}
END_TEST

/* A plugin built against the first vtable layout (no two-pass callbacks)
 * registers and merges; the missing fields read as NULL. */
START_TEST(older_plugin_layout)
{
    lm_context *ctx = tu_context(1, 0);
    lm_strategy_vtable vt = maxmag_vtable();
    vt.name = "old_plugin";
    vt.struct_size = (uint32_t)offsetof(lm_strategy_vtable, prepare_tensor);
    vt.prepare_tensor = (lm_status(*)(void *, const lm_tensor_job *,
                                      void *))0x1; /* beyond struct_size */
    ck_assert_ok(lm_register_strategy(ctx, &vt));
    const lm_strategy_vtable *got = NULL;
    ck_assert_ok(lm_strategy_find(ctx, "old_plugin", &got));
    ck_assert_ptr_null(got->prepare_tensor);
    ck_assert_ptr_null(got->prepared);
    lm_context_destroy(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("registry");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, builtins_are_registered);
    tcase_add_test(tc, third_party_registers_and_merges);
    tcase_add_test(tc, rejected_registrations);
    tcase_add_test(tc, newer_plugin_layouts);
    tcase_add_test(tc, older_plugin_layout);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
