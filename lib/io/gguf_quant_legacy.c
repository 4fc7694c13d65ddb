/* ggml's 32-value block formats (ggml-common.h): Q4_0, Q4_1, Q5_0, Q5_1,
 * Q8_0, Q8_1, decoded as ggml's dequantize_row_* do, and the Q8_0 encoder
 * of quantize_row_q8_0_ref. In every 4-bit layout byte j of `qs` holds
 * value j in its low nibble and value j + 16 in its high nibble; Q5's
 * fifth bits are the 32 bits of `qh` (little-endian), bit j for value j. */
#include <math.h>
#include <string.h>

#include "io/gguf_quant.h"

#define QK 32

static uint32_t u32_at(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

/* block_q4_0: f16 d, u8 qs[16]; x = (nibble - 8) * d. */
void lm__dequant_q4_0(const unsigned char *b, size_t n, float *y)
{
    for (size_t i = 0; i < n; i++, b += 18, y += QK) {
        float d = lm__half_at(b);
        const unsigned char *qs = b + 2;
        for (int j = 0; j < QK / 2; j++) {
            y[j] = (float)((qs[j] & 0x0F) - 8) * d;
            y[j + QK / 2] = (float)((qs[j] >> 4) - 8) * d;
        }
    }
}

/* block_q4_1: f16 d, f16 m, u8 qs[16]; x = nibble * d + m. */
void lm__dequant_q4_1(const unsigned char *b, size_t n, float *y)
{
    for (size_t i = 0; i < n; i++, b += 20, y += QK) {
        float d = lm__half_at(b), m = lm__half_at(b + 2);
        const unsigned char *qs = b + 4;
        for (int j = 0; j < QK / 2; j++) {
            float lo = (float)(qs[j] & 0x0F) * d;
            float hi = (float)(qs[j] >> 4) * d;
            y[j] = lo + m;
            y[j + QK / 2] = hi + m;
        }
    }
}

/* Value j's 5-bit code: its nibble and bit j of qh as bit 4. */
static int q5_code(const unsigned char *qs, uint32_t qh, int j)
{
    int nib = j < QK / 2 ? qs[j] & 0x0F : qs[j - QK / 2] >> 4;
    return nib | (int)((qh >> j) & 1u) << 4;
}

/* block_q5_0: f16 d, u8 qh[4], u8 qs[16]; x = (code - 16) * d. */
void lm__dequant_q5_0(const unsigned char *b, size_t n, float *y)
{
    for (size_t i = 0; i < n; i++, b += 22, y += QK) {
        float d = lm__half_at(b);
        uint32_t qh = u32_at(b + 2);
        for (int j = 0; j < QK; j++)
            y[j] = (float)(q5_code(b + 6, qh, j) - 16) * d;
    }
}

/* block_q5_1: f16 d, f16 m, u8 qh[4], u8 qs[16]; x = code * d + m. */
void lm__dequant_q5_1(const unsigned char *b, size_t n, float *y)
{
    for (size_t i = 0; i < n; i++, b += 24, y += QK) {
        float d = lm__half_at(b), m = lm__half_at(b + 2);
        uint32_t qh = u32_at(b + 4);
        for (int j = 0; j < QK; j++) {
            float p = (float)q5_code(b + 8, qh, j) * d;
            y[j] = p + m;
        }
    }
}

static void q8_values(const unsigned char *qs, float d, float *y)
{
    for (int j = 0; j < QK; j++)
        y[j] = (float)(int8_t)qs[j] * d;
}

/* block_q8_0: f16 d, i8 qs[32]; x = q * d. */
void lm__dequant_q8_0(const unsigned char *b, size_t n, float *y)
{
    for (size_t i = 0; i < n; i++, b += 34, y += QK)
        q8_values(b + 2, lm__half_at(b), y);
}

/* block_q8_1: f16 d, f16 s (d * sum of q, unused here), i8 qs[32]. */
void lm__dequant_q8_1(const unsigned char *b, size_t n, float *y)
{
    for (size_t i = 0; i < n; i++, b += 36, y += QK)
        q8_values(b + 4, lm__half_at(b), y);
}

bool lm__quant_q8_0(const float *x, size_t n, unsigned char *out)
{
    for (size_t i = 0; i < n; i++, x += QK, out += LM_Q8_0_BYTES) {
        float amax = 0.0f;
        for (int j = 0; j < QK; j++) {
            if (!isfinite(x[j]))
                return false;
            float a = fabsf(x[j]);
            if (a > amax)
                amax = a;
        }
        float d = amax / 127.0f;
        /* The scale ggml multiplies by is 1/d of the f32 d, not of its
         * f16 rounding. */
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        uint16_t h = lm_f32_to_f16(d);
        if ((h & 0x7c00u) == 0x7c00u)
            return false; /* d overflows f16 */
        out[0] = (unsigned char)h;
        out[1] = (unsigned char)(h >> 8);
        for (int j = 0; j < QK; j++) {
            /* |x * id| <= 127 up to rounding; only a block of f32
             * subnormals (1/d = inf) leaves that range, where ggml's cast
             * is undefined: clamped here, NaN (0 * inf) to 0. */
            float q = roundf(x[j] * id);
            if (!(q >= -127.0f))
                q = q != q ? 0.0f : -127.0f;
            else if (q > 127.0f)
                q = 127.0f;
            out[2 + j] = (unsigned char)(int8_t)q;
        }
    }
    return true;
}
