/* lm_plan_add_projection: task vectors projected by user projectors as a
 * plan stage. The expected merge is computed here with plain loops from
 * the projector's basis (P, dim x rank): rows side dW (I - P P^T) or
 * dW P P^T, columns side (I - P P^T) dW or P P^T dW; task arithmetic
 * with lambda 1 then adds the projected task vectors to the base. */
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "testutil.h"

#define ROWS 6
#define COLS 5

struct fixture {
    lm_context *ctx;
    lm_model *base, *ft[2];
    lm_plan *plan;
    lm_projector *in_proj, *out_proj; /* dims COLS and ROWS */
};

static void setup(struct fixture *f)
{
    f->ctx = tu_context(2, 1);
    int64_t shape[2] = {ROWS, COLS}, vec[1] = {COLS};
    ck_assert_ok(lm_model_create(f->ctx, &f->base));
    tu_add_random(f->ctx, f->base, "layer.0.weight", LM_F32, 2, shape, 1);
    tu_add_random(f->ctx, f->base, "layer.1.weight", LM_F32, 2, shape, 2);
    tu_add_random(f->ctx, f->base, "layer.0.bias", LM_F32, 1, vec, 3);
    for (int m = 0; m < 2; m++) {
        ck_assert_ok(lm_model_create(f->ctx, &f->ft[m]));
        for (size_t i = 0; i < lm_model_count(f->base); i++) {
            const lm_tensor *b = lm_model_at(f->base, i);
            lm_tensor *t = tu_random_tensor(
                f->ctx, LM_F32, lm_tensor_ndim(b),
                (int64_t[]){lm_tensor_dim(b, 0), lm_tensor_dim(b, 1)},
                100 + 10 * (uint64_t)m + i);
            ck_assert_ok(lm_model_add(f->ft[m], lm_model_name_at(f->base, i), t));
        }
    }
    ck_assert_ok(lm_plan_create(f->ctx, "task_arithmetic", &f->plan));
    ck_assert_ok(lm_plan_set_float(f->plan, "lambda", 1.0));
    ck_assert_ok(lm_plan_set_base(f->plan, f->base));
    for (int m = 0; m < 2; m++)
        ck_assert_ok(lm_plan_add_model(f->plan, f->ft[m], 1.0));
    /* Bases of random directions: top-2 of a random COLS x COLS matrix and
     * top-3 of a ROWS x ROWS one. */
    lm_tensor *a = tu_random_tensor(f->ctx, LM_F32, 2,
                                    (int64_t[]){COLS, COLS}, 7);
    ck_assert_ok(lm_projector_from_tensor(f->ctx, a, LM_BASIS_LEFT, 2, 0,
                                          &f->in_proj));
    lm_tensor_destroy(a);
    a = tu_random_tensor(f->ctx, LM_F32, 2, (int64_t[]){ROWS, ROWS}, 8);
    ck_assert_ok(lm_projector_from_tensor(f->ctx, a, LM_BASIS_LEFT, 3, 0,
                                          &f->out_proj));
    lm_tensor_destroy(a);
}

static void teardown(struct fixture *f)
{
    lm_plan_destroy(f->plan);
    lm_projector_destroy(f->in_proj);
    lm_projector_destroy(f->out_proj);
    for (int m = 0; m < 2; m++)
        lm_model_destroy(f->ft[m]);
    lm_model_destroy(f->base);
    lm_context_destroy(f->ctx);
}

/* d (ROWS x COLS, f64) projected in place by P along a side. */
static void project(const lm_projector *p, bool rows_side, bool keep,
                    double *d)
{
    const double *P = lm_projector_basis(p);
    size_t k = lm_projector_rank(p), dim = lm_projector_dim(p);
    double out[ROWS * COLS];
    for (int i = 0; i < ROWS; i++)
        for (int j = 0; j < COLS; j++) {
            double acc = 0; /* (P P^T applied) at (i, j) */
            for (size_t r = 0; r < k; r++) {
                double c = 0;
                for (size_t q = 0; q < dim; q++)
                    c += rows_side ? d[i * COLS + q] * P[q * k + r]
                                   : P[q * k + r] * d[q * COLS + j];
                acc += c * (rows_side ? P[j * k + r] : P[i * k + r]);
            }
            out[i * COLS + j] = keep ? acc : d[i * COLS + j] - acc;
        }
    memcpy(d, out, sizeof(out));
}

/* Merged tensor `name` against base + sum of task vectors, each projected
 * when `proj[m]` is set. */
static void check_tensor(struct fixture *f, const lm_model *merged,
                         const char *name, const lm_projector *const *proj,
                         bool rows_side, bool keep)
{
    lm_tensor *b, *out, *t[2];
    ck_assert_ok(lm_model_find(f->base, name, &b));
    ck_assert_ok(lm_model_find(merged, name, &out));
    size_t n = lm_tensor_numel(b);
    double want[ROWS * COLS] = {0};
    for (size_t i = 0; i < n; i++)
        want[i] = tu_get(b, i);
    for (int m = 0; m < 2; m++) {
        ck_assert_ok(lm_model_find(f->ft[m], name, &t[m]));
        double d[ROWS * COLS];
        for (size_t i = 0; i < n; i++)
            d[i] = tu_get(t[m], i) - tu_get(b, i);
        if (proj[m])
            project(proj[m], rows_side, keep, d);
        for (size_t i = 0; i < n; i++)
            want[i] += d[i];
    }
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fabs(tu_get(out, i) - want[i]) <= 1e-5,
                      "%s[%zu]: %.7f, want %.7f", name, i, tu_get(out, i),
                      want[i]);
}

