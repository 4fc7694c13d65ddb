/* Golden-section search of a plan parameter against a host score. */
#include <math.h>
#include <string.h>

#include "testutil.h"

struct record {
    int calls;
    double values[64];
    int stop_at;
};

/* Task arithmetic of one model with tau = 1 everywhere on base 0: the
 * merged value is lambda itself; the score peaks at 0.7. */
static int score(double value, const lm_model *merged, double *out, void *user)
{
    struct record *r = user;
    double v;
    lm_tensor_get(lm_model_at(merged, 0), 0, &v);
    ck_assert(fabs(v - value) < 1e-6);
    r->values[r->calls++] = value;
    *out = -(v - 0.7) * (v - 0.7);
    return r->stop_at && r->calls >= r->stop_at;
}

static lm_plan *plan_for(lm_context *ctx, lm_model **base, lm_model **m)
{
    float zero = 0, one = 1;
    lm_tensor *t;
    lm_model_create(ctx, base);
    lm_model_create(ctx, m);
    lm_tensor_create(ctx, LM_F32, 1, (int64_t[]){1}, &t);
    lm_tensor_set(t, 0, zero);
    lm_model_add(*base, "w", t);
    lm_tensor_create(ctx, LM_F32, 1, (int64_t[]){1}, &t);
    lm_tensor_set(t, 0, one);
    lm_model_add(*m, "w", t);
    lm_plan *p = NULL;
    lm_plan_create(ctx, "task_arithmetic", &p);
    lm_plan_set_base(p, *base);
    lm_plan_add_model(p, *m, 1.0);
    return p;
}

START_TEST(finds_the_maximum)
{
    lm_context *ctx = tu_context(1, 0);
    lm_model *base, *m;
    lm_plan *p = plan_for(ctx, &base, &m);
    struct record r;
    memset(&r, 0, sizeof(r));
    double best, best_score;
    ck_assert_ok(lm_plan_search(p, "lambda", 0.0, 2.0, 0.01, 15, score, &r,
                                &best, &best_score));
    ck_assert_int_le(r.calls, 15);
    ck_assert(fabs(r.values[0] - 0.7639320225) < 1e-9); /* released points */
    ck_assert(fabs(r.values[1] - 1.2360679775) < 1e-9);
    ck_assert(fabs(best - 0.7) < 0.01);
    ck_assert(best_score <= 0 && best_score > -1e-4);
    /* The plan keeps the best value. */
    lm_model *out;
    lm_plan_execute(p, &out);
    ck_assert(fabs(tu_get(lm_model_at(out, 0), 0) - best) < 1e-6);
    lm_model_destroy(out);

    memset(&r, 0, sizeof(r));
    ck_assert_ok(lm_plan_search(p, "lambda", 0.0, 2.0, 1e-9, 5, score, &r,
                                NULL, NULL));
    ck_assert_int_eq(r.calls, 5); /* max_evals bounds the work */
    lm_plan_destroy(p);
    lm_model_destroy(base);
    lm_model_destroy(m);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(errors)
{
    lm_context *ctx = tu_context(1, 0);
    lm_model *base, *m;
    lm_plan *p = plan_for(ctx, &base, &m);
    struct record r;
    memset(&r, 0, sizeof(r));
    r.stop_at = 3;
    ck_assert_status(lm_plan_search(p, "lambda", 0, 2, 0.01, 15, score, &r,
                                    NULL, NULL), LM_ERR_CALLBACK);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "stopped"));
    ck_assert_status(lm_plan_search(p, "lambda", 2, 0, 0.01, 15, score, &r,
                                    NULL, NULL), LM_ERR_OUT_OF_RANGE);
    ck_assert_status(lm_plan_search(p, "lambda", 0, 20, 0.01, 15, score, &r,
                                    NULL, NULL), LM_ERR_OUT_OF_RANGE);
    ck_assert_status(lm_plan_search(p, "lambda", 0, 2, 0, 15, score, &r, NULL,
                                    NULL), LM_ERR_OUT_OF_RANGE);
    ck_assert_status(lm_plan_search(p, "gamma", 0, 2, 0.01, 15, score, &r,
                                    NULL, NULL), LM_ERR_NOT_FOUND);
    lm_plan_destroy(p);
    lm_plan_create(ctx, "average", &p);
    ck_assert_status(lm_plan_search(p, "normalize", 0, 1, 0.01, 15, score, &r,
                                    NULL, NULL), LM_ERR_INVALID_ARGUMENT);
    lm_plan_destroy(p);
    lm_model_destroy(base);
    lm_model_destroy(m);
    lm_context_destroy(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("search");
    TCase *tc = tcase_create("search");
    tcase_add_test(tc, finds_the_maximum);
    tcase_add_test(tc, errors);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
