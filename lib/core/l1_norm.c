/* The L1 norm in its documented order (core/l1_norm.h). */
#include <math.h>

#include "core/l1_norm.h"
#include "core/simd.h"

double lm__l1_norm(const float *x, size_t n)
{
    const struct lm__simd *simd = lm__simd_pick();
    double sum = 0.0;
    for (size_t i = 0; i < n; i += LM__L1_BLOCK)
        sum += simd->l1_block(x + i, n - i < LM__L1_BLOCK ? n - i
                                                          : LM__L1_BLOCK);
    return sum;
}

double lm__l1_rescale_factor(double before, double after)
{
    /* mergekit leaves near-zero vectors alone rather than divide by ~0. */
    if (before < 1e-7 || after < 1e-7)
        return 1.0;
    return before / after;
}
