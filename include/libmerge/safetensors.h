/* libmerge: reading model files.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LIBMERGE_SAFETENSORS_H
#define LIBMERGE_SAFETENSORS_H

#include "libmerge/model.h"
/* lm_model_open was declared here before libmerge/io.h; kept reachable. */
#include "libmerge/io.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Read one safetensors file. The file is mapped read-only and tensors point
 * into the mapping (no copy; a tensor whose offset is not aligned to its
 * element size is copied). Tensors keep the header's order; "__metadata__"
 * becomes the model's metadata. The mapping lives as long as the model;
 * during a merge each tensor's pages are released once it is merged.
 * Every rule of the format is checked and a violation is LM_ERR_FORMAT
 * naming the file and the tensor or field: header length vs file size,
 * well-formed JSON object, entry fields and types, non-negative integer
 * shapes, offsets ordered and inside the data, no overlaps or holes,
 * shape x dtype size = byte length, duplicate names, string-only metadata.
 * A dtype libmerge does not merge (I8, F8_E4M3, BOOL, ...) is LM_ERR_DTYPE
 * naming it; open/map failures are LM_ERR_IO. The file must not be
 * modified while the model lives (see docs/io.md). */
LM_API lm_status lm_safetensors_read(lm_context *ctx, const char *path,
                                     lm_model **out);

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_SAFETENSORS_H */
