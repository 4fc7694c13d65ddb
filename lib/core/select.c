/* Quickselect for the k-th largest value (core/select.h). */
#include <stdint.h>
#include <string.h>

#include "core/select.h"

static float median3(float x, float y, float z)
{
    if (x > y) {
        float t = x;
        x = y;
        y = t;
    }
    return z <= x ? x : z >= y ? y : z;
}

float lm__kth_largest(float *a, size_t n, size_t k)
{
    size_t lo = 0, hi = n, want = k - 1;
    while (hi - lo > 1) {
        float pivot = median3(a[lo], a[lo + (hi - lo) / 2], a[hi - 1]);
        size_t lt = lo, i = lo, gt = hi;
        /* [lo, lt) > pivot, [lt, i) == pivot, [gt, hi) < pivot */
        while (i < gt) {
            float v = a[i];
            if (v > pivot) {
                a[i++] = a[lt];
                a[lt++] = v;
            } else if (v < pivot) {
                a[i] = a[--gt];
                a[gt] = v;
            } else {
                i++;
            }
        }
        if (want < lt)
            hi = lt;
        else if (want < gt)
            return pivot;
        else
            lo = gt;
    }
    return a[lo];
}

/* Bins of one pass of lm__kth_largest_nonneg: 11, 11 and 10 bits of the
 * 32, high to low. */
#define RADIX_BINS 2048

float lm__kth_largest_nonneg(const float *a, size_t n, size_t k)
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

/* lm__bracket_nonneg's bins: the top 11 bits of a magnitude (exponent
 * and 3 mantissa bits), then the next 11 within the two bins found. */
#define EDGE_SHIFT 9

void lm__bracket_nonneg(const float *a, size_t n, size_t k_hi, size_t k_lo,
                        float *hi, float *lo)
{
    size_t top[RADIX_BINS] = {0};
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &a[i], sizeof(u));
        top[(u >> 20) & (RADIX_BINS - 1)]++;
    }
    size_t want[2] = {k_hi, k_lo};
    uint32_t bin[2];
    for (int e = 0; e < 2; e++) { /* from the largest bin down */
        uint32_t b = RADIX_BINS - 1;
        while (top[b] < want[e]) {
            want[e] -= top[b];
            b--;
        }
        bin[e] = b;
    }
    /* Elements outside a bin count in one of 8 spare slots (by index, so
     * that consecutive increments do not wait on each other). */
    size_t sub[2][RADIX_BINS + 8] = {{0}};
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &a[i], sizeof(u));
        uint32_t b = (u >> 20) & (RADIX_BINS - 1);
        uint32_t s = (u >> EDGE_SHIFT) & (RADIX_BINS - 1);
        uint32_t spare = RADIX_BINS + (uint32_t)(i & 7);
        sub[0][b == bin[0] ? s : spare]++;
        sub[1][b == bin[1] ? s : spare]++;
    }
    float edge[2];
    for (int e = 0; e < 2; e++) {
        uint32_t s = RADIX_BINS - 1;
        while (sub[e][s] < want[e]) {
            want[e] -= sub[e][s];
            s--;
        }
        /* The upper edge of hi's bin, the lower edge of lo's. */
        uint32_t u = bin[e] << 20 | s << EDGE_SHIFT |
                     (e == 0 ? (1u << EDGE_SHIFT) - 1 : 0);
        memcpy(&edge[e], &u, sizeof(u));
    }
    /* An edge beyond the finite floats (the values are Inf there). */
    *hi = edge[0] == edge[0] ? edge[0] : lm__kth_largest_nonneg(a, n, k_hi);
    *lo = edge[1];
}
