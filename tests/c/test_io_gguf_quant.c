/* The ggml block-format table and one hand-built block per format, each
 * value derived by hand from the block layout of ggml's ggml-common.h
 * (the bit-for-bit comparison over random blocks is in
 * tests/python/test_gguf_quant.py). */
#include <math.h>
#include <string.h>

#include "io/gguf_quant.h"
#include "testutil.h"

/* f16 bit patterns used below. */
#define H_0_25 0x3400u
#define H_0_5 0x3800u
#define H_1 0x3c00u
#define H_2 0x4000u
#define H_M1 0xbc00u

static void put_half(unsigned char *p, unsigned h)
{
    p[0] = (unsigned char)h;
    p[1] = (unsigned char)(h >> 8);
}

/* Decodes one block of `type` into out (at least 256 floats). */
static void decode(uint32_t type, const unsigned char *block, float *out)
{
    const struct lm__gguf_quant *q = lm__gguf_quant_of(type);
    ck_assert_ptr_nonnull(q);
    q->dequantize(block, 1, out);
}

START_TEST(table_sizes)
{
    /* ggml's GGML_QUANT_SIZES: (values, bytes) per block. */
    static const struct { uint32_t type, block, bytes; } want[] = {
        {2, 32, 18}, {3, 32, 20}, {6, 32, 22}, {7, 32, 24}, {8, 32, 34},
        {9, 32, 36}, {10, 256, 84}, {11, 256, 110}, {12, 256, 144},
        {13, 256, 176}, {14, 256, 210}, {15, 256, 292}};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        const struct lm__gguf_quant *q = lm__gguf_quant_of(want[i].type);
        ck_assert_ptr_nonnull(q);
        ck_assert_uint_eq(q->type, want[i].type);
        ck_assert_uint_eq(q->block, want[i].block);
        ck_assert_uint_eq(q->bytes, want[i].bytes);
    }
    /* Float types, removed ids (4, 5), i-quants, integers: not formats
     * this table decodes. */
    static const uint32_t none[] = {0, 1, 4, 5, 16, 23, 24, 28, 30, 39, 1000};
    for (size_t i = 0; i < sizeof(none) / sizeof(none[0]); i++)
        ck_assert_ptr_null(lm__gguf_quant_of(none[i]));
}
END_TEST

START_TEST(legacy_blocks)
{
    unsigned char b[64];
    float y[256];
    /* Q4_0: value j = low nibble of qs[j] - 8, j + 16 the high nibble. */
    memset(b, 0, sizeof(b));
    put_half(b, H_0_5);
    b[2] = 0x1F;
    b[2 + 3] = 0x80;
    decode(GGML_Q4_0, b, y);
    ck_assert(y[0] == 3.5f && y[16] == -3.5f && y[3] == -4.0f && y[19] == 0);
    /* Q4_1: nibble * d + m. */
    memset(b, 0, sizeof(b));
    put_half(b, H_0_5);
    put_half(b + 2, H_1);
    b[4] = 0x21;
    decode(GGML_Q4_1, b, y);
    ck_assert(y[0] == 1.5f && y[16] == 2.0f && y[1] == 1.0f);
    /* Q5_0: bit j of the little-endian qh is value j's fifth bit. */
    memset(b, 0, sizeof(b));
    put_half(b, H_1);
    b[2] = 0x01;     /* bit 0 */
    b[2 + 2] = 0x02; /* bit 17 */
    b[6] = 0x03;
    b[7] = 0x20;
    decode(GGML_Q5_0, b, y);
    ck_assert(y[0] == 3 && y[16] == -16 && y[1] == -16 && y[17] == 2);
    /* Q5_1: code * d + m, bit 31 for value 31. */
    memset(b, 0, sizeof(b));
    put_half(b, H_2);
    put_half(b + 2, H_M1);
    b[4 + 3] = 0x80;
    b[8 + 15] = 0xF0;
    decode(GGML_Q5_1, b, y);
    ck_assert(y[31] == 61 && y[15] == -1);
    /* Q8_0 and Q8_1: signed bytes times d (Q8_1's sum is ignored). */
    memset(b, 0, sizeof(b));
    put_half(b, H_0_25);
    b[2 + 5] = 0x80;
    b[2 + 31] = 127;
    decode(GGML_Q8_0, b, y);
    ck_assert(y[5] == -32 && y[31] == 31.75f && y[0] == 0);
    memset(b, 0, sizeof(b));
    put_half(b, H_0_25);
    put_half(b + 2, H_2);
    b[4] = 0xFC;
    decode(GGML_Q8_1, b, y);
    ck_assert(y[0] == -1 && y[1] == 0);
}
END_TEST

