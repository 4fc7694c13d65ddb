/* The element kernels of the fused paths (lib/core/sparse_kernels.c and
 * strategies/sign_kernels.c's DARE mask, through core/simd.h's table),
 * and the radix selection (core/select.c), against scalar references
 * written here from their definitions, bit for bit (tolerance: 0 ulps,
 * compared as bits; counts exactly). Every kernel build this processor
 * runs is checked (baseline, AVX2, AVX-512 on the development machine;
 * valgrind's CPU has no AVX-512, which lm__simd_named then skips).
 * Lengths around vector widths and blocks, pointers off their alignment,
 * inputs with signed zeros, repeated magnitudes, infinities and NaNs. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/fused_private.h"
#include "core/select.h"
#include "core/simd.h"
#include "strategies/sign_merge.h"
#include "testutil.h"

static const size_t lens[] = {0, 1, 7, 15, 16, 17, 31, 33, 255, 2047, 2048};
#define N_LENS (sizeof(lens) / sizeof(lens[0]))
#define ROOM (2048 + 64)

/* Every kernel build this processor runs, in turn, as k. */
static const char *const builds[] = {"baseline", "avx2", "avx512"};
#define FOR_EACH_BUILD(k)                                                    \
    for (size_t b_ = 0; b_ < 3; b_++)                                        \
        for (const struct lm__simd *k = lm__simd_named(builds[b_]); k;       \
             k = NULL)

static uint32_t bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof(u));
    return u;
}

static uint64_t next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Mostly values in (-2, 2), with repeats, signed zeros and (when
 * `special`) infinities and NaNs mixed in. */
static void fill(float *x, size_t n, uint64_t seed, bool special)
{
    static const float v[] = {0.0f, -0.0f, 0.5f, -0.5f, 0.25f, 1.0f, -1.0f};
    uint64_t s = seed * 0x9e3779b97f4a7c15ULL + 1;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = next(&s);
        if (r % 5 == 0)
            x[i] = v[(r >> 8) % (sizeof(v) / sizeof(v[0]))];
        else if (special && r % 97 == 1)
            x[i] = (r >> 8) & 1 ? INFINITY : -INFINITY;
        else if (special && r % 97 == 2)
            x[i] = NAN;
        else
            x[i] = (float)((double)(r >> 11) / 4503599627370496.0 - 1.0);
    }
}

static void same_bits(const float *a, const float *b, size_t n,
                      const char *what, size_t len, size_t off)
{
    for (size_t i = 0; i < n; i++)
        if (bits(a[i]) != bits(b[i]))
            ck_abort_msg("%s: len %zu offset %zu element %zu: %a vs %a",
                         what, len, off, i, (double)a[i], (double)b[i]);
}

START_TEST(arithmetic_kernels)
{
    static float xb[ROOM], bb[ROOM], got[ROOM], want[ROOM];
    FOR_EACH_BUILD(k)
    for (size_t l = 0; l < N_LENS; l++)
        for (size_t off = 0; off < 4; off++) {
            size_t n = lens[l];
            float *x = xb + off, *b = bb + (3 - off);
            fill(x, n, 1 + l, true);
            fill(b, n, 100 + l, true);
            k->sub(x, b, got, n);
            for (size_t i = 0; i < n; i++)
                want[i] = x[i] - b[i];
            same_bits(got, want, n, "sub", n, off);
            /* The fused task vector: x - b, and whether an x is not
             * finite; from bf16, its bits widened by 16 first. */
            bool bad = false;
            for (size_t i = 0; i < n; i++)
                bad |= !isfinite(x[i]);
            for (size_t i = 0; i < n; i++)
                want[i] = x[i] - b[i];
            memset(got, 0, sizeof(got));
            ck_assert_int_eq(k->delta_f32(x, b, got, n), bad);
            same_bits(got, want, n, "delta f32", n, off);
            static uint16_t h[ROOM];
            bad = false;
            for (size_t i = 0; i < n; i++) {
                h[off + i] = (uint16_t)(bits(x[i]) >> 16);
                uint32_t u = (uint32_t)h[off + i] << 16;
                float wide;
                memcpy(&wide, &u, sizeof(wide));
                bad |= !isfinite(wide);
                want[i] = wide - b[i];
            }
            ck_assert_int_eq(k->delta_bf16(h + off, b, got, n), bad);
            same_bits(got, want, n, "delta bf16", n, off);
            k->add(x, b, got, n);
            for (size_t i = 0; i < n; i++)
                want[i] = x[i] + b[i];
            same_bits(got, want, n, "add", n, off);
            memcpy(got, x, n * sizeof(float));
            k->scale(got, n, 1.2345678901234);
            for (size_t i = 0; i < n; i++)
                want[i] = (float)((double)x[i] * 1.2345678901234);
            same_bits(got, want, n, "scale", n, off);
            /* core/l1_norm.h's order: four lanes by index mod 4. */
            double lane[4] = {0.0, 0.0, 0.0, 0.0};
            for (size_t i = 0; i < n; i++)
                lane[i % 4] += fabs((double)x[i]);
            double l1 = (lane[0] + lane[1]) + (lane[2] + lane[3]);
            double l1_got = k->l1_block(x, n);
            if (memcmp(&l1, &l1_got, sizeof(l1)) && !(isnan(l1) && isnan(l1_got)))
                ck_abort_msg("l1 block: len %zu: %a vs %a", n, l1_got, l1);
        }
}
END_TEST

