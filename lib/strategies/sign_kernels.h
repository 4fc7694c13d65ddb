/* The element loops behind strategies/sign_merge.h's DARE mask and sign
 * election and sparsify.h's weighted sum, in the build at hand (the
 * entries of core/simd.h's table). Not installed. */
#ifndef LM_STRATEGIES_SIGN_KERNELS_H
#define LM_STRATEGIES_SIGN_KERNELS_H

#include "core/simd.h"
#include "strategies/sign_merge.h"

/* lm__dare_mask's mask on elements [offset, offset + len) of the tensor,
 * held in x[0..len) (the fused path's blocks reach it through
 * core/simd.h): each draw depends on the element's index in the whole
 * tensor, so blocks give the whole tensor's mask bit for bit. */
void LM_SIMD(lm__dare_mask_kernel)(float *x, size_t len, size_t offset,
                                   double density, bool rescale,
                                   uint64_t seed, size_t task);
/* lm__sign_merge. */
void LM_SIMD(lm__sign_merge_kernel)(const float *const *tasks,
                                    const double *weights, size_t n_tasks,
                                    size_t n,
                                    const struct lm__sign_merge_opts *o,
                                    float *out);
/* out = (float)(lambda * (sum_t weights[t] * rows[t] / div)), tasks
 * summed in order per element in f64. */
void LM_SIMD(lm__weighted_sum_kernel)(const float *const *rows,
                                      const double *weights, size_t n_tasks,
                                      size_t n, double lambda, double div,
                                      float *out);

#endif
