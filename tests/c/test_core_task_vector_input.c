/* Task vectors as plan inputs (lm_plan_add_task_vector) and the ways to
 * make them: from a base and a fine-tune, from a model of deltas, from a
 * LoRA, negated or scaled. Expected merges are computed here in f64 from
 * the raw tensors (task arithmetic, lambda 1: base + sum w_t tau_t). */
#include <math.h>
#include <string.h>

#include "testutil.h"

struct fixture {
    lm_context *ctx;
    lm_model *base, *ft;
};

static void setup(struct fixture *f)
{
    f->ctx = tu_context(2, 3);
    int64_t w[2] = {6, 4}, b[1] = {6};
    ck_assert_ok(lm_model_create(f->ctx, &f->base));
    ck_assert_ok(lm_model_create(f->ctx, &f->ft));
    tu_add_random(f->ctx, f->base, "fc.weight", LM_F32, 2, w, 1);
    tu_add_random(f->ctx, f->base, "fc.bias", LM_F32, 1, b, 2);
    tu_add_random(f->ctx, f->ft, "fc.weight", LM_F32, 2, w, 3);
    tu_add_random(f->ctx, f->ft, "fc.bias", LM_F32, 1, b, 4);
}

static void teardown(struct fixture *f)
{
    lm_model_destroy(f->ft);
    lm_model_destroy(f->base);
    lm_context_destroy(f->ctx);
}

static lm_model *merge_tv(struct fixture *f, const lm_task_vector *tv,
                          double weight)
{
    lm_plan *p;
    ck_assert_ok(lm_plan_create(f->ctx, "task_arithmetic", &p));
    ck_assert_ok(lm_plan_set_float(p, "lambda", 1.0));
    ck_assert_ok(lm_plan_set_base(p, f->base));
    ck_assert_ok(lm_plan_add_task_vector(p, tv, weight));
    lm_model *out = NULL;
    ck_assert_ok(lm_plan_execute(p, &out));
    lm_plan_destroy(p);
    return out;
}

/* merged[name] == base + factor * (ft - base), or base when !touched. */
static void expect(struct fixture *f, const lm_model *merged,
                   const char *name, double factor)
{
    lm_tensor *b, *t, *m;
    ck_assert_ok(lm_model_find(f->base, name, &b));
    ck_assert_ok(lm_model_find(f->ft, name, &t));
    ck_assert_ok(lm_model_find(merged, name, &m));
    for (size_t i = 0; i < lm_tensor_numel(b); i++) {
        double want = tu_get(b, i) + factor * (tu_get(t, i) - tu_get(b, i));
        ck_assert_msg(fabs(tu_get(m, i) - want) <= 1e-6 * (1 + fabs(want)),
                      "%s[%zu]: %.8f, want %.8f", name, i, tu_get(m, i),
                      want);
    }
}

START_TEST(task_vector_merges_like_its_model)
{
    struct fixture f;
    setup(&f);
    lm_task_vector *tv;
    ck_assert_ok(lm_task_vector_create(f.ctx, f.base, f.ft, &tv));
    lm_model *m = merge_tv(&f, tv, 0.5);
    expect(&f, m, "fc.weight", 0.5);
    expect(&f, m, "fc.bias", 0.5);
    lm_model_destroy(m);
    /* Forgetting: the negated task vector moves away from the task. */
    ck_assert_ok(lm_task_vector_scale(tv, -1.0));
    m = merge_tv(&f, tv, 1.0);
    expect(&f, m, "fc.weight", -1.0);
    lm_model_destroy(m);
    ck_assert_status(lm_task_vector_scale(tv, NAN), LM_ERR_OUT_OF_RANGE);
    lm_task_vector_destroy(tv);
    teardown(&f);
}
END_TEST