START_TEST(selection_kernels)
{
    static float xb[ROOM], a[ROOM], got[ROOM], want[ROOM];
    /* Thresholds at a repeated magnitude (ties) and between values. */
    static const float bracket[][2] = {
        {0.25f, 0.5f}, {0.1f, 0.9f}, {0.5f, 0.5f}, {0.0f, 0.25f}};
    FOR_EACH_BUILD(k)
    for (size_t l = 0; l < N_LENS; l++)
        for (size_t off = 0; off < 4; off++)
            for (size_t q = 0; q < 4; q++) {
                size_t n = lens[l];
                float *x = xb + off, lo = bracket[q][0], hi = bracket[q][1];
                fill(x, n, 7 * l + q, q == 3);
                memcpy(a, x, n * sizeof(float));
                uint32_t c[4];
                k->count(a, n, hi, lo, c);
                uint32_t w[4] = {0, 0, 0, 0};
                size_t nb = 0;
                for (size_t i = 0; i < n; i++) {
                    float m = fabsf(x[i]);
                    want[i] = m;
                    if (m > hi)
                        w[0]++;
                    else if (m == hi)
                        w[1]++;
                    else if (m == lo)
                        w[2]++;
                    else if (m > lo && m < hi)
                        w[3]++;
                }
                same_bits(a, want, n, "count's magnitudes", n, off);
                for (int q2 = 0; q2 < 4; q2++)
                    ck_assert_uint_eq(c[q2], w[q2]);
                for (size_t i = 0; i < n; i++)
                    if (a[i] > lo && a[i] < hi)
                        want[nb++] = a[i];
                size_t g = k->band(a, n, lo, hi, got);
                ck_assert_uint_eq(g, nb);
                same_bits(got, want, nb, "band", n, off);
                /* The counting pass's fused form: the same counts and
                 * band from the signed values. */
                memcpy(a, x, n * sizeof(float));
                uint32_t c2[4];
                memset(got, 0, sizeof(got));
                ck_assert_uint_eq(k->count_band(a, n, hi, lo, c2, got), nb);
                for (int q2 = 0; q2 < 4; q2++)
                    ck_assert_uint_eq(c2[q2], w[q2]);
                same_bits(got, want, nb, "count_band's band", n, off);
                size_t eq = 0;
                for (size_t i = 0; i < n; i++)
                    eq += fabsf(x[i]) == hi;
                ck_assert_uint_eq(k->count_eq(x, n, hi), eq);
                for (int keep = 0; keep < 2; keep++) {
                    memcpy(got, x, n * sizeof(float));
                    k->trim(got, n, hi, keep);
                    for (size_t i = 0; i < n; i++) {
                        float m = fabsf(x[i]);
                        want[i] = m > hi || (keep && m == hi) ? x[i] : 0.0f;
                    }
                    same_bits(got, want, n, keep ? "trim, ties kept" : "trim",
                              n, off);
                }
            }
}
END_TEST

