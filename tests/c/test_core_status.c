/* Version queries and status text. */
#include <string.h>

#include "testutil.h"

START_TEST(version_matches_headers)
{
    ck_assert_uint_eq(lm_version(), LM_VERSION_NUMBER);
    ck_assert_str_eq(lm_version_string(), LM_VERSION_STRING);
    ck_assert_uint_eq(LM_VERSION_NUMBER, LM_VERSION_MAJOR * 10000 +
                                             LM_VERSION_MINOR * 100 +
                                             LM_VERSION_PATCH);
}
END_TEST

START_TEST(status_values_are_pinned)
{
    /* These numbers are ABI: a change here breaks every binding. */
    ck_assert_int_eq(LM_OK, 0);
    ck_assert_int_eq(LM_ERR_INVALID_ARGUMENT, -1);
    ck_assert_int_eq(LM_ERR_OUT_OF_MEMORY, -2);
    ck_assert_int_eq(LM_ERR_SHAPE, -3);
    ck_assert_int_eq(LM_ERR_DTYPE, -4);
    ck_assert_int_eq(LM_ERR_NOT_FOUND, -5);
    ck_assert_int_eq(LM_ERR_EXISTS, -6);
    ck_assert_int_eq(LM_ERR_OUT_OF_RANGE, -7);
    ck_assert_int_eq(LM_ERR_IO, -8);
    ck_assert_int_eq(LM_ERR_FORMAT, -9);
    ck_assert_int_eq(LM_ERR_LINALG, -10);
    ck_assert_int_eq(LM_ERR_CALLBACK, -11);
    ck_assert_int_eq(LM_ERR_UNSUPPORTED, -12);
    ck_assert_int_eq(LM_ERR_NONFINITE, -13);
    ck_assert_int_eq(LM_ERR_ABI, -14);
    ck_assert_int_eq(LM_ERR_STATE, -15);
    ck_assert_int_eq(LM_ERR_CANCELLED, -16);
    ck_assert_int_eq(LM_ERR_INTERNAL, -17);
}
END_TEST

START_TEST(every_status_has_distinct_text)
{
    const char *seen[18];
    for (int s = 0; s >= -17; s--) {
        const char *text = lm_strerror(s);
        ck_assert_ptr_nonnull(text);
        ck_assert_str_ne(text, "unknown status");
        for (int j = 0; j < -s; j++)
            ck_assert_str_ne(text, seen[j]);
        seen[-s] = text;
    }
    ck_assert_str_eq(lm_strerror(-18), "unknown status");
    ck_assert_str_eq(lm_strerror(5), "unknown status");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("status");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, version_matches_headers);
    tcase_add_test(tc, status_values_are_pinned);
    tcase_add_test(tc, every_status_has_distinct_text);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
