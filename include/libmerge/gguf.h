/* libmerge: GGUF model and llama.cpp LoRA adapter files.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LIBMERGE_GGUF_H
#define LIBMERGE_GGUF_H

#include "libmerge/file_sink.h"
#include "libmerge/lora.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Read a GGUF file (version 2 or 3) by mmap: F32, F16, BF16 and F64
 * tensors are viewed without copying, with shapes in libmerge's row-major
 * order (the reverse of GGUF's ggml order: a [out, in] weight is stored as
 * ne = {in, out}). Quantized tensors (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1,
 * Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K) are dequantized into f32 tensors
 * owned by the model, bit for bit as ggml computes them. Every key/value becomes text metadata (strings as they
 * are, numbers and arrays as JSON) and is also kept in its typed form for
 * lm_gguf_sink_create's `kv_from`. Errors: LM_ERR_IO, LM_ERR_FORMAT
 * (malformed or truncated file, overlapping or misaligned tensors,
 * duplicate names or keys; messages name the file and tensor or key),
 * LM_ERR_UNSUPPORTED (other quantized types and integer tensors, naming
 * the tensor and the ggml type; GGUF version 1); LM_ERR_FORMAT also for a
 * quantized row that is not whole blocks. */
LM_API lm_status lm_gguf_read(lm_context *ctx, const char *path,
                              lm_model **out);

/* The ggml type a tensor of a model read by lm_gguf_read (or
 * lm_model_open on a GGUF file) was stored as in the file: "F32", "F16",
 * "BF16", "F64", or a block format such as "Q4_K" for a tensor that was
 * dequantized; a static string. NULL when the model was not read from GGUF
 * or has no tensor `name`. */
LM_API const char *lm_gguf_tensor_type(const lm_model *model,
                                       const char *name);

/* Read a llama.cpp LoRA adapter GGUF (general.type = "adapter",
 * adapter.type = "lora"): tensors "<target>.lora_a" [r, in] and
 * "<target>.lora_b" [out, r] become the update of base tensor <target>
 * with scale adapter.lora.alpha / r (1 when alpha is absent or 0, as in
 * llama.cpp); pairs for "*_norm.weight" are skipped as llama.cpp does.
 * The factors are copied. Errors as lm_gguf_read, plus LM_ERR_FORMAT for a
 * file that is not a LoRA adapter, an unpaired or unknown tensor, and
 * LM_ERR_SHAPE for factors that do not pair. */
LM_API lm_status lm_gguf_read_lora(lm_context *ctx, const char *path,
                                   lm_lora **out);

/* How the GGUF sink stores each tensor (lm_gguf_options.store). */
typedef enum lm_gguf_store {
    /* Each tensor in its output dtype, except that an F32 output of a
     * tensor `kv_from` read from a quantized tensor is stored as F16
     * (llama.cpp's unquantized default; explicit F32 needs _DTYPE). */
    LM_GGUF_STORE_AUTO = 0,
    /* Each tensor in its output dtype. */
    LM_GGUF_STORE_DTYPE = 1,
    /* 2-D tensors whose rows (the last dimension) are a multiple of 32 as
     * Q8_0, quantized as ggml's quantize_row_q8_0 (per block of 32:
     * d = max|x| / 127 stored as f16, q = round(x / d)); the others (1-D
     * norms and biases, odd rows) as LM_GGUF_STORE_AUTO, as llama.cpp's
     * quantizer keeps them. A value Q8_0 cannot hold (not finite, or a
     * block whose max |x| / 127 overflows f16) fails the merge naming the
     * tensor. */
    LM_GGUF_STORE_Q8_0 = 2
} lm_gguf_store;

typedef struct lm_gguf_options {
    uint32_t struct_size;
    /* Key/values copied (typed, verbatim) from a model read with
     * lm_gguf_read, e.g. the base model's architecture and tokenizer; the
     * model must outlive the sink. NULL: none. */
    const lm_model *kv_from;
    /* String key/values added (replacing copied keys of the same name). */
    const char *const *metadata_keys;
    const char *const *metadata_values;
    size_t n_metadata;
    /* Data alignment, a power of two >= 8; 0: kv_from's, else 32. */
    uint32_t alignment;
    /* Tensor storage (lm_gguf_store); default LM_GGUF_STORE_AUTO. */
    lm_gguf_store store;
} lm_gguf_options;

#define LM_GGUF_OPTIONS_INIT                                              \
    { (uint32_t)sizeof(lm_gguf_options), NULL, NULL, NULL, 0, 0,          \
      LM_GGUF_STORE_AUTO }

/* Fills *options with the defaults (LM_GGUF_OPTIONS_INIT). */
LM_API void lm_gguf_options_init(lm_gguf_options *options);

/* A sink writing one GGUF version 3 file while the merge runs, through the
 * same crash-safe path as the safetensors sink (temporary name, fsync,
 * rename on success only). Tensors of 1 to 4 dimensions in F32, F16, BF16
 * or F64, stored as options->store says (F16 or Q8_0 re-encoded by the
 * sink). Use with lm_file_sink_vtable / lm_file_sink_destroy. */
LM_API lm_status lm_gguf_sink_create(lm_context *ctx, const char *path,
                                     const lm_gguf_options *options,
                                     lm_file_sink **out);

/* Write a whole in-memory model as GGUF (model order, own dtypes). */
LM_API lm_status lm_gguf_write(lm_context *ctx, const lm_model *model,
                               const char *path,
                               const lm_gguf_options *options);

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_GGUF_H */
