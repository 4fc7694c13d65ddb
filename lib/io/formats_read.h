/* The readers behind the format table (lib/io/formats.c) that have no
 * public header of their own: each fills an empty model from one path. */
#ifndef LM_IO_FORMATS_READ_H
#define LM_IO_FORMATS_READ_H

#include "core/internal.h"

/* safetensors_read.c: one .safetensors file. */
lm_status lm__safetensors_read_into(lm_context *ctx, const char *path,
                                    lm_model *model);
/* safetensors_index.c: model.safetensors.index.json and its shards. */
lm_status lm__safetensors_index_read_into(lm_context *ctx,
                                          const char *index_path,
                                          lm_model *model);
/* npz_read.c: a NumPy .npz archive. */
lm_status lm__npz_read_into(lm_context *ctx, const char *path,
                            lm_model *model);

#endif
