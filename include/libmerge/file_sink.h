/* libmerge: streaming merged tensors into safetensors files.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LIBMERGE_FILE_SINK_H
#define LIBMERGE_FILE_SINK_H

#include "libmerge/model.h"
#include "libmerge/sink.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lm_file_sink lm_file_sink;

typedef struct lm_safetensors_sink_options {
    uint32_t struct_size;
    /* 0: one file at `path`. Otherwise `path` is a directory (created if
     * missing; refused with LM_ERR_EXISTS if it exists and is not empty)
     * that receives model-00001-of-0000N.safetensors shards of at most
     * this many data bytes each (a larger tensor gets a shard of its own)
     * and model.safetensors.index.json, like Hugging Face. */
    uint64_t max_shard_bytes;
    /* n_metadata key/value pairs for "__metadata__" (strings copied). */
    const char *const *metadata_keys;
    const char *const *metadata_values;
    size_t n_metadata;
} lm_safetensors_sink_options;

#define LM_SAFETENSORS_SINK_OPTIONS_INIT \
    { (uint32_t)sizeof(lm_safetensors_sink_options), 0, NULL, NULL, 0 }

/* Fills *options with the defaults (LM_SAFETENSORS_SINK_OPTIONS_INIT). */
LM_API void lm_safetensors_sink_options_init(
    lm_safetensors_sink_options *options);

/* A sink that writes the merge result as safetensors while it is produced:
 * each tensor is written at its final offset as soon as it is merged, so
 * memory stays bounded. Nothing is visible under a final name before every
 * tensor is in: one file is written under a temporary name beside `path`,
 * fsync'd and renamed over it; a sharded output is written into a staging
 * directory that becomes `path`, shards and index together, in one rename
 * (libmerge/output.h). A failed or interrupted merge leaves nothing that
 * looks complete; an existing file at the destination is replaced only on
 * success.
 * Errors: LM_ERR_IO (directory cannot be created or written),
 * LM_ERR_EXISTS (sharded: `path` is not an empty directory),
 * LM_ERR_INVALID_ARGUMENT. */
LM_API lm_status lm_safetensors_sink_create(
    lm_context *ctx, const char *path,
    const lm_safetensors_sink_options *options, lm_file_sink **out);
/* Write a whole model to a safetensors file (or, with max_shard_bytes, a
 * sharded directory) through the same crash-safe path as the sink: nothing
 * appears under the final name unless everything was written. Tensors are
 * written in model order, in their own dtype. */
LM_API lm_status lm_safetensors_write(lm_context *ctx, const lm_model *model,
                                      const char *path,
                                      const lm_safetensors_sink_options *options);

/* The vtable to pass to lm_plan_execute_to; valid while the sink lives.
 * A sink is used for one execution. */
LM_API const lm_sink_vtable *lm_file_sink_vtable(lm_file_sink *sink);
/* Between the sink's begin and end: the temporary file that will hold
 * output tensor `index` and the byte offset of its data there, so that
 * cooperating processes (e.g. MPI ranks, see docs/distributed.md) can
 * write tensors into the same files with pwrite; their bytes are then
 * committed by this sink's end (fsync, rename, index). Errors:
 * LM_ERR_STATE (before begin, after end), LM_ERR_OUT_OF_RANGE,
 * LM_ERR_UNSUPPORTED (a tensor the sink re-encodes, e.g. GGUF F16 or Q8_0
 * storage: see lm_gguf_options.store). */
LM_API lm_status lm_file_sink_layout(const lm_file_sink *sink, size_t index,
                                     const char **path, uint64_t *offset);

/* Paths of the files written (after a successful execution), e.g. to
 * report them; NULL when i is out of range. */
LM_API size_t lm_file_sink_file_count(const lm_file_sink *sink);
LM_API const char *lm_file_sink_file_at(const lm_file_sink *sink, size_t i);
/* Destroys the sink; if it was never committed, its temporary files are
 * removed. NULL is accepted. */
LM_API void lm_file_sink_destroy(lm_file_sink *sink);

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_FILE_SINK_H */
