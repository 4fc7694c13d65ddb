/* lm_plan_set_subspace: the rules (set, replace, remove, count/at/find),
 * their checks at execution (a rule nothing reads, a model the plan does
 * not have, a projector of the wrong dimension), and purification with a
 * user subspace and no statistics, whose expected result is computed here
 * with plain loops from the projector's basis: W' = P P^T W (polarize 0),
 * merged by task arithmetic with lambda 1. The numerical comparisons
 * against the methods' own subspaces and numpy references are in
 * tests/python/test_user_subspaces.py. */
#include <math.h>
#include <string.h>

#include "testutil.h"

#define ROWS 6
#define COLS 5
#define NAME "layer.0.weight"

struct fixture {
    lm_context *ctx;
    lm_model *base, *ft[2];
    lm_projector *out_proj, *in_proj; /* dims ROWS and COLS */
};

static void setup(struct fixture *f)
{
    f->ctx = tu_context(2, 1);
    int64_t shape[2] = {ROWS, COLS}, vec[1] = {COLS};
    ck_assert_ok(lm_model_create(f->ctx, &f->base));
    tu_add_random(f->ctx, f->base, NAME, LM_F32, 2, shape, 1);
    tu_add_random(f->ctx, f->base, "layer.0.bias", LM_F32, 1, vec, 3);
    for (int m = 0; m < 2; m++) {
        ck_assert_ok(lm_model_create(f->ctx, &f->ft[m]));
        tu_add_random(f->ctx, f->ft[m], NAME, LM_F32, 2, shape,
                      100 + 10 * (uint64_t)m);
        tu_add_random(f->ctx, f->ft[m], "layer.0.bias", LM_F32, 1, vec,
                      101 + 10 * (uint64_t)m);
    }
    lm_tensor *a = tu_random_tensor(f->ctx, LM_F32, 2,
                                    (int64_t[]){ROWS, ROWS}, 8);
    ck_assert_ok(lm_projector_from_tensor(f->ctx, a, LM_BASIS_LEFT, 2, 0,
                                          &f->out_proj));
    lm_tensor_destroy(a);
    a = tu_random_tensor(f->ctx, LM_F32, 2, (int64_t[]){COLS, COLS}, 9);
    ck_assert_ok(lm_projector_from_tensor(f->ctx, a, LM_BASIS_LEFT, 2, 0,
                                          &f->in_proj));
    lm_tensor_destroy(a);
}

static void teardown(struct fixture *f)
{
    lm_projector_destroy(f->out_proj);
    lm_projector_destroy(f->in_proj);
    for (int m = 0; m < 2; m++)
        lm_model_destroy(f->ft[m]);
    lm_model_destroy(f->base);
    lm_context_destroy(f->ctx);
}

static const lm_tensor *find(const lm_model *m, const char *name)
{
    lm_tensor *t = NULL;
    ck_assert_ok(lm_model_find(m, name, &t));
    return t;
}

static lm_plan *make_plan(struct fixture *f, const char *strategy)
{
    lm_plan *p;
    ck_assert_ok(lm_plan_create(f->ctx, strategy, &p));
    ck_assert_ok(lm_plan_set_base(p, f->base));
    for (int m = 0; m < 2; m++)
        ck_assert_ok(lm_plan_add_model(p, f->ft[m], 1.0));
    return p;
}

