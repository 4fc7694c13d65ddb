/* Order statistics shared by the strategies' magnitude trims and the
 * fused path's streaming selection (core/fused_sparse.c): one function,
 * so that both find the same threshold. Not installed. */
#ifndef LM_CORE_SELECT_H
#define LM_CORE_SELECT_H

#include <stddef.h>

/* The k-th largest value (1-based, 1 <= k <= n) of a[0..n), by a
 * three-way quickselect (linear on average, no sort); a is permuted.
 * No NaN in a. */
float lm__kth_largest(float *a, size_t n, size_t k);

/* The k-th largest (1-based, 1 <= k <= n) of n floats that are all >= 0
 * (+0.0, not -0.0) and not NaN — magnitudes — whose bit patterns then
 * order as their values: the same value as lm__kth_largest, found by
 * three histogram passes (11, 11, 10 bits) instead of a quickselect's
 * data-dependent branches; a is not changed. */
float lm__kth_largest_nonneg(const float *a, size_t n, size_t k);

/* For magnitudes as lm__kth_largest_nonneg's, 1 <= k_hi <= k_lo <= n:
 * hi >= the k_hi-th largest and lo <= the k_lo-th largest, each at most
 * 2^-13 of its value away (2^-140 for subnormals: the edges of a
 * histogram bin; two passes over a for both, where the exact values take
 * three each). */
void lm__bracket_nonneg(const float *a, size_t n, size_t k_hi, size_t k_lo,
                        float *hi, float *lo);

#endif
