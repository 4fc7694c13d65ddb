/* Named tensor sets and task vectors. */
#include <stdio.h>
#include <string.h>

#include "testutil.h"

START_TEST(add_find_order)
{
    lm_context *ctx = tu_context(1, 0);
    lm_model *m = NULL;
    ck_assert_ok(lm_model_create(ctx, &m));
    int64_t shape[1] = {3};
    char name[32];
    for (int i = 0; i < 100; i++) { /* forces several index rehashes */
        snprintf(name, sizeof(name), "layer.%d.weight", 99 - i);
        tu_add_random(ctx, m, name, LM_F32, 1, shape, (uint64_t)i);
    }
    ck_assert_uint_eq(lm_model_count(m), 100);
    ck_assert_str_eq(lm_model_name_at(m, 0), "layer.99.weight");
    ck_assert_str_eq(lm_model_name_at(m, 99), "layer.0.weight");
    ck_assert_ptr_null(lm_model_name_at(m, 100));
    ck_assert_ptr_null(lm_model_at(m, 100));
    for (int i = 0; i < 100; i++) {
        snprintf(name, sizeof(name), "layer.%d.weight", i);
        lm_tensor *t = NULL;
        ck_assert_ok(lm_model_find(m, name, &t));
        ck_assert_ptr_eq(t, lm_model_at(m, (size_t)(99 - i)));
    }
    lm_tensor *t = NULL;
    ck_assert_status(lm_model_find(m, "nope", &t), LM_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "'nope'"));
    lm_model_destroy(m);
    lm_model_destroy(NULL);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(duplicate_and_empty_names)
{
    lm_context *ctx = tu_context(1, 0);
    lm_model *m = NULL;
    ck_assert_ok(lm_model_create(ctx, &m));
    int64_t shape[1] = {2};
    tu_add_random(ctx, m, "w", LM_F32, 1, shape, 1);
    lm_tensor *t = tu_random_tensor(ctx, LM_F32, 1, shape, 2);
    ck_assert_status(lm_model_add(m, "w", t), LM_ERR_EXISTS);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "duplicate"));
    ck_assert_status(lm_model_add(m, "", t), LM_ERR_INVALID_ARGUMENT);
    ck_assert_status(lm_model_add(m, NULL, t), LM_ERR_INVALID_ARGUMENT);
    lm_tensor_destroy(t); /* still ours after failed adds */
    lm_model_destroy(m);
    lm_context_destroy(ctx);
}
END_TEST

static lm_model *pair_model(lm_context *ctx, uint64_t seed, lm_dtype dtype)
{
    lm_model *m = NULL;
    ck_assert_ok(lm_model_create(ctx, &m));
    tu_add_random(ctx, m, "a", dtype, 2, (int64_t[]){4, 3}, seed);
    tu_add_random(ctx, m, "b", dtype, 1, (int64_t[]){5}, seed + 1);
    return m;
}

START_TEST(task_vector_is_difference)
{
    lm_context *ctx = tu_context(1, 0);
    lm_dtype types[] = {LM_F32, LM_F16, LM_BF16, LM_F64};
    for (size_t k = 0; k < 4; k++) {
        lm_model *base = pair_model(ctx, 10, types[k]);
        lm_model *ft = pair_model(ctx, 20, types[k]);
        lm_task_vector *tv = NULL;
        ck_assert_ok(lm_task_vector_create(ctx, base, ft, &tv));
        ck_assert_uint_eq(lm_task_vector_count(tv), 2);
        ck_assert_str_eq(lm_task_vector_name_at(tv, 1), "b");
        for (size_t j = 0; j < 2; j++) {
            const char *name = lm_model_name_at(base, j);
            const lm_tensor *d = NULL;
            ck_assert_ok(lm_task_vector_find(tv, name, &d));
            ck_assert_int_eq(lm_tensor_dtype(d), LM_F32);
            lm_tensor *bt, *ftt;
            lm_model_find(base, name, &bt);
            lm_model_find(ft, name, &ftt);
            for (size_t i = 0; i < lm_tensor_numel(d); i++)
                ck_assert(tu_get(d, i) ==
                          (double)(float)(tu_get(ftt, i) - tu_get(bt, i)));
        }
        const lm_tensor *d = NULL;
        ck_assert_status(lm_task_vector_find(tv, "zzz", &d), LM_ERR_NOT_FOUND);
        lm_task_vector_destroy(tv);
        lm_model_destroy(base);
        lm_model_destroy(ft);
    }
    lm_task_vector_destroy(NULL);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(task_vector_checks)
{
    lm_context *ctx = tu_context(1, 0);
    lm_model *base = pair_model(ctx, 1, LM_F32);
    lm_task_vector *tv = NULL;

    lm_model *bad_shape = NULL;
    lm_model_create(ctx, &bad_shape);
    tu_add_random(ctx, bad_shape, "a", LM_F32, 2, (int64_t[]){3, 4}, 1);
    tu_add_random(ctx, bad_shape, "b", LM_F32, 1, (int64_t[]){5}, 1);
    ck_assert_status(lm_task_vector_create(ctx, base, bad_shape, &tv),
                     LM_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "'a'"));
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "[3,4]"));

    /* Dtypes may differ (a bf16 base with f32 fine-tunes is common). */
    lm_model *bad_dtype = pair_model(ctx, 2, LM_F16);
    ck_assert_ok(lm_task_vector_create(ctx, base, bad_dtype, &tv));
    lm_task_vector_destroy(tv);
    tv = NULL;

    lm_model *missing = NULL;
    lm_model_create(ctx, &missing);
    tu_add_random(ctx, missing, "a", LM_F32, 2, (int64_t[]){4, 3}, 1);
    ck_assert_status(lm_task_vector_create(ctx, base, missing, &tv),
                     LM_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "'b'"));

    lm_model *extra = pair_model(ctx, 3, LM_F32);
    tu_add_random(ctx, extra, "head", LM_F32, 1, (int64_t[]){2}, 1);
    ck_assert_status(lm_task_vector_create(ctx, base, extra, &tv),
                     LM_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "'head'"));
    ck_assert_ptr_null(tv);
    ck_assert_status(lm_task_vector_create(ctx, NULL, extra, &tv),
                     LM_ERR_INVALID_ARGUMENT);

    lm_model_destroy(bad_shape);
    lm_model_destroy(bad_dtype);
    lm_model_destroy(missing);
    lm_model_destroy(extra);
    lm_model_destroy(base);
    lm_context_destroy(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, add_find_order);
    tcase_add_test(tc, duplicate_and_empty_names);
    tcase_add_test(tc, task_vector_is_difference);
    tcase_add_test(tc, task_vector_checks);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