START_TEST(conversion_kernels)
{
    static float xb[ROOM];
    static uint16_t got[ROOM];
    static float back[ROOM];
    FOR_EACH_BUILD(k)
    for (size_t l = 0; l < N_LENS; l++)
        for (size_t off = 0; off < 4; off++) {
            size_t n = lens[l];
            float *x = xb + off;
            fill(x, n, 300 + l, true);
            /* Halfway cases of bf16 rounding, both parities. */
            for (size_t i = 0; i + 1 < n; i += 5) {
                float h;
                uint32_t u = 0x3f808000u + (uint32_t)(i & 1) * 0x10000u;
                memcpy(&h, &u, sizeof(h));
                x[i] = h;
            }
            k->f32_to_bf16(x, got, n);
            for (size_t i = 0; i < n; i++)
                if (got[i] != lm_f32_to_bf16(x[i]))
                    ck_abort_msg("bf16 of %a: %04x vs %04x", (double)x[i],
                                 got[i], lm_f32_to_bf16(x[i]));
            /* bf16 -> f32 is the 16 bits shifted up, exactly. */
            k->bf16_to_f32(got, back, n);
            for (size_t i = 0; i < n; i++)
                tu_check(bits(back[i]) == (uint32_t)got[i] << 16,
                         "bf16 %04x back to f32: %08x", got[i],
                         bits(back[i]));
            bool bad = false;
            for (size_t i = 0; i < n; i++)
                bad |= !isfinite(x[i]);
            ck_assert_int_eq(k->any_nonfinite_f32(x, n), bad);
            fill(x, n, 300 + l, false);
            ck_assert(!k->any_nonfinite_f32(x, n));
            if (n) {
                x[n - 1] = NAN;
                ck_assert(k->any_nonfinite_f32(x, n));
            }
        }
}
END_TEST

static int descending(const void *x, const void *y)
{
    float a = *(const float *)x, b = *(const float *)y;
    return (a < b) - (a > b);
}

/* The radix selection against a sort: every rank of small arrays, and
 * ranks spread over larger ones, of magnitudes with repeats, zeros,
 * subnormals and infinities. */
START_TEST(radix_selection)
{
    static float x[ROOM], sorted[ROOM];
    for (size_t l = 1; l < N_LENS; l++) {
        size_t n = lens[l];
        fill(x, n, 900 + l, false);
        for (size_t i = 0; i < n; i++) {
            x[i] = fabsf(x[i]);
            if (i % 13 == 3)
                x[i] = 1e-40f * (float)(i % 5); /* subnormals and +0 */
            if (i % 101 == 7)
                x[i] = INFINITY;
        }
        memcpy(sorted, x, n * sizeof(float));
        qsort(sorted, n, sizeof(float), descending);
        size_t step = n < 64 ? 1 : n / 37;
        for (size_t k = 1; k <= n; k += step) {
            float got = lm__kth_largest_nonneg(x, n, k);
            if (bits(got) != bits(sorted[k - 1]))
                ck_abort_msg("rank %zu of %zu: %a vs %a", k, n, (double)got,
                             (double)sorted[k - 1]);
        }
        ck_assert_uint_eq(bits(lm__kth_largest_nonneg(x, n, n)),
                          bits(sorted[n - 1]));
    }
}
END_TEST

/* The bracket's two edges against a sort: hi is at or above the k_hi-th
 * largest and lo at or below the k_lo-th, each within 2^-13 of that
 * value (relative; the bins' width; 2^-140 for subnormals); on
 * magnitudes with repeats, zeros and subnormals (no infinities: the
 * fused path checks its inputs). */