START_TEST(rows_and_columns_keep_and_remove)
{
    for (int side = 0; side < 2; side++)
        for (int keep = 0; keep < 2; keep++) {
            struct fixture f;
            setup(&f);
            const lm_projector *p = side == 0 ? f.in_proj : f.out_proj;
            ck_assert_ok(lm_plan_add_projection(
                f.plan, "^layer\\.0\\.weight$", LM_ALL_MODELS, p,
                side == 0 ? LM_PROJECT_ROWS : LM_PROJECT_COLUMNS,
                keep ? LM_PROJECTION_KEEP : LM_PROJECTION_REMOVE));
            lm_model *merged;
            ck_assert_ok(lm_plan_execute(f.plan, &merged));
            const lm_projector *both[2] = {p, p}, *none[2] = {NULL, NULL};
            check_tensor(&f, merged, "layer.0.weight", both, side == 0, keep);
            check_tensor(&f, merged, "layer.1.weight", none, true, true);
            check_tensor(&f, merged, "layer.0.bias", none, true, true);
            lm_model_destroy(merged);
            teardown(&f);
        }
}
END_TEST

START_TEST(one_model_only_and_cleared)
{
    struct fixture f;
    setup(&f);
    ck_assert_ok(lm_plan_add_projection(f.plan, "weight", 1, f.in_proj,
                                        LM_PROJECT_ROWS,
                                        LM_PROJECTION_REMOVE));
    lm_model *merged;
    ck_assert_ok(lm_plan_execute(f.plan, &merged));
    const lm_projector *second[2] = {NULL, f.in_proj};
    check_tensor(&f, merged, "layer.0.weight", second, true, false);
    check_tensor(&f, merged, "layer.1.weight", second, true, false);
    lm_model_destroy(merged);
    ck_assert_ok(lm_plan_clear_projections(f.plan));
    ck_assert_ok(lm_plan_execute(f.plan, &merged));
    const lm_projector *none[2] = {NULL, NULL};
    check_tensor(&f, merged, "layer.0.weight", none, true, true);
    lm_model_destroy(merged);
    teardown(&f);
}
END_TEST

START_TEST(errors_name_the_rule_and_tensor)
{
    struct fixture f;
    setup(&f);
    lm_model *merged = NULL;
    ck_assert_status(lm_plan_add_projection(f.plan, "(", LM_ALL_MODELS,
                                            f.in_proj, LM_PROJECT_ROWS,
                                            LM_PROJECTION_KEEP),
                     LM_ERR_FORMAT);
    ck_assert_status(lm_plan_add_projection(f.plan, "x", 0, f.in_proj,
                                            (lm_projection_side)5,
                                            LM_PROJECTION_KEEP),
                     LM_ERR_INVALID_ARGUMENT);
    /* Wrong side: columns have length ROWS, the projector has COLS. */
    ck_assert_ok(lm_plan_add_projection(f.plan, "layer.1", LM_ALL_MODELS,
                                        f.in_proj, LM_PROJECT_COLUMNS,
                                        LM_PROJECTION_KEEP));
    ck_assert_status(lm_plan_execute(f.plan, &merged), LM_ERR_SHAPE);
    ck_assert_msg(strstr(lm_context_error(f.ctx), "layer.1.weight") != NULL,
                  "%s", lm_context_error(f.ctx));
    ck_assert_ok(lm_plan_clear_projections(f.plan));
    ck_assert_ok(lm_plan_add_projection(f.plan, "bias", LM_ALL_MODELS,
                                        f.in_proj, LM_PROJECT_ROWS,
                                        LM_PROJECTION_KEEP));
    ck_assert_status(lm_plan_execute(f.plan, &merged), LM_ERR_SHAPE);
    ck_assert_msg(strstr(lm_context_error(f.ctx), "is 1-D") != NULL, "%s",
                  lm_context_error(f.ctx));
    ck_assert_ok(lm_plan_clear_projections(f.plan));
    ck_assert_ok(lm_plan_add_projection(f.plan, "weight", 2, f.in_proj,
                                        LM_PROJECT_ROWS, LM_PROJECTION_KEEP));
    ck_assert_status(lm_plan_execute(f.plan, &merged), LM_ERR_OUT_OF_RANGE);
    ck_assert_ptr_null(merged);
    teardown(&f);
}
END_TEST

/* A load-time merger applies the same projection, tensor by tensor. */
START_TEST(merger_matches_execution)
{
    struct fixture f;
    setup(&f);
    ck_assert_ok(lm_plan_add_projection(f.plan, "weight", LM_ALL_MODELS,
                                        f.out_proj, LM_PROJECT_COLUMNS,
                                        LM_PROJECTION_REMOVE));
    lm_model *merged;
    ck_assert_ok(lm_plan_execute(f.plan, &merged));
    lm_merger *mg;
    ck_assert_ok(lm_merger_create(f.plan, &mg));
    tu_assert_merger_matches(f.ctx, mg, f.base, merged);
    lm_merger_destroy(mg);
    lm_model_destroy(merged);
    teardown(&f);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("projection");
    TCase *tc = tcase_create("stage");
    tcase_add_test(tc, rows_and_columns_keep_and_remove);
    tcase_add_test(tc, one_model_only_and_cleared);
    tcase_add_test(tc, errors_name_the_rule_and_tensor);
    tcase_add_test(tc, merger_matches_execution);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run(suite());
}