START_TEST(rules_set_replace_remove_find)
{
    struct fixture f;
    setup(&f);
    lm_plan *p = make_plan(&f, "esm");
    ck_assert_uint_eq(lm_plan_subspace_count(p), 0);
    ck_assert_ok(lm_plan_set_subspace(p, LM_SUBSPACE_ESM, "^layer\\.0\\.",
                                      1, f.out_proj));
    ck_assert_ok(lm_plan_set_subspace(p, LM_SUBSPACE_ESM, "weight$",
                                      LM_ALL_MODELS, f.in_proj));
    ck_assert_ok(lm_plan_set_subspace(p, LM_SUBSPACE_PURIFY, "weight$",
                                      LM_ALL_MODELS, f.in_proj));
    ck_assert_uint_eq(lm_plan_subspace_count(p), 3);

    /* First matching rule wins; model 0 falls through to the second. */
    const lm_projector *got = NULL;
    ck_assert_ok(lm_plan_subspace_find(p, LM_SUBSPACE_ESM, NAME, 1, &got));
    ck_assert_ptr_eq(got, f.out_proj);
    ck_assert_ok(lm_plan_subspace_find(p, LM_SUBSPACE_ESM, NAME, 0, &got));
    ck_assert_ptr_eq(got, f.in_proj);
    /* "^layer\.0\." is for model 1 only, "weight$" misses the bias. */
    ck_assert_ok(lm_plan_subspace_find(p, LM_SUBSPACE_ESM, "layer.0.bias", 1,
                                       &got));
    ck_assert_status(lm_plan_subspace_find(p, LM_SUBSPACE_ESM, "layer.0.bias",
                                           0, &got),
                     LM_ERR_NOT_FOUND);
    ck_assert_status(lm_plan_subspace_find(p, LM_SUBSPACE_PURIFY,
                                           "layer.0.bias", 0, &got),
                     LM_ERR_NOT_FOUND);

    /* Same (user, pattern, model): replaced in place. */
    ck_assert_ok(lm_plan_set_subspace(p, LM_SUBSPACE_ESM, "weight$",
                                      LM_ALL_MODELS, f.out_proj));
    ck_assert_uint_eq(lm_plan_subspace_count(p), 3);
    lm_subspace_user user;
    const char *pattern;
    size_t model;
    ck_assert_ok(lm_plan_subspace_at(p, 1, &user, &pattern, &model, &got));
    ck_assert_int_eq(user, LM_SUBSPACE_ESM);
    ck_assert_str_eq(pattern, "weight$");
    ck_assert_uint_eq(model, LM_ALL_MODELS);
    ck_assert_ptr_eq(got, f.out_proj);
    ck_assert_status(lm_plan_subspace_at(p, 3, &user, &pattern, &model, &got),
                     LM_ERR_OUT_OF_RANGE);

    /* Removal; removing what is not there is an error. */
    ck_assert_ok(lm_plan_set_subspace(p, LM_SUBSPACE_ESM, "^layer\\.0\\.", 1,
                                      NULL));
    ck_assert_uint_eq(lm_plan_subspace_count(p), 2);
    ck_assert_ok(lm_plan_subspace_at(p, 0, &user, &pattern, NULL, NULL));
    ck_assert_str_eq(pattern, "weight$");
    ck_assert_status(lm_plan_set_subspace(p, LM_SUBSPACE_ESM, "^layer", 1,
                                          NULL),
                     LM_ERR_NOT_FOUND);

    /* Bad arguments. */
    ck_assert_status(lm_plan_set_subspace(p, (lm_subspace_user)7, "x", 0,
                                          f.in_proj),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_status(lm_plan_set_subspace(p, LM_SUBSPACE_ESM, "(", 0,
                                          f.in_proj),
                     LM_ERR_FORMAT);
    ck_assert_status(lm_plan_set_subspace(p, LM_SUBSPACE_ESM, NULL, 0,
                                          f.in_proj),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_uint_eq(lm_plan_subspace_count(p), 2);
    lm_plan_destroy(p);
    teardown(&f);
}
END_TEST

/* A rule whose user does not run, or for a model the plan lacks, fails
 * the execution; nothing is returned. */
START_TEST(unused_rules_fail)
{
    struct fixture f;
    setup(&f);
    lm_model *out = NULL;

    lm_plan *p = make_plan(&f, "task_arithmetic");
    ck_assert_ok(lm_plan_set_subspace(p, LM_SUBSPACE_ESM, "weight", 0,
                                      f.out_proj));
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_null(out);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "esm"));
    lm_plan_destroy(p);

    p = make_plan(&f, "task_arithmetic");
    ck_assert_ok(lm_plan_set_subspace(p, LM_SUBSPACE_PURIFY, "weight", 0,
                                      f.out_proj));
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "purif"));
    lm_plan_destroy(p);

    p = make_plan(&f, "esm");
    ck_assert_ok(lm_plan_set_subspace(p, LM_SUBSPACE_ESM, "weight", 2,
                                      f.out_proj));
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_OUT_OF_RANGE);
    ck_assert_ptr_null(out);
    lm_plan_destroy(p);
    teardown(&f);
}
END_TEST

/* Output side: a projector of the input dimension is LM_ERR_SHAPE naming
 * the tensor, for both users. */
START_TEST(wrong_dimension_names_tensor)
{
    struct fixture f;
    setup(&f);
    lm_model *out = NULL;
    lm_plan *p = make_plan(&f, "esm");
    ck_assert_ok(lm_plan_set_subspace(p, LM_SUBSPACE_ESM, "weight$", 1,
                                      f.in_proj));
    ck_assert_ok(lm_plan_set_subspace(p, LM_SUBSPACE_ESM, "weight$", 0,
                                      f.out_proj));
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_SHAPE);
    ck_assert_ptr_null(out);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), NAME));
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "task 1"));
    lm_plan_destroy(p);

    p = make_plan(&f, "task_arithmetic");
    lm_purify_options o;
    lm_purify_options_init(&o);
    ck_assert_ok(lm_plan_set_purify(p, &o));
    ck_assert_ok(lm_plan_set_subspace(p, LM_SUBSPACE_PURIFY, NAME, 0,
                                      f.in_proj));
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_SHAPE);
    ck_assert_ptr_null(out);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), NAME));
    lm_plan_destroy(p);
    teardown(&f);
}
END_TEST

