/* ggml's K-quants (ggml-common.h, QK_K = 256 values a super-block):
 * Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, decoded as ggml's dequantize_row_*
 * do. A super-block holds 8 or 16 sub-blocks, each with its own 4- to
 * 8-bit scale (and for Q2/Q4/Q5 a minimum) multiplied by the f16
 * super-block scale d (dmin); the value layouts interleave 32-byte groups
 * as described at each decoder. */
#include <string.h>

#include "io/gguf_quant.h"

#define QK_K 256

/* Q4_K / Q5_K: 8 six-bit scales and mins packed in 12 bytes. Sub-block
 * j < 4: scale = s[j] & 63, min = s[j + 4] & 63; j >= 4: the low four
 * bits from s[j + 4] (scale: low nibble, min: high nibble), the top two
 * from the spare top bits of s[j - 4] (scale) and s[j] (min). */
static void scale_min_k4(int j, const unsigned char *s, int *sc, int *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0F) | (s[j - 4] >> 6) << 4;
        *m = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
    }
}

/* block_q2_K (84 bytes): u8 scales[16] (low nibble scale, high nibble
 * min of 16 values), u8 qs[64], f16 d, f16 dmin. Each 128-value half uses
 * 32 bytes of qs four times, at bit shifts 0, 2, 4, 6; within a shift,
 * bytes 0-15 and 16-31 are two sub-blocks. x = d*sc * q - dmin*m. */
void lm__dequant_q2_k(const unsigned char *b, size_t n, float *y)
{
    for (size_t i = 0; i < n; i++, b += 84) {
        const unsigned char *scales = b, *q = b + 16;
        float d = lm__half_at(b + 80), dmin = lm__half_at(b + 82);
        int is = 0;
        for (int half = 0; half < 2; half++, q += 32)
            for (int shift = 0; shift < 8; shift += 2)
                for (int sub = 0; sub < 2; sub++, is++) {
                    float dl = d * (float)(scales[is] & 0x0F);
                    float ml = dmin * (float)(scales[is] >> 4);
                    for (int l = 0; l < 16; l++) {
                        float p = dl * (float)((q[16 * sub + l] >> shift) & 3);
                        *y++ = p - ml;
                    }
                }
    }
}

/* block_q3_K (110 bytes): u8 hmask[32], u8 qs[64], u8 scales[12], f16 d.
 * 16 six-bit scales (minus 32): scale i has its low four bits in byte
 * i % 8 (low nibble for i < 8, high for i >= 8) and its top two in byte
 * 8 + i % 4 at shift 2 * (i / 4). Values: qs as in Q2_K (2 bits), and the
 * k-th 32-value group takes hmask bit k: a clear bit subtracts 4.
 * x = d * (scale - 32) * q. */
void lm__dequant_q3_k(const unsigned char *b, size_t n, float *y)
{
    for (size_t i = 0; i < n; i++, b += 110) {
        const unsigned char *hm = b, *q = b + 32, *s = b + 96;
        float d_all = lm__half_at(b + 108);
        int scale[16];
        for (int k = 0; k < 16; k++) {
            int lo = (s[k % 8] >> (4 * (k / 8))) & 0x0F;
            int hi = (s[8 + k % 4] >> (2 * (k / 4))) & 3;
            scale[k] = (lo | hi << 4) - 32;
        }
        int is = 0;
        unsigned m = 1;
        for (int half = 0; half < 2; half++, q += 32)
            for (int shift = 0; shift < 8; shift += 2, m <<= 1)
                for (int sub = 0; sub < 2; sub++, is++) {
                    float dl = d_all * (float)scale[is];
                    for (int l = 0; l < 16; l++) {
                        int k = 16 * sub + l;
                        int v = ((q[k] >> shift) & 3) - ((hm[k] & m) ? 0 : 4);
                        *y++ = dl * (float)v;
                    }
                }
    }
}

