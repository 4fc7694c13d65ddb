/* The format table: every file format libmerge reads or writes, how a path
 * is recognised as one, and what it can do. lm_model_open, lm_lora_open,
 * lm_input_open, lm_model_save and lm_file_sink_create_for dispatch through
 * it and nothing else does, so a new format is one entry here. */
#ifndef LM_IO_FORMATS_H
#define LM_IO_FORMATS_H

#include <stdbool.h>
#include <stddef.h>

#include "core/internal.h"
#include "libmerge/file_sink.h"

struct lm__format {
    const char *name; /* for messages and lm_format_name */
    /* File names ending in one of these are this format (NULL-ended);
     * the reader then reports whatever is wrong with the contents. */
    const char *const *suffixes;
    /* Otherwise a regular file is this format when its first bytes
     * match (NULL: never recognised by content). */
    bool (*sniff)(const unsigned char *head, size_t n);
    /* A directory holds this format: sets *file to the path to read (the
     * directory itself or a file inside it; lm_free) and returns LM_OK,
     * or LM_ERR_NOT_FOUND without a message when it does not. Other
     * errors (an ambiguous directory, out of memory) have a message. */
    lm_status (*in_dir)(lm_context *ctx, const char *dir, char **file);
    /* Reading: into an empty model, and/or as a LoRA adapter. */
    lm_status (*read_into)(lm_context *ctx, const char *path,
                           lm_model *model);
    lm_status (*read_lora)(lm_context *ctx, const char *path, lm_lora **out);
    /* A model this format read is in fact an adapter (read it again with
     * read_lora), e.g. a llama.cpp LoRA GGUF. NULL: never. */
    bool (*model_is_lora)(const lm_model *model);
    /* Writing a whole model (flags: LM_SAVE_*). NULL: read-only. */
    lm_status (*write)(lm_context *ctx, const lm_model *model,
                       const char *path, unsigned flags);
    /* Streaming a merge into `path` (a file, or a directory of shards
     * when the format shards and opts->max_shard_bytes is set), carrying
     * what this format keeps of `like` (may be NULL). NULL: no sink. */
    lm_status (*sink_create)(lm_context *ctx, const char *path,
                             const lm_model *like,
                             const lm_safetensors_sink_options *opts,
                             lm_file_sink **out);
    const char *file_name; /* a one-file output inside a directory */
    bool shards;           /* sink_create honours max_shard_bytes */
};

/* What a path is asked to hold. */
enum lm__format_need {
    LM_FORMAT_MODEL = 1, /* read_into */
    LM_FORMAT_LORA = 2,  /* read_lora */
    LM_FORMAT_ANY = 3
};

/* The entries, in order of precedence (NULL-ended). */
extern const struct lm__format *const lm__formats[];

/* The format of `path` that can do `need`, and the file to read (lm_free):
 * a directory is matched entry by entry (in_dir), a file by its name,
 * then by its first bytes. Errors name the path: LM_ERR_IO (missing,
 * unreadable, a FIFO or device without a known name), LM_ERR_NOT_FOUND (a
 * directory holding nothing known), LM_ERR_FORMAT (unknown or ambiguous
 * contents, or a known format that cannot do `need`). */
lm_status lm__format_detect(lm_context *ctx, const char *path,
                            enum lm__format_need need,
                            const struct lm__format **format, char **file);

/* The format a model was read from (its format attachment), or NULL for
 * a model built in memory. */
const struct lm__format *lm__format_of_model(const lm_model *model);

/* Shared by entries: a directory entry `name` exists in `dir` (any kind
 * of file, so that the reader refuses a FIFO by name). */
lm_status lm__format_dir_entry(lm_context *ctx, const char *dir,
                               const char *name, char **file);

#endif
