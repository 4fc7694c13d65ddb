/* The table of ggml block formats libmerge reads (sizes from ggml's
 * GGML_QUANT_SIZES / ggml-common.h static asserts). */
#include "io/gguf_quant.h"

static const struct lm__gguf_quant table[] = {
    {GGML_Q4_0, 32, 18, lm__dequant_q4_0},
    {GGML_Q4_1, 32, 20, lm__dequant_q4_1},
    {GGML_Q5_0, 32, 22, lm__dequant_q5_0},
    {GGML_Q5_1, 32, 24, lm__dequant_q5_1},
    {GGML_Q8_0, 32, 34, lm__dequant_q8_0},
    {GGML_Q8_1, 32, 36, lm__dequant_q8_1},
    {GGML_Q2_K, 256, 84, lm__dequant_q2_k},
    {GGML_Q3_K, 256, 110, lm__dequant_q3_k},
    {GGML_Q4_K, 256, 144, lm__dequant_q4_k},
    {GGML_Q5_K, 256, 176, lm__dequant_q5_k},
    {GGML_Q6_K, 256, 210, lm__dequant_q6_k},
    {GGML_Q8_K, 256, 292, lm__dequant_q8_k},
};

const struct lm__gguf_quant *lm__gguf_quant_of(uint32_t type)
{
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (table[i].type == type)
            return &table[i];
    return NULL;
}
