/* Element types and conversions between them (round-to-nearest-even). */
#include <math.h>
#include <string.h>
#include <strings.h>

#include "core/tensor_private.h"

size_t lm_dtype_size(lm_dtype dtype)
{
    switch (dtype) {
    case LM_F32: return 4;
    case LM_F16: return 2;
    case LM_BF16: return 2;
    case LM_F64: return 8;
    default: return 0;
    }
}

const char *lm_dtype_name(lm_dtype dtype)
{
    switch (dtype) {
    case LM_F32: return "f32";
    case LM_F16: return "f16";
    case LM_BF16: return "bf16";
    case LM_F64: return "f64";
    default: return "?";
    }
}

lm_status lm_dtype_parse(const char *name, lm_dtype *out)
{
    static const struct { const char *name; lm_dtype dtype; } names[] = {
        {"f32", LM_F32}, {"float32", LM_F32}, {"float", LM_F32},
        {"f16", LM_F16}, {"float16", LM_F16}, {"half", LM_F16},
        {"bf16", LM_BF16}, {"bfloat16", LM_BF16},
        {"f64", LM_F64}, {"float64", LM_F64}, {"double", LM_F64},
    };
    if (!name || !out)
        return LM_ERR_INVALID_ARGUMENT;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcasecmp(name, names[i].name) == 0) {
            *out = names[i].dtype;
            return LM_OK;
        }
    }
    return LM_ERR_DTYPE;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

uint16_t lm_f32_to_f16(float value)
{
    uint32_t x = f32_bits(value);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    if (x >= 0x7f800000u) /* Inf stays Inf, NaN becomes a quiet NaN */
        return (uint16_t)(sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (x >= 0x477ff000u) /* >= 65520 rounds past the largest finite */
        return (uint16_t)(sign | 0x7c00u);
    if (x < 0x38800000u) { /* below 2^-14: f16 subnormal or zero */
        uint32_t exp = x >> 23;
        uint32_t shift = 126u - exp;
        if (shift > 24u)
            return sign;
        uint32_t mant = (x & 0x7fffffu) | 0x800000u;
        uint32_t r = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (r & 1u)))
            r++;
        return (uint16_t)(sign | r);
    }
    uint32_t bits = ((((x >> 23) - 112u) << 10) | ((x >> 13) & 0x3ffu));
    uint32_t rem = x & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (bits & 1u)))
        bits++; /* a carry into the exponent is the right result */
    return (uint16_t)(sign | bits);
}

float lm_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        float v = (float)mant * 5.9604644775390625e-8f; /* 2^-24, exact */
        return bits_f32(f32_bits(v) | sign);
    }
    if (exp == 31)
        return bits_f32(sign | 0x7f800000u | (mant << 13));
    return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

uint16_t lm_f32_to_bf16(float value)
{
    uint32_t x = f32_bits(value);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x0040u); /* keep NaN, make it quiet */
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

float lm_bf16_to_f32(uint16_t bits) { return bits_f32((uint32_t)bits << 16); }

/* Round a double straight to a binary format with `mant_bits` stored
 * fraction bits and `exp_bits` exponent bits (f16: 10/5, bf16: 7/8), with
 * a single rounding, so f64 -> f16 never double-rounds through f32. */
static uint16_t f64_to_small(double v, int mant_bits, int exp_bits)
{
    uint16_t sign = signbit(v) ? (uint16_t)0x8000u : 0;
    uint32_t exp_all = (1u << exp_bits) - 1u;
    uint32_t inf_bits = exp_all << mant_bits;
    if (isnan(v))
        return (uint16_t)(sign | inf_bits | (1u << (mant_bits - 1)));
    double a = fabs(v);
    if (isinf(a))
        return (uint16_t)(sign | inf_bits);
    if (a == 0.0)
        return sign;
    int bias = (1 << (exp_bits - 1)) - 1;
    int emin = 1 - bias;
    int e;
    (void)frexp(a, &e);
    int E = e - 1; /* a = 1.f * 2^E */
    if (E > bias + 1)
        return (uint16_t)(sign | inf_bits);
    int qexp = (E < emin ? emin : E) - mant_bits;
    double q = ldexp(a, -qexp); /* exact: scaling by a power of two */
    double r = floor(q);
    double diff = q - r;
    if (diff > 0.5 || (diff == 0.5 && fmod(r, 2.0) != 0.0))
        r += 1.0;
    uint32_t bits;
    if (E < emin) {
        bits = (uint32_t)r; /* subnormal; r == 2^mant is the smallest normal */
    } else {
        bits = ((uint32_t)(E + bias) << mant_bits) +
               ((uint32_t)r - (1u << mant_bits));
    }
    if (bits >= inf_bits)
        return (uint16_t)(sign | inf_bits);
    return (uint16_t)(sign | bits);
}

static double load_f64(const void *src, lm_dtype dt, size_t i)
{
    switch (dt) {
    case LM_F32: return ((const float *)src)[i];
    case LM_F16: return lm_f16_to_f32(((const uint16_t *)src)[i]);
    case LM_BF16: return lm_bf16_to_f32(((const uint16_t *)src)[i]);
    case LM_F64: return ((const double *)src)[i];
    default: return 0.0;
    }
}

static void store_f64(void *dst, lm_dtype dt, size_t i, double v)
{
    switch (dt) {
    case LM_F32: ((float *)dst)[i] = (float)v; break;
    case LM_F16: ((uint16_t *)dst)[i] = f64_to_small(v, 10, 5); break;
    case LM_BF16: ((uint16_t *)dst)[i] = f64_to_small(v, 7, 8); break;
    case LM_F64: ((double *)dst)[i] = v; break;
    default: break;
    }
}

lm_status lm_convert(const void *src, lm_dtype src_dtype, void *dst,
                     lm_dtype dst_dtype, size_t n)
{
    if ((!src || !dst) && n)
        return LM_ERR_INVALID_ARGUMENT;
    if (!lm_dtype_size(src_dtype) || !lm_dtype_size(dst_dtype))
        return LM_ERR_DTYPE;
    if (src_dtype == dst_dtype) {
        if (src != dst && n)
            memmove(dst, src, n * lm_dtype_size(src_dtype));
        return LM_OK;
    }
    /* Fast paths for the conversions every merge does. */
    if (src_dtype == LM_F32 && dst_dtype == LM_BF16) {
        for (size_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = lm_f32_to_bf16(((const float *)src)[i]);
        return LM_OK;
    }
    if (src_dtype == LM_F32 && dst_dtype == LM_F16) {
        for (size_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = lm_f32_to_f16(((const float *)src)[i]);
        return LM_OK;
    }
    if (dst_dtype == LM_F32 && src_dtype == LM_BF16) {
        for (size_t i = 0; i < n; i++)
            ((float *)dst)[i] = lm_bf16_to_f32(((const uint16_t *)src)[i]);
        return LM_OK;
    }
    if (dst_dtype == LM_F32 && src_dtype == LM_F16) {
        for (size_t i = 0; i < n; i++)
            ((float *)dst)[i] = lm_f16_to_f32(((const uint16_t *)src)[i]);
        return LM_OK;
    }
    /* General path; in-place widening (dst == src) must run backwards. */
    if (lm_dtype_size(dst_dtype) > lm_dtype_size(src_dtype)) {
        for (size_t i = n; i-- > 0;)
            store_f64(dst, dst_dtype, i, load_f64(src, src_dtype, i));
    } else {
        for (size_t i = 0; i < n; i++)
            store_f64(dst, dst_dtype, i, load_f64(src, src_dtype, i));
    }
    return LM_OK;
}
