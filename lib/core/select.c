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
