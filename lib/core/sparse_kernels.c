/* The fused paths' element loops (core/sparse_kernels.h), built once per
 * instruction set (core/simd.h). Each is a plain loop over one block,
 * branch-free, so that every build vectorises it; the per-element
 * operations are those of the plain path, in the same order. */
#include <math.h>
#include <string.h>

#include "core/fused_simd.h"
#include "core/sparse_kernels.h"

#ifdef __AVX512F__
#include <immintrin.h>
#endif

bool LM_SIMD(lm__sk_any_nonfinite_f32)(const float *x, size_t n)
{
    return lm__simd_any_nonfinite_f32(x, n);
}

void LM_SIMD(lm__sk_bf16_to_f32)(const uint16_t *src, float *dst, size_t n)
{
    lm__simd_bf16_to_f32(src, dst, n);
}

void LM_SIMD(lm__sk_f32_to_bf16)(const float *src, uint16_t *dst, size_t n)
{
    lm__simd_f32_to_bf16(src, dst, n);
}

void LM_SIMD(lm__sk_sub)(const float *x, const float *b, float *d,
                         size_t len)
{
    for (size_t j = 0; j < len; j++)
        d[j] = x[j] - b[j];
}

bool LM_SIMD(lm__sk_delta_bf16)(const uint16_t *x, const float *b, float *d,
                                size_t len)
{
    uint32_t bad = 0;
    for (size_t j = 0; j < len; j++) {
        uint32_t u = (uint32_t)x[j] << 16;
        float v;
        memcpy(&v, &u, sizeof(v));
        bad |= (uint32_t)((u & 0x7f800000u) == 0x7f800000u);
        d[j] = v - b[j];
    }
    return bad != 0;
}

bool LM_SIMD(lm__sk_delta_f32)(const float *x, const float *b, float *d,
                               size_t len)
{
    uint32_t bad = 0;
    for (size_t j = 0; j < len; j++) {
        uint32_t u;
        memcpy(&u, &x[j], sizeof(u));
        bad |= (uint32_t)((u & 0x7f800000u) == 0x7f800000u);
        d[j] = x[j] - b[j];
    }
    return bad != 0;
}

void LM_SIMD(lm__sk_add)(const float *v, const float *b, float *o,
                         size_t len)
{
    for (size_t j = 0; j < len; j++)
        o[j] = v[j] + b[j];
}

void LM_SIMD(lm__sk_scale)(float *x, size_t len, double scale)
{
    for (size_t j = 0; j < len; j++)
        x[j] = (float)(x[j] * scale);
}

void LM_SIMD(lm__sk_count)(float *a, size_t len, float top, float bottom,
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

/* Elements per group of the portable band: a group with no band member
 * (most, at a few percent of members) is skipped after a vectorised
 * test. */
#define BAND_GROUP 16

#ifdef __AVX512F__
/* AVX-512's compress (into a register, then one store: the store form is
 * slow on some cores). A vector's store runs up to 16 floats past its
 * members, which out's room for len covers (n <= j). */
size_t LM_SIMD(lm__sk_band)(const float *a, size_t len, float bottom,
                            float top, float *out)
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
#else
size_t LM_SIMD(lm__sk_band)(const float *a, size_t len, float bottom,
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
#endif

#ifdef __AVX512F__
/* The counting pass's one look at a block: the four counts as
 * lm__sk_count and the band as lm__sk_band, in one loop over the
 * magnitudes (not stored back: nothing reads them after). The counts are
 * kept per lane as how many are > top, >= top, > bottom and >= bottom
 * (a masked add each, no mask-to-integer moves), the equalities and the
 * band their differences at the end. */
size_t LM_SIMD(lm__sk_count_band)(float *d, size_t len, float top,
                                  float bottom, uint32_t c[4], float *out)
{
    __m512 lo = _mm512_set1_ps(bottom), hi = _mm512_set1_ps(top);
    __m512i abs_bits = _mm512_set1_epi32(0x7fffffff);
    __m512i one = _mm512_set1_epi32(1), gt_hi = _mm512_setzero_si512();
    __m512i ge_hi = gt_hi, gt_lo = gt_hi, ge_lo = gt_hi;
    size_t n = 0, j = 0;
    for (; j + 16 <= len; j += 16) {
        __m512 v = _mm512_castsi512_ps(_mm512_and_si512(
            _mm512_castps_si512(_mm512_loadu_ps(d + j)), abs_bits));
        __mmask16 m_ge_hi = _mm512_cmp_ps_mask(v, hi, _CMP_GE_OQ);
        __mmask16 m_gt_lo = _mm512_cmp_ps_mask(v, lo, _CMP_GT_OQ);
        gt_hi = _mm512_mask_add_epi32(
            gt_hi, _mm512_cmp_ps_mask(v, hi, _CMP_GT_OQ), gt_hi, one);
        ge_hi = _mm512_mask_add_epi32(ge_hi, m_ge_hi, ge_hi, one);
        gt_lo = _mm512_mask_add_epi32(gt_lo, m_gt_lo, gt_lo, one);
        ge_lo = _mm512_mask_add_epi32(
            ge_lo, _mm512_cmp_ps_mask(v, lo, _CMP_GE_OQ), ge_lo, one);
        __mmask16 in = _kandn_mask16(m_ge_hi, m_gt_lo);
        _mm512_storeu_ps(out + n, _mm512_maskz_compress_ps(in, v));
        n += (size_t)__builtin_popcount(in);
    }
    uint32_t above = (uint32_t)_mm512_reduce_add_epi32(gt_hi);
    uint32_t at_hi = (uint32_t)_mm512_reduce_add_epi32(ge_hi) - above;
    /* bottom == top: an element equal to both counts once, at top. */
    uint32_t at_lo = bottom < top
                         ? (uint32_t)(_mm512_reduce_add_epi32(ge_lo) -
                                      _mm512_reduce_add_epi32(gt_lo))
                         : 0;
    for (; j < len; j++) {
        float m = fabsf(d[j]);
        above += m > top;
        at_hi += m == top;
        at_lo += (m == bottom) & (m < top);
        out[n] = m;
        n += (m > bottom) & (m < top);
    }
    c[0] = above;
    c[1] = at_hi;
    c[2] = at_lo;
    c[3] = (uint32_t)n;
    return n;
}
#else
/* Without AVX-512 the two loops as they are: a group of 16 that counts
 * and tests at once vectorises worse than either. */
size_t LM_SIMD(lm__sk_count_band)(float *d, size_t len, float top,
                                  float bottom, uint32_t c[4], float *out)
{
    LM_SIMD(lm__sk_count)(d, len, top, bottom, c);
    return c[3] ? LM_SIMD(lm__sk_band)(d, len, bottom, top, out) : 0;
}
#endif

size_t LM_SIMD(lm__sk_count_eq)(const float *d, size_t len, float thr)
{
    uint32_t tied = 0;
    for (size_t j = 0; j < len; j++)
        tied += fabsf(d[j]) == thr;
    return tied;
}

void LM_SIMD(lm__sk_trim)(float *d, size_t len, float thr, bool keep_equal)
{
    if (keep_equal)
        for (size_t j = 0; j < len; j++)
            d[j] = fabsf(d[j]) >= thr ? d[j] : 0.0f;
    else
        for (size_t j = 0; j < len; j++)
            d[j] = fabsf(d[j]) > thr ? d[j] : 0.0f;
}

/* core/l1_norm.h's block sum: four f64 lanes, so that two adds run per
 * instruction without reassociating anything. */
double LM_SIMD(lm__sk_l1_block)(const float *x, size_t len)
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