/* Saved as a model of deltas and read back: the same merge. */
START_TEST(round_trip_through_a_model)
{
    struct fixture f;
    setup(&f);
    lm_task_vector *tv, *back;
    lm_model *deltas;
    ck_assert_ok(lm_task_vector_create(f.ctx, f.base, f.ft, &tv));
    ck_assert_ok(lm_task_vector_scale(tv, 2.0));
    ck_assert_ok(lm_task_vector_to_model(tv, &deltas));
    ck_assert_uint_eq(lm_model_count(deltas), 2);
    ck_assert_ok(lm_task_vector_from_model(f.ctx, deltas, &back));
    lm_model *m = merge_tv(&f, back, 1.0);
    expect(&f, m, "fc.weight", 2.0);
    expect(&f, m, "fc.bias", 2.0);
    lm_model_destroy(m);
    lm_model *empty;
    ck_assert_ok(lm_model_create(f.ctx, &empty));
    lm_task_vector *none = NULL;
    ck_assert_status(lm_task_vector_from_model(f.ctx, empty, &none),
                     LM_ERR_INVALID_ARGUMENT);
    lm_model_destroy(empty);
    lm_model_destroy(deltas);
    lm_task_vector_destroy(back);
    lm_task_vector_destroy(tv);
    teardown(&f);
}
END_TEST

/* A partial task vector is zero where it has no tensor; one the base
 * lacks, or of another shape, is an error naming it. */
START_TEST(partial_and_mismatched)
{
    struct fixture f;
    setup(&f);
    lm_model *d;
    ck_assert_ok(lm_model_create(f.ctx, &d));
    lm_tensor *b;
    ck_assert_ok(lm_model_find(f.base, "fc.bias", &b));
    lm_tensor *t;
    ck_assert_ok(lm_model_find(f.ft, "fc.bias", &t));
    lm_tensor *delta = tu_random_tensor(f.ctx, LM_F32, 1, (int64_t[]){6}, 9);
    for (size_t i = 0; i < 6; i++)
        ((float *)lm_tensor_data(delta))[i] =
            (float)(tu_get(t, i) - tu_get(b, i));
    ck_assert_ok(lm_model_add(d, "fc.bias", delta));
    lm_task_vector *tv;
    ck_assert_ok(lm_task_vector_from_model(f.ctx, d, &tv));
    lm_model *m = merge_tv(&f, tv, 1.0);
    expect(&f, m, "fc.bias", 1.0);
    expect(&f, m, "fc.weight", 0.0); /* untouched: the base */
    lm_model_destroy(m);
    lm_task_vector_destroy(tv);
    ck_assert_ok(lm_model_add(d, "extra", tu_random_tensor(
                                              f.ctx, LM_F32, 1,
                                              (int64_t[]){2}, 1)));
    ck_assert_ok(lm_task_vector_from_model(f.ctx, d, &tv));
    lm_plan *p;
    ck_assert_ok(lm_plan_create(f.ctx, "task_arithmetic", &p));
    ck_assert_ok(lm_plan_set_base(p, f.base));
    ck_assert_ok(lm_plan_add_task_vector(p, tv, 1.0));
    m = NULL;
    ck_assert_status(lm_plan_execute(p, &m), LM_ERR_NOT_FOUND);
    ck_assert_msg(strstr(lm_context_error(f.ctx), "'extra'") != NULL, "%s",
                  lm_context_error(f.ctx));
    lm_plan_destroy(p);
    lm_task_vector_destroy(tv);
    lm_model_destroy(d);
    ck_assert_ok(lm_model_create(f.ctx, &d));
    ck_assert_ok(lm_model_add(d, "fc.weight", tu_random_tensor(
                                                  f.ctx, LM_F32, 2,
                                                  (int64_t[]){4, 6}, 1)));
    ck_assert_ok(lm_task_vector_from_model(f.ctx, d, &tv));
    ck_assert_ok(lm_plan_create(f.ctx, "task_arithmetic", &p));
    ck_assert_ok(lm_plan_set_base(p, f.base));
    ck_assert_ok(lm_plan_add_task_vector(p, tv, 1.0));
    ck_assert_status(lm_plan_execute(p, &m), LM_ERR_SHAPE);
    lm_plan_destroy(p);
    lm_task_vector_destroy(tv);
    lm_model_destroy(d);
    teardown(&f);
}
END_TEST

/* A LoRA expanded to its task vector merges like the adapter itself, and
 * its delta is scale * B A computed here with loops. */
