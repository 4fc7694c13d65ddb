/* lm__l1_norm (lib/core/l1_norm.c) against the order core/l1_norm.h
 * documents, written out here: blocks of 2048 from index 0, four f64
 * lanes per block (lane q over i = q mod 4), (lane0 + lane1) +
 * (lane2 + lane3), blocks added in order. The plain path's L1 rescale and
 * the fused path's streaming pass both rely on it, so the test compares
 * bits (0 ulps), on values whose sum depends on the order (magnitudes
 * 2^40 apart, signs that |.| must drop), at lengths around the block and
 * lane boundaries. A plain index-order sum differs on these inputs (also
 * checked, so that the test can tell the orders apart). */
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "core/l1_norm.h"
#include "testutil.h"

#define MAX_N (3 * 2048 + 5)

static double documented(const float *x, size_t n)
{
    double total = 0.0;
    for (size_t b = 0; b < n; b += 2048) {
        size_t len = n - b < 2048 ? n - b : 2048;
        double lane[4] = {0.0, 0.0, 0.0, 0.0};
        for (size_t i = 0; i < len; i++)
            lane[i % 4] += fabs((double)x[b + i]);
        total += (lane[0] + lane[1]) + (lane[2] + lane[3]);
    }
    return total;
}

START_TEST(l1_norm_in_documented_order)
{
    static float x[MAX_N];
    uint64_t s = 99;
    for (size_t i = 0; i < MAX_N; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        float v = (float)((double)(s >> 40) / 16777216.0);
        x[i] = (s & 1 ? -1.0f : 1.0f) * (i % 7 == 0 ? v * 0x1p40f : v);
    }
    static const size_t lens[] = {0, 1, 3, 4, 5, 2047, 2048, 2049, 4097,
                                  MAX_N};
    bool order_matters = false;
    for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
        double got = lm__l1_norm(x, lens[k]), want = documented(x, lens[k]);
        if (memcmp(&got, &want, sizeof(double)))
            ck_abort_msg("n %zu: %a, documented order %a", lens[k], got,
                         want);
        double plain = 0.0;
        for (size_t i = 0; i < lens[k]; i++)
            plain += fabs((double)x[i]);
        order_matters |= plain != want;
    }
    ck_assert(order_matters);
}
END_TEST

START_TEST(l1_rescale_factor_leaves_near_zero_alone)
{
    ck_assert(lm__l1_rescale_factor(2.0, 0.5) == 4.0);
    ck_assert(lm__l1_rescale_factor(5e-8, 1.0) == 1.0);
    ck_assert(lm__l1_rescale_factor(1.0, 5e-8) == 1.0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("l1_norm");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, l1_norm_in_documented_order);
    tcase_add_test(tc, l1_rescale_factor_leaves_near_zero_alone);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
