/* The fused sparse path's element loops (core/sparse_kernels.h). Each is
 * a plain loop over one block, branch-free, so that every clone
 * vectorises it; the per-element operations are those fused_sparse.c
 * ran inline before, in the same order. */
#include <math.h>
#include <string.h>

#include "core/sparse_kernels.h"
#include "core/vector_clones.h"

#ifdef LM_VECTOR_AVX512
#include <immintrin.h>
#endif

LM_VECTOR_CLONES
static void sk_sub_clones(const float *x, const float *b, float *d, size_t len)
{
    for (size_t j = 0; j < len; j++)
        d[j] = x[j] - b[j];
}

void lm__sk_sub(const float *x, const float *b, float *d, size_t len)
{
    sk_sub_clones(x, b, d, len);
}

LM_VECTOR_CLONES
static void sk_add_clones(const float *v, const float *b, float *o, size_t len)
{
    for (size_t j = 0; j < len; j++)
        o[j] = v[j] + b[j];
}

void lm__sk_add(const float *v, const float *b, float *o, size_t len)
{
    sk_add_clones(v, b, o, len);
}

LM_VECTOR_CLONES
static void sk_scale_clones(float *x, size_t len, double scale)
{
    for (size_t j = 0; j < len; j++)
        x[j] = (float)(x[j] * scale);
}

void lm__sk_scale(float *x, size_t len, double scale)
{
    sk_scale_clones(x, len, scale);
}

LM_VECTOR_CLONES
static void sk_count_clones(float *a, size_t len, float top, float bottom,
                            uint32_t c[4])
{
    uint32_t above = 0, eq_hi = 0, eq_lo = 0, band = 0;
    for (size_t j = 0; j < len; j++) {
        float m = fabsf(a[j]);
        a[j] = m;
        above += m > top;
        eq_hi += m == top;
        eq_lo += (m == bottom) & (m < top); /* lo == hi counts once */
        band += (m > bottom) & (m < top);
    }
    c[0] = above;
    c[1] = eq_hi;
    c[2] = eq_lo;
    c[3] = band;
}

void lm__sk_count(float *a, size_t len, float top, float bottom,
                  uint32_t c[4])
{
    sk_count_clones(a, len, top, bottom, c);
}

/* Elements per group of lm__sk_band: a group with no band member (most,
 * at a few percent of members) is skipped after a vectorised test. */
#define BAND_GROUP 16

#ifdef LM_VECTOR_AVX512
/* lm__sk_band by AVX-512's compress (into a register, then one store:
 * the store form is slow on some cores). A vector's store runs up to 16
 * floats past its members, which out's room for len covers (n <= j). */
__attribute__((target("avx512f"))) static size_t
band_avx512(const float *a, size_t len, float bottom, float top, float *out)
{
    __m512 lo = _mm512_set1_ps(bottom), hi = _mm512_set1_ps(top);
    size_t n = 0, j = 0;
    for (; j + 16 <= len; j += 16) {
        __m512 v = _mm512_loadu_ps(a + j);
        __mmask16 in = _mm512_cmp_ps_mask(v, lo, _CMP_GT_OQ) &
                       _mm512_cmp_ps_mask(v, hi, _CMP_LT_OQ);
        if (!in)
            continue;
        _mm512_storeu_ps(out + n, _mm512_maskz_compress_ps(in, v));
        n += (size_t)__builtin_popcount(in);
    }
    for (; j < len; j++) {
        out[n] = a[j];
        n += (a[j] > bottom) & (a[j] < top);
    }
    return n;
}
#endif

LM_VECTOR_CLONES
static size_t sk_band_portable_clones(const float *a, size_t len, float bottom,
                                      float top, float *out)
{
    size_t n = 0;
    for (size_t g = 0; g < len; g += BAND_GROUP) {
        size_t end = len - g < BAND_GROUP ? len : g + BAND_GROUP;
        uint32_t any = 0;
        for (size_t j = g; j < end; j++)
            any |= (uint32_t)((a[j] > bottom) & (a[j] < top));
        if (!any)
            continue;
        for (size_t j = g; j < end; j++) {
            out[n] = a[j];
            n += (a[j] > bottom) & (a[j] < top);
        }
    }
    return n;
}

size_t lm__sk_band_portable(const float *a, size_t len, float bottom,
                            float top, float *out)
{
    return sk_band_portable_clones(a, len, bottom, top, out);
}

size_t lm__sk_band(const float *a, size_t len, float bottom, float top,
                   float *out)
{
#ifdef LM_VECTOR_AVX512
    if (__builtin_cpu_supports("avx512f"))
        return band_avx512(a, len, bottom, top, out);
#endif
    return lm__sk_band_portable(a, len, bottom, top, out);
}

LM_VECTOR_CLONES
static size_t sk_count_eq_clones(const float *d, size_t len, float thr)
{
    uint32_t tied = 0;
    for (size_t j = 0; j < len; j++)
        tied += fabsf(d[j]) == thr;
    return tied;
}

size_t lm__sk_count_eq(const float *d, size_t len, float thr)
{
    return sk_count_eq_clones(d, len, thr);
}

LM_VECTOR_CLONES
static void sk_trim_clones(float *d, size_t len, float thr, bool keep_equal)
{
    if (keep_equal)
        for (size_t j = 0; j < len; j++)
            d[j] = fabsf(d[j]) >= thr ? d[j] : 0.0f;
    else
        for (size_t j = 0; j < len; j++)
            d[j] = fabsf(d[j]) > thr ? d[j] : 0.0f;
}

void lm__sk_trim(float *d, size_t len, float thr, bool keep_equal)
{
    sk_trim_clones(d, len, thr, keep_equal);
}

/* Bins of one pass of lm__sk_kth_largest_nonneg: 11, 11 and 10 bits of
 * the 32, high to low. */
#define RADIX_BINS 2048

float lm__sk_kth_largest_nonneg(const float *a, size_t n, size_t k)
{
    static const int shift[3] = {21, 10, 0};
    static const uint32_t width[3] = {2048, 2048, 1024};
    uint32_t prefix = 0, mask = 0;
    size_t want = k; /* rank among the elements matching prefix so far */
    for (int p = 0; p < 3; p++) {
        /* Bin RADIX_BINS takes the elements outside the prefix, so the
         * loop has no branch on the data. */
        size_t hist[RADIX_BINS + 1] = {0};
        uint32_t bins = width[p] - 1;
        for (size_t i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, &a[i], sizeof(u));
            uint32_t bin = (u >> shift[p]) & bins;
            hist[(u & mask) == prefix ? bin : RADIX_BINS]++;
        }
        uint32_t b = bins;
        while (hist[b] < want) { /* from the largest bin down */
            want -= hist[b];
            b--;
        }
        prefix |= b << shift[p];
        mask |= bins << shift[p];
    }
    float v;
    memcpy(&v, &prefix, sizeof(v));
    return v;
}
