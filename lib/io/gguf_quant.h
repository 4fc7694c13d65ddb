/* ggml's quantized block formats, read as f32 (GGUF files from llama.cpp
 * are mostly quantized) and Q8_0 written. Each format stores a row as
 * independent blocks of `block` values in `bytes` bytes; the layouts are
 * those of ggml's ggml-common.h (block_q4_0 ... block_q8_K) and the values
 * are computed as ggml's dequantize_row_* computes them, in f32, so a
 * tensor reads bit for bit as llama.cpp reads it.
 *
 * Legacy formats (32 values a block): gguf_quant_legacy.c; K-quants (256
 * values a super-block): gguf_quant_k.c; the table: gguf_quant.c. */
#ifndef LM_IO_GGUF_QUANT_H
#define LM_IO_GGUF_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "libmerge/tensor.h" /* lm_f16_to_f32 */

/* ggml_type ids of the block formats (ggml.h). */
enum ggml_quant_id {
    GGML_Q4_0 = 2, GGML_Q4_1 = 3, GGML_Q5_0 = 6, GGML_Q5_1 = 7,
    GGML_Q8_0 = 8, GGML_Q8_1 = 9, GGML_Q2_K = 10, GGML_Q3_K = 11,
    GGML_Q4_K = 12, GGML_Q5_K = 13, GGML_Q6_K = 14, GGML_Q8_K = 15
};

/* Decodes n_blocks consecutive blocks at `src` into n_blocks * block
 * floats at `dst`. */
typedef void (*lm__dequant_fn)(const unsigned char *src, size_t n_blocks,
                               float *dst);

struct lm__gguf_quant {
    uint32_t type;   /* ggml_type id */
    uint32_t block;  /* values per block */
    uint32_t bytes;  /* bytes per block */
    lm__dequant_fn dequantize;
};

/* The format of ggml type `type`, or NULL when it is not a block format
 * libmerge reads. */
const struct lm__gguf_quant *lm__gguf_quant_of(uint32_t type);

/* The little-endian f16 at p, widened exactly (ggml's GGML_FP16_TO_FP32). */
static inline float lm__half_at(const unsigned char *p)
{
    return lm_f16_to_f32((uint16_t)(p[0] | (unsigned)p[1] << 8));
}

/* The decoders (one per format). They compute each value in the order
 * ggml does, one rounding per operation: a product and a sum are written
 * as separate statements so that no compiler fuses them into an FMA
 * (which would round once and differ in the last bit). */
void lm__dequant_q4_0(const unsigned char *src, size_t n, float *dst);
void lm__dequant_q4_1(const unsigned char *src, size_t n, float *dst);
void lm__dequant_q5_0(const unsigned char *src, size_t n, float *dst);
void lm__dequant_q5_1(const unsigned char *src, size_t n, float *dst);
void lm__dequant_q8_0(const unsigned char *src, size_t n, float *dst);
void lm__dequant_q8_1(const unsigned char *src, size_t n, float *dst);
void lm__dequant_q2_k(const unsigned char *src, size_t n, float *dst);
void lm__dequant_q3_k(const unsigned char *src, size_t n, float *dst);
void lm__dequant_q4_k(const unsigned char *src, size_t n, float *dst);
void lm__dequant_q5_k(const unsigned char *src, size_t n, float *dst);
void lm__dequant_q6_k(const unsigned char *src, size_t n, float *dst);
void lm__dequant_q8_k(const unsigned char *src, size_t n, float *dst);

#define LM_Q8_0_BLOCK 32u
#define LM_Q8_0_BYTES 34u

/* Quantizes n_blocks * 32 floats to Q8_0 as ggml's quantize_row_q8_0_ref:
 * d = max|x| / 127 (stored as f16), q = round-half-away(x / d) computed as
 * x * (1/d) in f32. Returns false, writing nothing useful, when a value is
 * not finite or max|x| / 127 overflows f16 (Q8_0 cannot hold it). */
bool lm__quant_q8_0(const float *src, size_t n_blocks, unsigned char *dst);

#endif
