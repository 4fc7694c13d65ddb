/* Tensor creation, wrapping, access and every status path. */
#include <string.h>

#include "testutil.h"

START_TEST(create_zeroed_and_shape)
{
    lm_context *ctx = tu_context(1, 0);
    int64_t shape[3] = {2, 3, 4};
    lm_tensor *t = NULL;
    ck_assert_ok(lm_tensor_create(ctx, LM_BF16, 3, shape, &t));
    ck_assert_int_eq(lm_tensor_dtype(t), LM_BF16);
    ck_assert_int_eq(lm_tensor_ndim(t), 3);
    ck_assert_int_eq(lm_tensor_dim(t, 2), 4);
    ck_assert_int_eq(lm_tensor_dim(t, 3), -1);
    ck_assert_int_eq(lm_tensor_dim(t, -1), -1);
    ck_assert_uint_eq(lm_tensor_numel(t), 24);
    ck_assert_uint_eq(lm_tensor_nbytes(t), 48);
    ck_assert_int_eq(lm_tensor_is_wrapped(t), 0);
    const uint16_t *d = lm_tensor_cdata(t);
    for (int i = 0; i < 24; i++)
        ck_assert_uint_eq(d[i], 0);
    lm_tensor_destroy(t);
    lm_tensor_destroy(NULL);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(scalar_empty_and_max_dims)
{
    lm_context *ctx = tu_context(1, 0);
    lm_tensor *t = NULL;
    ck_assert_ok(lm_tensor_create(ctx, LM_F64, 0, NULL, &t));
    ck_assert_uint_eq(lm_tensor_numel(t), 1);
    lm_tensor_destroy(t);
    int64_t empty[2] = {0, 5};
    ck_assert_ok(lm_tensor_create(ctx, LM_F32, 2, empty, &t));
    ck_assert_uint_eq(lm_tensor_numel(t), 0);
    lm_tensor_destroy(t);
    int64_t eight[8] = {1, 2, 1, 2, 1, 2, 1, 2};
    ck_assert_ok(lm_tensor_create(ctx, LM_F16, 8, eight, &t));
    ck_assert_uint_eq(lm_tensor_numel(t), 16);
    lm_tensor_destroy(t);
    int64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    ck_assert_status(lm_tensor_create(ctx, LM_F16, 9, nine, &t), LM_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "ndim 9"));
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(bad_arguments)
{
    lm_context *ctx = tu_context(1, 0);
    lm_tensor *t = NULL;
    int64_t neg[2] = {3, -1};
    ck_assert_status(lm_tensor_create(ctx, LM_F32, 2, neg, &t), LM_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "negative"));
    int64_t huge[2] = {INT64_MAX, INT64_MAX};
    ck_assert_status(lm_tensor_create(ctx, LM_F32, 2, huge, &t), LM_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "overflow"));
    int64_t ok[1] = {4};
    ck_assert_status(lm_tensor_create(ctx, (lm_dtype)11, 1, ok, &t),
                     LM_ERR_DTYPE);
    ck_assert_status(lm_tensor_create(NULL, LM_F32, 1, ok, &t),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_status(lm_tensor_create(ctx, LM_F32, 1, NULL, &t),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_status(lm_tensor_create(ctx, LM_F32, 1, ok, NULL),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_null(t);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(wrap_is_zero_copy)
{
    lm_context *ctx = tu_context(1, 0);
    float data[6] = {1, 2, 3, 4, 5, 6};
    int64_t shape[2] = {2, 3};
    lm_tensor *t = NULL;
    ck_assert_ok(lm_tensor_wrap(ctx, LM_F32, 2, shape, data, sizeof(data), &t));
    ck_assert_ptr_eq(lm_tensor_data(t), data);
    ck_assert_int_eq(lm_tensor_is_wrapped(t), 1);
    ck_assert_ok(lm_tensor_set(t, 4, -7.5));
    ck_assert(data[4] == -7.5f);
    lm_tensor_destroy(t); /* must not free caller memory */
    ck_assert(data[0] == 1.0f);

    ck_assert_status(lm_tensor_wrap(ctx, LM_F32, 2, shape, data, 20, &t),
                     LM_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "needs 24"));
    ck_assert_status(lm_tensor_wrap(ctx, LM_F32, 2, shape, NULL, 24, &t),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_status(lm_tensor_wrap(ctx, LM_F32, 1, (int64_t[]){1},
                                    (char *)data + 1, 4, &t),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "aligned"));
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(element_access_converts)
{
    lm_context *ctx = tu_context(1, 0);
    int64_t shape[2] = {2, 2};
    lm_tensor *t = NULL;
    ck_assert_ok(lm_tensor_create(ctx, LM_F16, 2, shape, &t));
    ck_assert_ok(lm_tensor_set(t, 3, 0.1));
    ck_assert_uint_eq(((uint16_t *)lm_tensor_data(t))[3], 0x2e66);
    double v;
    ck_assert_ok(lm_tensor_get_at(t, (int64_t[]){1, 1}, &v));
    ck_assert(v == (double)lm_f16_to_f32(0x2e66));
    ck_assert_status(lm_tensor_get(t, 4, &v), LM_ERR_OUT_OF_RANGE);
    ck_assert_status(lm_tensor_set(t, 4, 1.0), LM_ERR_OUT_OF_RANGE);
    ck_assert_status(lm_tensor_get_at(t, (int64_t[]){2, 0}, &v),
                     LM_ERR_OUT_OF_RANGE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "dimension 0"));
    ck_assert_status(lm_tensor_get(t, 0, NULL), LM_ERR_INVALID_ARGUMENT);
    lm_tensor_destroy(t);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(clone_is_deep)
{
    lm_context *ctx = tu_context(1, 0);
    int64_t shape[1] = {5};
    lm_tensor *a = tu_random_tensor(ctx, LM_F64, 1, shape, 3), *b = NULL;
    ck_assert_ok(lm_tensor_clone(ctx, a, &b));
    ck_assert_ptr_ne(lm_tensor_data(a), lm_tensor_data(b));
    ck_assert_int_eq(memcmp(lm_tensor_data(a), lm_tensor_data(b), 40), 0);
    lm_tensor_set(a, 0, 100.0);
    ck_assert(tu_get(b, 0) != 100.0);
    lm_tensor_destroy(a);
    lm_tensor_destroy(b);
    lm_context_destroy(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tensor");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, create_zeroed_and_shape);
    tcase_add_test(tc, scalar_empty_and_max_dims);
    tcase_add_test(tc, bad_arguments);
    tcase_add_test(tc, wrap_is_zero_copy);
    tcase_add_test(tc, element_access_converts);
    tcase_add_test(tc, clone_is_deep);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
