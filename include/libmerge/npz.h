/* libmerge: NumPy .npz archives (a zip of .npy files).
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LIBMERGE_NPZ_H
#define LIBMERGE_NPZ_H

#include "libmerge/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Read an .npz file (np.savez / np.savez_compressed): every member
 * "NAME.npy" becomes tensor NAME. Stored members are viewed in the mapped
 * file when aligned (copied otherwise), deflated ones are inflated (zlib).
 * Little-endian float16/32/64 arrays in C order are supported; CRC-32s are
 * checked; zip64 archives are read. Errors: LM_ERR_IO, LM_ERR_FORMAT
 * (malformed zip or .npy header, CRC mismatch, duplicate names; messages
 * name the file and member), LM_ERR_UNSUPPORTED (other dtypes, e.g.
 * bfloat16 saved as '<V2', Fortran order, big-endian, encryption,
 * compression methods other than stored/deflate). */
LM_API lm_status lm_npz_read(lm_context *ctx, const char *path,
                             lm_model **out);

typedef struct lm_npz_options {
    uint32_t struct_size;
    int compress; /* 1: deflate members (np.savez_compressed), 0: store */
} lm_npz_options;

#define LM_NPZ_OPTIONS_INIT { (uint32_t)sizeof(lm_npz_options), 0 }

/* Fills *options with the defaults (LM_NPZ_OPTIONS_INIT). */
LM_API void lm_npz_options_init(lm_npz_options *options);

/* Write a model as an .npz that numpy loads: F32/F16/F64 tensors as such,
 * BF16 widened to float32 (numpy has no bfloat16). Written to a temporary
 * name, fsync'd and renamed on success only. */
LM_API lm_status lm_npz_write(lm_context *ctx, const lm_model *model,
                              const char *path, const lm_npz_options *options);

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_NPZ_H */
