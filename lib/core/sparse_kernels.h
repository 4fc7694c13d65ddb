/* The element loops of the fused sparse path (core/fused_sparse.c), one
 * block at a time, built with -fno-trapping-math (their compares feed
 * selects) and as vector clones (core/vector_clones.h). Not installed. */
#ifndef LM_CORE_SPARSE_KERNELS_H
#define LM_CORE_SPARSE_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* d = x - b, rounded to f32 (a task vector). */
void lm__sk_sub(const float *x, const float *b, float *d, size_t len);
/* o = v + b. */
void lm__sk_add(const float *v, const float *b, float *o, size_t len);
/* x = (float)(x * scale), the product in f64 (lm__rescale_l1's). */
void lm__sk_scale(float *x, size_t len, double scale);

/* a = |a|, and how many of them are > top, == top, == bottom (< top),
 * and strictly between bottom and top: c[0..3]. */
void lm__sk_count(float *a, size_t len, float top, float bottom,
                  uint32_t c[4]);
/* Appends the magnitudes a[j] with bottom < a[j] < top to out in index
 * order; out has room for len. Returns how many. */
size_t lm__sk_band(const float *a, size_t len, float bottom, float top,
                   float *out);
/* The same without AVX-512's compress (what lm__sk_band runs elsewhere;
 * core_sparse_kernels compares the two). */
size_t lm__sk_band_portable(const float *a, size_t len, float bottom,
                            float top, float *out);

/* How many |d[j]| == thr. */
size_t lm__sk_count_eq(const float *d, size_t len, float thr);
/* Zeroes d[j] unless |d[j]| > thr, or == thr with keep_equal. */
void lm__sk_trim(float *d, size_t len, float thr, bool keep_equal);

/* The k-th largest (1-based, 1 <= k <= n) of n floats that are all >= 0
 * (+0.0, not -0.0) and not NaN — magnitudes — whose bit patterns then
 * order as their values: the same value as lm__kth_largest, found by
 * three histogram passes (11, 11, 10 bits) instead of a quickselect's
 * data-dependent branches; a is not changed. */
float lm__sk_kth_largest_nonneg(const float *a, size_t n, size_t k);

#endif