START_TEST(radix_bracket)
{
    static float x[ROOM], sorted[ROOM];
    for (size_t l = 1; l < N_LENS; l++) {
        size_t n = lens[l];
        fill(x, n, 1900 + l, false);
        for (size_t i = 0; i < n; i++) {
            x[i] = fabsf(x[i]) * (i % 3 ? 1.0f : 1e6f);
            if (i % 13 == 3)
                x[i] = 1e-40f * (float)(i % 5); /* subnormals and +0 */
        }
        memcpy(sorted, x, n * sizeof(float));
        qsort(sorted, n, sizeof(float), descending);
        size_t step = n < 64 ? 1 : n / 23;
        for (size_t k_hi = 1; k_hi <= n; k_hi += step)
            for (size_t k_lo = k_hi; k_lo <= n; k_lo += step + 3) {
                float hi, lo, vh = sorted[k_hi - 1], vl = sorted[k_lo - 1];
                lm__bracket_nonneg(x, n, k_hi, k_lo, &hi, &lo);
                /* Subnormals: bins of 2^-140 (512 of their ulps). */
                float th = fmaxf(ldexpf(vh, -13), ldexpf(1.0f, -140));
                float tl = fmaxf(ldexpf(vl, -13), ldexpf(1.0f, -140));
                if (!(hi >= vh && hi <= vh + th && lo <= vl &&
                      lo >= vl - tl && lo < hi))
                    ck_abort_msg("ranks %zu, %zu of %zu: [%a, %a] for "
                                 "[%a, %a]", k_lo, k_hi, n, (double)lo,
                                 (double)hi, (double)vl, (double)vh);
            }
    }
}
END_TEST

/* splitmix64's finaliser (Steele, Lea and Flood 2014). */
static uint64_t splitmix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* DARE's documented draw (sign_merge.h): entry i of task t is kept when
 * u = (top 53 bits of a counter-based hash of (seed, t, i)) / 2^53 is
 * below the density; survivors are divided by it when rescaling. */
START_TEST(dare_mask_draws)
{
    static float xb[ROOM], got[ROOM], want[ROOM];
    static const double density[] = {0.1, 0.5, 0.9};
    FOR_EACH_BUILD(k)
    for (size_t l = 0; l < N_LENS; l++)
        for (size_t d = 0; d < 3; d++) {
            size_t n = lens[l], offset = 1000003 * l + 17;
            uint64_t seed = 42 + d, task = d;
            float *x = xb + d;
            fill(x, n, 500 + l, false);
            memcpy(got, x, n * sizeof(float));
            k->dare_mask_at(got, n, offset, density[d], d != 1, seed, task);
            uint64_t stream = splitmix(seed ^ splitmix(0xda3e0000ULL + task));
            float scale = d != 1 ? (float)(1.0 / density[d]) : 1.0f;
            for (size_t i = 0; i < n; i++) {
                double u =
                    (double)(splitmix(stream ^ splitmix(offset + i)) >> 11) /
                    9007199254740992.0;
                want[i] = u < density[d] ? x[i] * scale : 0.0f;
            }
            same_bits(got, want, n, "dare mask", n, d);
        }
}
END_TEST

/* LIBMERGE_SIMD narrows the pick to a build; an unknown name or a build
 * this processor cannot run gives the widest it runs. */
START_TEST(simd_pick)
{
    const struct lm__simd *widest = lm__simd_pick();
    setenv("LIBMERGE_SIMD", "baseline", 1);
    ck_assert_str_eq(lm__simd_pick()->name, "baseline");
    setenv("LIBMERGE_SIMD", "avx2", 1);
    ck_assert_str_eq(lm__simd_pick()->name,
                     lm__simd_named("avx2") ? "avx2" : widest->name);
    setenv("LIBMERGE_SIMD", "no-such-build", 1);
    ck_assert_ptr_eq(lm__simd_pick(), widest);
    unsetenv("LIBMERGE_SIMD");
    ck_assert_ptr_eq(lm__simd_pick(), widest);
    ck_assert_ptr_null(lm__simd_named("no-such-build"));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sparse_kernels");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, arithmetic_kernels);
    tcase_add_test(tc, selection_kernels);
    tcase_add_test(tc, conversion_kernels);
    tcase_add_test(tc, dare_mask_draws);
    tcase_add_test(tc, radix_selection);
    tcase_add_test(tc, radix_bracket);
    tcase_add_test(tc, simd_pick);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
