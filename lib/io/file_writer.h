/* The per-format half of a file sink. The generic sink (file_sink.c)
 * assigns tensors to shard files, creates them, lets any worker pwrite a
 * tensor at its offset and commits the output (atomic_file.h for one
 * file, libmerge/output.h for a directory of shards); a writer only says
 * what the bytes around the tensor data are: safetensors_write.c,
 * gguf_sink.c. */
#ifndef LM_IO_FILE_WRITER_H
#define LM_IO_FILE_WRITER_H

#include "core/internal.h"
#include "libmerge/file_sink.h"

/* The output as laid out at begin, as a writer sees it. */
struct lm__sink_layout {
    const lm_tensor_desc *outputs; /* during header() only, else NULL */
    const char *const *names;      /* the tensors' names (the sink's) */
    size_t n;
    const size_t *shard;           /* each tensor's shard (0: one file) */
    size_t n_shards;
    uint64_t total_bytes;          /* all tensors' data */
    /* Filled by header(): each tensor's absolute offset in its file. */
    uint64_t *offset;
    const char *const *meta_keys, *const *meta_values; /* strings */
    size_t n_meta;
};

struct lm__file_writer {
    const char *what; /* prefixes messages: "safetensors sink" */
    /* Refuses outputs the format cannot hold before any file exists;
     * NULL: header() checks. */
    lm_status (*check)(lm_context *ctx, const lm_tensor_desc *outputs,
                       size_t n);
    /* File k's bytes before and between the tensor data (lm_free'd by
     * the caller), written at offset 0; the offsets of its tensors; the
     * file's length. */
    lm_status (*header)(lm_context *ctx, const void *config,
                        struct lm__sink_layout *layout, size_t k,
                        unsigned char **bytes, size_t *len,
                        uint64_t *file_len);
    /* Sharded outputs: the file name of shard k of n, and a file listing
     * the shards (the index) written into `dir` before the commit; `dest`
     * names the output in messages. NULL: the format does not shard. */
    void (*shard_name)(size_t k, size_t n, char *buf, size_t size);
    lm_status (*index)(lm_context *ctx, const struct lm__sink_layout *layout,
                       const char *const *shard_names, const char *dir,
                       const char *dest);
    /* Frees the writer's config (may be NULL). */
    void (*config_free)(lm_context *ctx, void *config);
    /* Writers that store tensors in another encoding than their output
     * bytes (GGUF's F16 and Q8_0): at begin, before header(), the bytes
     * each output takes in the file (sizes[i]); later, from any worker,
     * tensor i's output bytes re-encoded into *out (lm_alloc'd, freed by
     * the sink), or *out NULL to write them as they are. NULL hooks: every
     * tensor is stored as its output bytes. */
    lm_status (*stored_sizes)(lm_context *ctx, void *config,
                              const lm_tensor_desc *outputs, size_t n,
                              uint64_t *sizes);
    lm_status (*encode)(lm_context *ctx, const void *config, size_t index,
                        const char *name, const void *data, size_t nbytes,
                        void **out, size_t *out_len);
};

/* A sink writing `path` (a file; with max_shard_bytes, a directory of
 * shards committed through lm_output_dir) with writer `w` and its
 * `config`, which the sink owns from here on, even on failure. The
 * metadata strings are copied. */
lm_status lm__file_sink_create(lm_context *ctx, const char *path,
                               const struct lm__file_writer *w, void *config,
                               uint64_t max_shard_bytes,
                               const char *const *meta_keys,
                               const char *const *meta_values, size_t n_meta,
                               lm_file_sink **out);

/* Every tensor of an in-memory model through `sink`, in model order,
 * committed on success. */
lm_status lm__file_sink_write_model(lm_context *ctx, const lm_model *model,
                                    lm_file_sink *sink);

#endif
