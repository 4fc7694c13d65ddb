/* The L1 norm in one fixed summation order, shared by mergekit's L1
 * rescale (strategies/sparsify.c, the plain path) and the fused path's
 * streaming pass (core/fused_sparse.c), so that both find the same sum
 * bit for bit whatever the thread count. Not installed.
 *
 * Order: the vector is cut into blocks of LM__L1_BLOCK elements from
 * index 0 (the fused path's blocks); within a block, lane q (0..3) sums
 * |x_i| in f64 over i = q mod 4 in index order, and the block's sum is
 * (lane0 + lane1) + (lane2 + lane3); blocks are then added in index order,
 * starting from +0.0. Four lanes let the compiler run two f64 adds per
 * instruction without reassociating anything. */
#ifndef LM_CORE_L1_NORM_H
#define LM_CORE_L1_NORM_H

#include <stddef.h>

#define LM__L1_BLOCK 2048

/* Sum of |x_i| over x[0..n): one block's sum (core/simd.h's l1_block,
 * which the fused path calls per block) after another, in block order. */
double lm__l1_norm(const float *x, size_t n);

/* mergekit's L1 rescale factor ||orig||_1 / ||masked||_1, or 1.0 (leave
 * the vector alone) when either norm is below 1e-7. */
double lm__l1_rescale_factor(double before, double after);

#endif
