/* The fused paths' per-element helpers, as static inline functions so
 * that every kernel translation unit (core/fused_narrow.c, built once per
 * instruction set) vectorises them with its own instructions. Written
 * branch-free so that the compiler vectorises them; every operation is an
 * integer operation or one correctly rounded IEEE operation, so each
 * instruction set gives the same bits. Not installed. */
#ifndef LM_CORE_FUSED_SIMD_H
#define LM_CORE_FUSED_SIMD_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "core/internal.h"
#include "core/linear_rule.h"

/* Any Inf/NaN among x[0..n)? */
static inline bool lm__simd_any_nonfinite_f32(const float *x, size_t n)
{
    uint32_t bad = 0;
    for (size_t j = 0; j < n; j++) {
        uint32_t u;
        memcpy(&u, &x[j], sizeof(u));
        bad |= (uint32_t)((u & 0x7f800000u) == 0x7f800000u);
    }
    return bad != 0;
}

/* bf16 <-> f32 as lm_bf16_to_f32 / lm_f32_to_bf16 (dtype.c) compute them,
 * bit for bit (dtype.c's per-element calls do not vectorise; bf16 is the
 * common checkpoint dtype). core_fused checks them against the plain
 * path. */
static inline void lm__simd_bf16_to_f32(const uint16_t *src, float *dst,
                                        size_t n)
{
    for (size_t j = 0; j < n; j++) {
        uint32_t u = (uint32_t)src[j] << 16;
        memcpy(&dst[j], &u, sizeof(u));
    }
}

static inline void lm__simd_f32_to_bf16(const float *src, uint16_t *dst,
                                        size_t n)
{
    for (size_t j = 0; j < n; j++) {
        uint32_t x;
        memcpy(&x, &src[j], sizeof(x));
        uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
        uint32_t quiet_nan = (x >> 16) | 0x0040u;
        dst[j] = (uint16_t)((x & 0x7fffffffu) > 0x7f800000u ? quiet_nan
                                                             : rounded);
    }
}

/* Elements [lo, lo + len) of src as f32: in place when src is f32. */
static inline const float *lm__simd_load_f32(const void *src, lm_dtype dt,
                                             size_t lo, size_t len,
                                             float *buf)
{
    if (dt == LM_F32)
        return (const float *)src + lo;
    if (dt == LM_BF16)
        lm__simd_bf16_to_f32((const uint16_t *)src + lo, buf, len);
    else
        lm_convert((const char *)src + lo * lm_dtype_size(dt), dt, buf,
                   LM_F32, len);
    return buf;
}

/* acc = base_term ? base_coef * b : 0 (the rule's first term). */
static inline void lm__simd_acc_init(const struct lm__linear_rule *r,
                                     const float *b, double *acc,
                                     size_t len)
{
    if (r->base_term)
        for (size_t j = 0; j < len; j++)
            acc[j] = r->base_coef * (double)b[j];
    else
        for (size_t j = 0; j < len; j++)
            acc[j] = 0.0;
}

#endif