/* block_q4_K (144 bytes): f16 d, f16 dmin, u8 scales[12] (scale_min_k4),
 * u8 qs[128]. Each 64 values use 32 bytes: low nibbles are sub-block 2k,
 * high nibbles 2k + 1. x = d*sc * q - dmin*m. */
void lm__dequant_q4_k(const unsigned char *b, size_t n, float *y)
{
    for (size_t i = 0; i < n; i++, b += 144) {
        float d = lm__half_at(b), dmin = lm__half_at(b + 2);
        const unsigned char *s = b + 4, *q = b + 16;
        for (int j = 0; j < 8; j += 2, q += 32)
            for (int part = 0; part < 2; part++) {
                int sc, m;
                scale_min_k4(j + part, s, &sc, &m);
                float d1 = d * (float)sc, m1 = dmin * (float)m;
                for (int l = 0; l < 32; l++) {
                    int v = part ? q[l] >> 4 : q[l] & 0x0F;
                    float p = d1 * (float)v;
                    *y++ = p - m1;
                }
            }
    }
}

/* block_q5_K (176 bytes): f16 d, f16 dmin, u8 scales[12], u8 qh[32],
 * u8 qs[128]. As Q4_K with a fifth bit: sub-block k takes bit k of qh[l]
 * (adds 16). */
void lm__dequant_q5_k(const unsigned char *b, size_t n, float *y)
{
    for (size_t i = 0; i < n; i++, b += 176) {
        float d = lm__half_at(b), dmin = lm__half_at(b + 2);
        const unsigned char *s = b + 4, *qh = b + 16, *q = b + 48;
        for (int j = 0; j < 8; j += 2, q += 32)
            for (int part = 0; part < 2; part++) {
                int sc, m, k = j + part;
                scale_min_k4(k, s, &sc, &m);
                float d1 = d * (float)sc, m1 = dmin * (float)m;
                for (int l = 0; l < 32; l++) {
                    int v = (part ? q[l] >> 4 : q[l] & 0x0F) +
                            ((qh[l] >> k) & 1 ? 16 : 0);
                    float p = d1 * (float)v;
                    *y++ = p - m1;
                }
            }
    }
}

/* block_q6_K (210 bytes): u8 ql[128], u8 qh[64], i8 scales[16], f16 d.
 * Each 128 values use 64 bytes of ql and 32 of qh: value 32r + l (r = 0..3)
 * is the low (r < 2) or high (r >= 2) nibble of ql[l + 32 * (r % 2)]
 * plus bits 2r, 2r+1 of qh[l] as bits 4-5, minus 32; scale index
 * l / 16 + 2r. x = (d * scale) * q. */
void lm__dequant_q6_k(const unsigned char *b, size_t n, float *y)
{
    for (size_t i = 0; i < n; i++, b += 210) {
        const unsigned char *ql = b, *qh = b + 128;
        const unsigned char *sc = b + 192;
        float d = lm__half_at(b + 208);
        for (int half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8,
                 y += 128)
            for (int r = 0; r < 4; r++)
                for (int l = 0; l < 32; l++) {
                    int byte = ql[l + 32 * (r % 2)];
                    int lo = r < 2 ? byte & 0x0F : byte >> 4;
                    int v = (lo | ((qh[l] >> (2 * r)) & 3) << 4) - 32;
                    float ds = d * (float)(int8_t)sc[l / 16 + 2 * r];
                    y[32 * r + l] = ds * (float)v;
                }
    }
}

/* block_q8_K (292 bytes): f32 d, i8 qs[256], i16 bsums[16] (sums for dot
 * products, unused here). x = d * q. */
void lm__dequant_q8_k(const unsigned char *b, size_t n, float *y)
{
    for (size_t i = 0; i < n; i++, b += 292) {
        uint32_t bits = (uint32_t)b[0] | (uint32_t)b[1] << 8 |
                        (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
        float d;
        memcpy(&d, &bits, sizeof(d));
        for (int j = 0; j < QK_K; j++)
            *y++ = d * (float)(int8_t)b[4 + j];
    }
}
