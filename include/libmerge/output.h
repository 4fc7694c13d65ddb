/* libmerge: committing a directory of output files in one step.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LIBMERGE_OUTPUT_H
#define LIBMERGE_OUTPUT_H

#include "libmerge/context.h"

#ifdef __cplusplus
extern "C" {
#endif

/* An output directory under construction: files are written into a hidden
 * staging directory beside the destination and become visible together,
 * in one rename, at commit. A model directory written this way is either
 * complete or absent, never a mix of two runs or a half-written one.
 * Not thread-safe: one thread begins, commits and destroys it (any number
 * of threads may write files inside the staging directory meanwhile). */
typedef struct lm_output_dir lm_output_dir;

typedef struct lm_output_dir_options {
    uint32_t struct_size;
    /* 0: a destination that exists and is not empty is refused at begin.
     * 1: it is replaced as a whole at commit (atomically where the file
     * system can exchange two directories), and its old contents are
     * removed afterwards. */
    int overwrite;
    /* Inputs (files or directories) the output must never touch. Refused
     * at begin and again at commit, comparing device and inode after
     * resolving symlinks: a destination that is an input directory or the
     * directory holding an input file, that contains an input, or that is
     * inside an input directory. */
    const char *const *inputs;
    size_t n_inputs;
} lm_output_dir_options;

#define LM_OUTPUT_DIR_OPTIONS_INIT \
    { (uint32_t)sizeof(lm_output_dir_options), 0, NULL, 0 }

/* Fills *options with the defaults (LM_OUTPUT_DIR_OPTIONS_INIT). */
LM_API void lm_output_dir_options_init(lm_output_dir_options *options);

/* Checks `dest` against the options, creates missing parent directories
 * and the staging directory `.NAME.lmerge-XXXXXX` beside `dest`.
 * Errors: LM_ERR_EXISTS (dest exists and is not empty, without overwrite;
 * or it is not a directory), LM_ERR_INVALID_ARGUMENT (dest overlaps an
 * input; the message names both), LM_ERR_IO (cannot create). */
LM_API lm_status lm_output_dir_begin(lm_context *ctx, const char *dest,
                                     const lm_output_dir_options *options,
                                     lm_output_dir **out);

/* The staging directory to write files into; valid until destroy. */
LM_API const char *lm_output_dir_path(const lm_output_dir *dir);

/* Flushes every file and directory under the staging directory, checks
 * the destination again and moves the staging directory into its place.
 * On error nothing is visible under `dest` that was not there before.
 * Errors: LM_ERR_IO, LM_ERR_EXISTS / LM_ERR_INVALID_ARGUMENT (dest
 * changed since begin so that it is now refused), LM_ERR_STATE (committed
 * twice). */
LM_API lm_status lm_output_dir_commit(lm_output_dir *dir);

/* Removes the staging directory and any parent directories begin created
 * unless committed. NULL is accepted. */
LM_API void lm_output_dir_destroy(lm_output_dir *dir);

#ifdef __cplusplus
}
#endif

#endif /* LIBMERGE_OUTPUT_H */
