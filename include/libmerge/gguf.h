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
} lm_gguf_options;

#define LM_GGUF_OPTIONS_INIT \
    { (uint32_t)sizeof(lm_gguf_options), NULL, NULL, NULL, 0, 0 }

/* Fills *options with the defaults (LM_GGUF_OPTIONS_INIT). */
LM_API void lm_gguf_options_init(lm_gguf_options *options);

/* A sink writing one GGUF version 3 file while the merge runs, through the
 * same crash-safe path as the safetensors sink (temporary name, fsync,
 * rename on success only). Tensors of 1 to 4 dimensions in F32, F16, BF16
 * or F64. Use with lm_file_sink_vtable / lm_file_sink_destroy. */
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
