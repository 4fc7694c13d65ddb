/* libmerge: model files by path, whatever their format.
 *
 * One table in the library knows the formats (safetensors, sharded
 * safetensors with a Hugging Face index, GGUF, NumPy .npz, PEFT LoRA
 * adapter directories); these functions recognise a path through it, so
 * programs need no format logic of their own. The format-specific
 * functions (libmerge/safetensors.h, gguf.h, npz.h, peft.h) remain for
 * callers that know what they hold.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LIBMERGE_IO_H
#define LIBMERGE_IO_H

#include "libmerge/file_sink.h"
#include "libmerge/lora.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Open a model from `path`:
 * - a file, by its name: *.safetensors, *.index.json (a sharded
 *   checkpoint: every shard in its weight_map is read and the map is
 *   checked against the shards), *.gguf, *.npz; any other name by its
 *   first bytes (GGUF magic, zip signature, safetensors header);
 * - a directory holding model.safetensors.index.json (wins),
 *   model.safetensors, or exactly one *.gguf file.
 * Errors name the path: LM_ERR_IO (missing, unreadable, not a regular
 * file), LM_ERR_NOT_FOUND (a directory holding no model),
 * LM_ERR_FORMAT (contents of no known format; a directory with several
 * .gguf files; a PEFT adapter directory, which holds no model), and
 * each reader's own errors (see docs/io.md). */
LM_API lm_status lm_model_open(lm_context *ctx, const char *path,
                               lm_model **out);

/* Open a LoRA adapter from `path`: a PEFT adapter directory (holding
 * adapter_config.json; lm_peft_read) or a llama.cpp adapter GGUF
 * (lm_gguf_read_lora), also as the one .gguf of a directory. Errors as
 * lm_model_open; a path holding a model is LM_ERR_FORMAT. */
LM_API lm_status lm_lora_open(lm_context *ctx, const char *path,
                              lm_lora **out);

/* Open whatever `path` holds, as a merge input: a LoRA adapter (*lora set,
 * *model NULL) when it is a PEFT directory (which wins over a model in the
 * same directory) or a GGUF whose general.type is "adapter", else a model
 * (*model set, *lora NULL) as lm_model_open. */
LM_API lm_status lm_input_open(lm_context *ctx, const char *path,
                               lm_model **model, lm_lora **lora);

/* lm_model_save flags. */
#define LM_SAVE_COMPRESS 1u /* .npz: deflate members (np.savez_compressed) */

/* Write a whole model to `path` in the format its name ends with:
 * .safetensors, .gguf or .npz (as lm_safetensors_write, lm_gguf_write,
 * lm_npz_write with default options). Another name is
 * LM_ERR_INVALID_ARGUMENT naming the path and the known endings. */
LM_API lm_status lm_model_save(lm_context *ctx, const lm_model *model,
                               const char *path, unsigned flags);

/* A sink writing a merge into directory `dir` in the format of `like`
 * (typically the base model) when libmerge can stream that format, else
 * safetensors: GGUF as dir/model.gguf carrying like's key/values (as
 * lm_gguf_sink_create with kv_from = like); safetensors as
 * dir/model.safetensors or, when options->max_shard_bytes is set, as
 * shards and an index in `dir` (lm_safetensors_sink_create with `dir`),
 * with "format": "pt" first in its metadata (what Hugging Face
 * transformers writes) unless the options give "format". The options'
 * metadata is written by every format; max_shard_bytes only by those that
 * shard. `like` may be NULL (safetensors). */
LM_API lm_status lm_file_sink_create_for(
    lm_context *ctx, const char *dir, const lm_model *like,
    const lm_safetensors_sink_options *options, lm_file_sink **out);

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_IO_H */
