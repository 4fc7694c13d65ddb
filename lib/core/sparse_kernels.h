/* The element loops of the fused paths (core/fused.c, fused_sparse.c,
 * fused_lora.c), one block at a time, built once per instruction set and
 * reached through core/simd.h's table (these are its entries' names in
 * the build at hand). Not installed. */
#ifndef LM_CORE_SPARSE_KERNELS_H
#define LM_CORE_SPARSE_KERNELS_H

#include "core/simd.h"

/* Any Inf/NaN among x[0..n)? */
bool LM_SIMD(lm__sk_any_nonfinite_f32)(const float *x, size_t n);
/* bf16 <-> f32 as lm_convert, bit for bit. */
void LM_SIMD(lm__sk_bf16_to_f32)(const uint16_t *src, float *dst, size_t n);
void LM_SIMD(lm__sk_f32_to_bf16)(const float *src, uint16_t *dst, size_t n);

/* d = x - b, rounded to f32 (a task vector). */
void LM_SIMD(lm__sk_sub)(const float *x, const float *b, float *d,
                         size_t len);
/* d = x - b with x in bf16 (widened exactly) or f32: lm__sk_sub on the
 * converted input without the intermediate f32 copy, and whether some
 * x[j] is Inf or NaN (lm__sk_any_nonfinite_f32 of the converted x). */
bool LM_SIMD(lm__sk_delta_bf16)(const uint16_t *x, const float *b, float *d,
                                size_t len);
bool LM_SIMD(lm__sk_delta_f32)(const float *x, const float *b, float *d,
                               size_t len);
/* o = v + b. */
void LM_SIMD(lm__sk_add)(const float *v, const float *b, float *o,
                         size_t len);
/* x = (float)(x * scale), the product in f64 (lm__rescale_l1's). */
void LM_SIMD(lm__sk_scale)(float *x, size_t len, double scale);

/* a = |a|, and how many of them are > top, == top, == bottom (< top),
 * and strictly between bottom and top: c[0..3]. */
void LM_SIMD(lm__sk_count)(float *a, size_t len, float top, float bottom,
                           uint32_t c[4]);
/* Appends the magnitudes a[j] with bottom < a[j] < top to out in index
 * order; out has room for len. Returns how many. (AVX-512's build uses
 * its compress instruction; core_sparse_kernels compares the builds.) */
size_t LM_SIMD(lm__sk_band)(const float *a, size_t len, float bottom,
                            float top, float *out);

/* lm__sk_count then lm__sk_band on d (which may be left as |d|): the
 * counts in c[0..3] (c[3] the band's size, also returned) and the band
 * appended to out (room for len); AVX-512's build in one pass. */
size_t LM_SIMD(lm__sk_count_band)(float *d, size_t len, float top,
                                  float bottom, uint32_t c[4], float *out);

/* How many |d[j]| == thr. */
size_t LM_SIMD(lm__sk_count_eq)(const float *d, size_t len, float thr);
/* Zeroes d[j] unless |d[j]| > thr, or == thr with keep_equal. */
void LM_SIMD(lm__sk_trim)(float *d, size_t len, float thr, bool keep_equal);

/* Sum of |x_i| over one block (core/l1_norm.h's order). */
double LM_SIMD(lm__sk_l1_block)(const float *x, size_t len);

#endif