START_TEST(k_blocks)
{
    unsigned char b[292];
    float y[256];
    /* Q2_K: x = d*(sc & 15) * q - dmin*(sc >> 4); value 16 is qs[16]. */
    memset(b, 0, sizeof(b));
    b[0] = 0x21; /* sub-block 0: scale 1, min 2 */
    b[1] = 0x03; /* sub-block 1: scale 3, min 0 */
    b[16 + 0] = 0x03;
    b[16 + 16] = 0x02;
    put_half(b + 80, H_1);
    put_half(b + 82, H_0_5);
    decode(GGML_Q2_K, b, y);
    ck_assert(y[0] == 2 && y[16] == 6 && y[1] == -1 && y[32] == 0);
    /* Q3_K: scale 0 = 33 (low nibble in byte 0, top bits in byte 8);
     * hmask bit set: no -4. */
    memset(b, 0, sizeof(b));
    b[96 + 0] = 0x01;
    b[96 + 8] = 0x02;
    b[32 + 0] = 0x03;
    b[0] = 0x01;
    put_half(b + 108, H_1);
    decode(GGML_Q3_K, b, y);
    /* v1: q 0 - 4, scale 1; v16: scale 1 of sub-block 1 is 0 - 32. */
    ck_assert(y[0] == 3 && y[1] == -4 && y[16] == 128);
    /* Q4_K: sub-block 0 scale 2 min 4; sub-block 4 scale 3 (byte 8 low
     * nibble) min 5 (byte 8 high nibble). */
    memset(b, 0, sizeof(b));
    put_half(b, H_1);
    put_half(b + 2, H_0_5);
    b[4 + 0] = 2;
    b[4 + 4] = 4;
    b[4 + 8] = 0x53;
    b[16 + 0] = 0x7A;
    b[16 + 64] = 0x01;
    decode(GGML_Q4_K, b, y);
    ck_assert(y[0] == 18 && y[32] == 0 && y[128] == 0.5f && y[1] == -2);
    /* Q5_K: bit 0 of qh[0] adds 16 to value 0. */
    memset(b, 0, sizeof(b));
    put_half(b, H_1);
    b[4 + 0] = 1;
    b[16 + 0] = 0x01;
    b[48 + 0] = 0x02;
    decode(GGML_Q5_K, b, y);
    ck_assert(y[0] == 18 && y[1] == 0);
    /* Q6_K: value 0 = low nibble of ql[0] | qh bits 0-1 << 4, minus 32;
     * value 64 the high nibble with qh bits 4-5, scale 4. */
    memset(b, 0, sizeof(b));
    b[0] = 0x0F;
    b[128] = 0x01;
    b[192 + 0] = 0xFE; /* scale 0 = -2 */
    b[192 + 4] = 1;
    put_half(b + 208, H_0_5);
    decode(GGML_Q6_K, b, y);
    ck_assert(y[0] == 1 && y[64] == -16 && y[32] == 0);
    /* Q8_K: an f32 d. */
    memset(b, 0, sizeof(b));
    float d = 0.125f;
    memcpy(b, &d, 4);
    b[4] = 0xF8;
    b[4 + 255] = 100;
    decode(GGML_Q8_K, b, y);
    ck_assert(y[0] == -1 && y[255] == 12.5f && y[1] == 0);
}
END_TEST

START_TEST(q8_0_encoder)
{
    float x[64];
    for (int i = 0; i < 32; i++)
        x[i] = (float)(i - 16) / 8; /* max |x| = 2: d = 2/127 */
    for (int i = 32; i < 64; i++)
        x[i] = 0; /* an all-zero block: d = 0, every q 0 */
    unsigned char b[2 * LM_Q8_0_BYTES];
    ck_assert(lm__quant_q8_0(x, 2, b));
    uint16_t h = (uint16_t)(b[0] | b[1] << 8);
    ck_assert_uint_eq(h, lm_f32_to_f16(2.0f / 127.0f));
    ck_assert_int_eq((int8_t)b[2 + 0], -127); /* -2 */
    ck_assert_int_eq((int8_t)b[2 + 16], 0);
    ck_assert_int_eq((int8_t)b[2 + 20], 32); /* 0.5 * 63.5 rounds away */
    for (unsigned j = 0; j < LM_Q8_0_BYTES; j++)
        ck_assert_int_eq(b[LM_Q8_0_BYTES + j], 0);
    /* Non-finite values and scales past f16 are refused. */
    x[3] = NAN;
    ck_assert(!lm__quant_q8_0(x, 1, b));
    x[3] = 1e7f; /* d = 78740 > 65504 */
    ck_assert(!lm__quant_q8_0(x, 1, b));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gguf_quant");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, table_sizes);
    tcase_add_test(tc, legacy_blocks);
    tcase_add_test(tc, k_blocks);
    tcase_add_test(tc, q8_0_encoder);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
