/* Whether an output directory would touch an input: the checks behind
 * lm_output_dir's `inputs` option. */
#ifndef LM_IO_PATH_OVERLAP_H
#define LM_IO_PATH_OVERLAP_H

#include "libmerge/context.h"

/* LM_OK when writing the directory `dest` (which may not exist yet) cannot
 * touch `input`; otherwise LM_ERR_INVALID_ARGUMENT with a message naming
 * both. Refused: dest is the input directory (or the directory holding an
 * input file), contains it, or lies inside an input directory. Paths are
 * compared by device and inode after resolving symlinks; an input that
 * does not exist protects nothing. */
lm_status lm__check_overlap(lm_context *ctx, const char *dest,
                            const char *input);

#endif
