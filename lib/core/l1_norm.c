/* The L1 norm in its documented order (core/l1_norm.h). */
#include <math.h>

#include "core/l1_norm.h"
#include "core/vector_clones.h"

LM_VECTOR_CLONES
static double l1_block_clones(const float *x, size_t len)
{
    double lane[4] = {0.0, 0.0, 0.0, 0.0};
    size_t i = 0;
    for (; i + 4 <= len; i += 4)
        for (size_t q = 0; q < 4; q++)
            lane[q] += fabs((double)x[i + q]);
    for (size_t q = 0; i + q < len; q++)
        lane[q] += fabs((double)x[i + q]);
    return (lane[0] + lane[1]) + (lane[2] + lane[3]);
}

double lm__l1_block(const float *x, size_t len)
{
    return l1_block_clones(x, len);
}

double lm__l1_norm(const float *x, size_t n)
{
    double sum = 0.0;
    for (size_t i = 0; i < n; i += LM__L1_BLOCK)
        sum += lm__l1_block(x + i, n - i < LM__L1_BLOCK ? n - i
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