START_TEST(from_lora)
{
    struct fixture f;
    setup(&f);
    lm_lora *l;
    ck_assert_ok(lm_lora_create(f.ctx, &l));
    lm_tensor *a = tu_random_tensor(f.ctx, LM_F32, 2, (int64_t[]){2, 4}, 5);
    lm_tensor *bb = tu_random_tensor(f.ctx, LM_F32, 2, (int64_t[]){6, 2}, 6);
    ck_assert_ok(lm_lora_add(l, "fc.weight", a, bb, 0.75));
    lm_task_vector *tv;
    ck_assert_ok(lm_task_vector_from_lora(f.ctx, l, f.base, &tv));
    const lm_tensor *d;
    ck_assert_ok(lm_task_vector_find(tv, "fc.weight", &d));
    for (size_t i = 0; i < 6; i++)
        for (size_t j = 0; j < 4; j++) {
            double want = 0;
            for (size_t r = 0; r < 2; r++)
                want += tu_get(bb, i * 2 + r) * tu_get(a, r * 4 + j);
            want *= 0.75;
            ck_assert(fabs(tu_get(d, i * 4 + j) - want) <= 1e-6);
        }
    lm_model *via_tv = merge_tv(&f, tv, 1.0);
    lm_plan *p;
    ck_assert_ok(lm_plan_create(f.ctx, "task_arithmetic", &p));
    ck_assert_ok(lm_plan_set_float(p, "lambda", 1.0));
    ck_assert_ok(lm_plan_set_base(p, f.base));
    ck_assert_ok(lm_plan_add_lora(p, l, 1.0));
    lm_model *via_lora;
    ck_assert_ok(lm_plan_execute(p, &via_lora));
    for (size_t i = 0; i < lm_model_count(via_lora); i++) {
        const lm_tensor *x = lm_model_at(via_lora, i);
        lm_tensor *y;
        ck_assert_ok(lm_model_find(via_tv, lm_model_name_at(via_lora, i), &y));
        /* The adapter goes the fused path (one sgemm of the scaled
         * factors added to the base in f32): equal up to f32 rounding. */
        for (size_t e = 0; e < lm_tensor_numel(x); e++)
            ck_assert(fabs(tu_get(x, e) - tu_get(y, e)) <=
                      1e-6 * (1.0 + fabs(tu_get(y, e))));
    }
    lm_model_destroy(via_tv);
    lm_model_destroy(via_lora);
    lm_plan_destroy(p);
    lm_task_vector_destroy(tv);
    lm_lora_destroy(l);
    teardown(&f);
}
END_TEST

/* A load-time merger takes task vectors too, with the same result. */
START_TEST(merger_matches_execution)
{
    struct fixture f;
    setup(&f);
    lm_task_vector *tv;
    ck_assert_ok(lm_task_vector_create(f.ctx, f.base, f.ft, &tv));
    lm_plan *p;
    ck_assert_ok(lm_plan_create(f.ctx, "ties", &p));
    ck_assert_ok(lm_plan_set_base(p, f.base));
    ck_assert_ok(lm_plan_add_task_vector(p, tv, 1.0));
    ck_assert_ok(lm_plan_add_model(p, f.ft, 0.5));
    lm_model *m;
    ck_assert_ok(lm_plan_execute(p, &m));
    lm_merger *mg;
    ck_assert_ok(lm_merger_create(p, &mg));
    ck_assert_int_eq(lm_merger_touches(mg, "fc.weight"), 1);
    tu_assert_merger_matches(f.ctx, mg, f.base, m);
    lm_merger_destroy(mg);
    lm_model_destroy(m);
    lm_plan_destroy(p);
    lm_task_vector_destroy(tv);
    teardown(&f);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("task_vector_input");
    TCase *tc = tcase_create("plan");
    tcase_add_test(tc, task_vector_merges_like_its_model);
    tcase_add_test(tc, round_trip_through_a_model);
    tcase_add_test(tc, partial_and_mismatched);
    tcase_add_test(tc, from_lora);
    tcase_add_test(tc, merger_matches_execution);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run(suite());
}
