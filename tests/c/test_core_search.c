/* Golden-section search of a plan parameter against a host score. */
#include <math.h>
#include <string.h>

#include "testutil.h"

struct record {
    int calls;
    double values[256];
    int stop_at;
    double peak; /* where the score peaks (0.7 when left 0) */
};

/* Task arithmetic of one model with tau = 1 everywhere on base 0: the
 * merged value is lambda itself; the score peaks at 0.7. */
static int score(double value, const lm_model *merged, double *out, void *user)
{
    struct record *r = user;
    double v;
    lm_tensor_get(lm_model_at(merged, 0), 0, &v);
    ck_assert(fabs(v - value) < 1e-6);
    double peak = r->peak != 0 ? r->peak : 0.7;
    ck_assert_int_lt(r->calls, 256);
    r->values[r->calls++] = value;
    *out = -(v - peak) * (v - peak);
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

/* A peak beyond [0, 2] (the released ESM bracket): lm_plan_search stops
 * at the edge, lm_plan_search_with moves the bracket and finds it. */
START_TEST(widens_past_an_edge)
{
    lm_context *ctx = tu_context(1, 0);
    lm_model *base, *m;
    lm_plan *p = plan_for(ctx, &base, &m);
    struct record r;
    memset(&r, 0, sizeof(r));
    r.peak = 2.62;
    double best;
    ck_assert_ok(lm_plan_search(p, "lambda", 0.0, 2.0, 0.01, 15, score, &r,
                                &best, NULL));
    ck_assert(best > 1.98 && best <= 2.0);

    lm_search_options o;
    lm_search_options_init(&o);
    ck_assert(o.lo == 0.0 && o.hi == 2.0 && o.tol == 0.01 &&
              o.max_evals == 15 && o.max_widen == 4);
    lm_search_result res = {sizeof(res), 0, 0, 0, 0, 0, 0, 0};
    memset(&r, 0, sizeof(r));
    r.peak = 2.62;
    ck_assert_ok(lm_plan_search_with(p, "lambda", &o, score, &r, &res));
    ck_assert(fabs(res.best_value - 2.62) < 0.01);
    ck_assert_int_eq(res.widened, 1);
    ck_assert_int_eq(res.at_edge, 0);
    ck_assert(res.lo == 1.0 && res.hi == 4.0); /* [hi - w/2, hi + w] */
    ck_assert_int_eq(res.evals, r.calls);
    ck_assert(res.best_score > -1e-4);
    lm_model *out;
    lm_plan_execute(p, &out); /* the plan keeps the best value */
    ck_assert(fabs(tu_get(lm_model_at(out, 0), 0) - res.best_value) < 1e-6);
    lm_model_destroy(out);

    /* Below the bracket: it moves down (lambda may be negative). */
    memset(&r, 0, sizeof(r));
    r.peak = -0.5;
    ck_assert_ok(lm_plan_search_with(p, "lambda", &o, score, &r, &res));
    ck_assert(fabs(res.best_value + 0.5) < 0.01);
    ck_assert_int_eq(res.widened, 1);
    ck_assert(res.lo == -2.0 && res.hi == 1.0);

    /* Beyond the declared range (lambda <= 10): stops there and says so. */
    memset(&r, 0, sizeof(r));
    r.peak = 40;
    o.max_widen = 10;
    ck_assert_ok(lm_plan_search_with(p, "lambda", &o, score, &r, &res));
    ck_assert(res.best_value > 9.98 && res.best_value <= 10.0);
    ck_assert(res.hi == 10.0);
    ck_assert_int_eq(res.at_edge, 1);

    /* max_widen bounds the moves, and at_edge reports the stop. */
    memset(&r, 0, sizeof(r));
    r.peak = 40;
    o.max_widen = 1;
    ck_assert_ok(lm_plan_search_with(p, "lambda", &o, score, &r, &res));
    ck_assert_int_eq(res.widened, 1);
    ck_assert_int_eq(res.at_edge, 1);
    ck_assert(res.best_value > 3.98 && res.best_value <= 4.0);

    /* An interior peak: the same merges as lm_plan_search. */
    struct record plain;
    memset(&plain, 0, sizeof(plain));
    memset(&r, 0, sizeof(r));
    ck_assert_ok(lm_plan_search(p, "lambda", 0.0, 2.0, 0.01, 15, score,
                                &plain, NULL, NULL));
    ck_assert_ok(lm_plan_search_with(p, "lambda", NULL, score, &r, &res));
    ck_assert_int_eq(res.widened, 0);
    ck_assert_int_eq(res.at_edge, 0);
    ck_assert_int_eq(r.calls, plain.calls);
    for (int i = 0; i < r.calls; i++)
        ck_assert(r.values[i] == plain.values[i]);

    /* max_widen 0 is lm_plan_search. */
    memset(&plain, 0, sizeof(plain));
    memset(&r, 0, sizeof(r));
    r.peak = plain.peak = 2.62;
    o.max_widen = 0;
    ck_assert_ok(lm_plan_search(p, "lambda", 0.0, 2.0, 0.01, 15, score,
                                &plain, NULL, NULL));
    ck_assert_ok(lm_plan_search_with(p, "lambda", &o, score, &r, &res));
    ck_assert_int_eq(res.at_edge, 1);
    ck_assert_int_eq(r.calls, plain.calls);

    /* Struct sizes from a future or broken caller. */
    o.struct_size = 8;
    ck_assert_status(lm_plan_search_with(p, "lambda", &o, score, &r, &res),
                     LM_ERR_ABI);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "lm_search_options"));
    lm_search_options_init(&o);
    res.struct_size = 4;
    ck_assert_status(lm_plan_search_with(p, "lambda", &o, score, &r, &res),
                     LM_ERR_ABI);
    res.struct_size = sizeof(res);
    o.max_widen = -1;
    ck_assert_status(lm_plan_search_with(p, "lambda", &o, score, &r, &res),
                     LM_ERR_OUT_OF_RANGE);
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
    tcase_add_test(tc, widens_past_an_edge);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