/* Purification with user subspaces needs no statistics: W' = P P^T W for
 * model 0 (polarize 0), model 1 untouched (no rule, no statistics). */
START_TEST(purify_user_subspace_without_stats)
{
    struct fixture f;
    setup(&f);
    lm_plan *p = make_plan(&f, "task_arithmetic");
    ck_assert_ok(lm_plan_set_float(p, "lambda", 1.0));
    lm_purify_options o;
    lm_purify_options_init(&o);
    o.allocation = LM_PURIFY_LAYER;
    ck_assert_ok(lm_plan_set_purify(p, &o));
    ck_assert_ok(lm_plan_set_subspace(p, LM_SUBSPACE_PURIFY, "weight$", 0,
                                      f.out_proj));
    lm_model *out = NULL;
    ck_assert_ok(lm_plan_execute(p, &out));

    const lm_tensor *b = find(f.base, NAME);
    const lm_tensor *w0 = find(f.ft[0], NAME);
    const lm_tensor *w1 = find(f.ft[1], NAME);
    const lm_tensor *got = find(out, NAME);
    const double *P = lm_projector_basis(f.out_proj);
    size_t k = lm_projector_rank(f.out_proj);
    double err = 0, scale = 0;
    for (size_t i = 0; i < ROWS; i++)
        for (size_t j = 0; j < COLS; j++) {
            double proj = 0; /* (P P^T W0)[i, j] */
            for (size_t r = 0; r < ROWS; r++) {
                double ppt = 0;
                for (size_t c = 0; c < k; c++)
                    ppt += P[i * k + c] * P[r * k + c];
                proj += ppt * tu_get(w0, r * COLS + j);
            }
            double base = tu_get(b, i * COLS + j);
            double want = base + (proj - base) +
                          (tu_get(w1, i * COLS + j) - base);
            err = fmax(err, fabs(tu_get(got, i * COLS + j) - want));
            scale = fmax(scale, fabs(want));
        }
    ck_assert_msg(err <= 1e-5 * scale, "max |diff| %g, scale %g", err, scale);
    /* The bias is not 2-D: the rule does not apply, plain sum. */
    const lm_tensor *gb = find(out, "layer.0.bias");
    for (size_t j = 0; j < COLS; j++) {
        double base = tu_get(find(f.base, "layer.0.bias"), j);
        double want = tu_get(find(f.ft[0], "layer.0.bias"), j) +
                      tu_get(find(f.ft[1], "layer.0.bias"), j) -
                      base;
        ck_assert_double_eq_tol(tu_get(gb, j), want, 1e-5);
    }
    lm_model_destroy(out);
    lm_plan_destroy(p);
    teardown(&f);
}
END_TEST

/* ESM without statistics routes 2-D tensors to TSV-M; with every task's
 * subspace given it merges them in the essential subspace instead, and a
 * load-time merger gives the same bits. */
START_TEST(esm_user_subspaces_route_to_esd)
{
    struct fixture f;
    setup(&f);
    lm_plan *plain = make_plan(&f, "esm"), *p = make_plan(&f, "esm");
    ck_assert_ok(lm_plan_set_string(plain, "layer_scaling", "false"));
    ck_assert_ok(lm_plan_set_string(p, "layer_scaling", "false"));
    ck_assert_ok(lm_plan_set_subspace(p, LM_SUBSPACE_ESM, "weight$",
                                      LM_ALL_MODELS, f.out_proj));
    lm_model *a = NULL, *b = NULL;
    ck_assert_ok(lm_plan_execute(plain, &a));
    ck_assert_ok(lm_plan_execute(p, &b));
    const lm_tensor *ta = find(a, NAME), *tb = find(b, NAME);
    double diff = 0;
    for (size_t i = 0; i < ROWS * COLS; i++)
        diff = fmax(diff, fabs(tu_get(ta, i) - tu_get(tb, i)));
    ck_assert_msg(diff > 1e-3, "the user subspace changed nothing (%g)", diff);
    lm_merger *mg;
    ck_assert_ok(lm_merger_create(p, &mg));
    tu_assert_merger_matches(f.ctx, mg, f.base, b);
    lm_merger_destroy(mg);
    lm_model_destroy(a);
    lm_model_destroy(b);
    lm_plan_destroy(plain);
    lm_plan_destroy(p);
    teardown(&f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("subspaces");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, rules_set_replace_remove_find);
    tcase_add_test(tc, unused_rules_fail);
    tcase_add_test(tc, wrong_dimension_names_tensor);
    tcase_add_test(tc, purify_user_subspace_without_stats);
    tcase_add_test(tc, esm_user_subspaces_route_to_esd);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
