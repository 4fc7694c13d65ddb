/* Vocabularies of different sizes (lm_plan_set_rows_policy): a fine-tune
 * that added tokens ([8, 3] against the base's [6, 3]) and one with fewer
 * ([4, 3]). Expected task arithmetic computed here in f64 row by row from
 * each policy's definition. */
#include <math.h>
#include <string.h>

#include "testutil.h"

static const int64_t ROWS[3] = {6, 8, 4}; /* base, model A, model B */
#define COLS 3

struct fixture {
    lm_context *ctx;
    lm_model *m[3];
    lm_tensor *t[3];
};

static void fixture_init(struct fixture *f)
{
    f->ctx = tu_context(2, 5);
    for (int i = 0; i < 3; i++) {
        int64_t shape[2] = {ROWS[i], COLS}, norm[1] = {COLS};
        ck_assert_ok(lm_model_create(f->ctx, &f->m[i]));
        f->t[i] = tu_random_tensor(f->ctx, LM_F32, 2, shape, 10 + i);
        ck_assert_ok(lm_model_add(f->m[i], "embed", f->t[i]));
        tu_add_random(f->ctx, f->m[i], "norm", LM_F32, 1, norm, 20 + i);
    }
}

static void fixture_fini(struct fixture *f)
{
    for (int i = 0; i < 3; i++)
        lm_model_destroy(f->m[i]);
    lm_context_destroy(f->ctx);
}

static lm_status merge(struct fixture *f, int policy, lm_model **out)
{
    lm_plan *p;
    ck_assert_ok(lm_plan_create(f->ctx, "task_arithmetic", &p));
    ck_assert_ok(lm_plan_set_base(p, f->m[0]));
    ck_assert_ok(lm_plan_add_model(p, f->m[1], 1.0));
    ck_assert_ok(lm_plan_add_model(p, f->m[2], 0.5));
    if (policy >= 0)
        ck_assert_ok(lm_plan_set_rows_policy(p, (lm_rows_policy)policy));
    lm_status st = lm_plan_execute(p, out);
    lm_plan_destroy(p);
    return st;
}

/* Model i's value at (r, c) as the policy fills rows it lacks. */
static double value(struct fixture *f, int i, int policy, int64_t r, int c)
{
    if (r < ROWS[i])
        return tu_get(f->t[i], (size_t)(r * COLS + c));
    double base = tu_get(f->t[0], (size_t)(r * COLS + c));
    if (policy == LM_ROWS_BASE)
        return base;
    if (policy == LM_ROWS_ZERO)
        return 0.0;
    double sum = 0; /* MEAN of the fine-tunes that have the row */
    int have = 0;
    for (int j = 1; j < 3; j++)
        if (r < ROWS[j]) {
            sum += tu_get(f->t[j], (size_t)(r * COLS + c));
            have++;
        }
    return have ? sum / have : base;
}

START_TEST(policies)
{
    struct fixture f;
    fixture_init(&f);
    int policy = _i;
    lm_model *out = NULL;
    ck_assert_ok(merge(&f, policy, &out));
    lm_tensor *o;
    ck_assert_ok(lm_model_find(out, "embed", &o));
    ck_assert_int_eq(lm_tensor_dim(o, 0), ROWS[0]);
    for (int64_t r = 0; r < ROWS[0]; r++)
        for (int c = 0; c < COLS; c++) {
            double b = tu_get(f.t[0], (size_t)(r * COLS + c));
            double want = b + 1.0 * (value(&f, 1, policy, r, c) - b) +
                          0.5 * (value(&f, 2, policy, r, c) - b);
            double got = tu_get(o, (size_t)(r * COLS + c));
            ck_assert_msg(fabs(got - want) <= 1e-6 * (1 + fabs(want)),
                          "policy %d row %lld col %d: %.7f want %.7f", policy,
                          (long long)r, c, got, want);
        }
    lm_model_destroy(out);
    fixture_fini(&f);
}
END_TEST

START_TEST(refused_by_default)
{
    struct fixture f;
    fixture_init(&f);
    lm_model *out = NULL;
    ck_assert_status(merge(&f, -1, &out), LM_ERR_SHAPE);
    ck_assert_ptr_null(out);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "'embed'"));
    lm_plan *p;
    ck_assert_ok(lm_plan_create(f.ctx, "task_arithmetic", &p));
    ck_assert_status(lm_plan_set_rows_policy(p, (lm_rows_policy)9),
                     LM_ERR_OUT_OF_RANGE);
    lm_plan_destroy(p);
    fixture_fini(&f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("rows_policy");
    TCase *tc = tcase_create("core");
    tcase_add_loop_test(tc, policies, LM_ROWS_BASE, LM_ROWS_MEAN + 1);
    tcase_add_test(tc, refused_by_default);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
