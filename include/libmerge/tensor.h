/* libmerge: dense tensors and dtype conversion.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LIBMERGE_TENSOR_H
#define LIBMERGE_TENSOR_H

#include "libmerge/context.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Element types. Values are pinned. */
typedef enum lm_dtype {
    LM_F32 = 0,
    LM_F16 = 1,  /* IEEE 754 binary16 */
    LM_BF16 = 2, /* bfloat16: the top 16 bits of an f32 */
    LM_F64 = 3
} lm_dtype;

#define LM_MAX_DIMS 8

/* Size in bytes of one element; 0 for an unknown dtype. */
LM_API size_t lm_dtype_size(lm_dtype dtype);
/* Lower-case name ("f32", "f16", "bf16", "f64"); "?" for unknown. */
LM_API const char *lm_dtype_name(lm_dtype dtype);
/* Parse a dtype name. Accepts f32/float32, f16/float16, bf16/bfloat16,
 * f64/float64 and the safetensors spellings F32/F16/BF16/F64. */
LM_API lm_status lm_dtype_parse(const char *name, lm_dtype *out);

/* Scalar conversions. Narrowing is round-to-nearest-even; NaN stays NaN
 * (quiet), overflow gives +-Inf, subnormals are handled exactly. */
LM_API uint16_t lm_f32_to_f16(float value);
LM_API float lm_f16_to_f32(uint16_t bits);
LM_API uint16_t lm_f32_to_bf16(float value);
LM_API float lm_bf16_to_f32(uint16_t bits);
/* Convert n elements between any two dtypes (f64 -> f16/bf16 rounds once,
 * through no intermediate f32). src and dst must not overlap unless they
 * are the same pointer with the same dtype. */
LM_API lm_status lm_convert(const void *src, lm_dtype src_dtype, void *dst,
                            lm_dtype dst_dtype, size_t n);

typedef struct lm_tensor lm_tensor;

/* A contiguous, row-major tensor of 0..LM_MAX_DIMS dimensions (0 dims is a
 * scalar with one element). Dimensions must be >= 0.
 *
 * lm_tensor_create allocates zero-filled storage owned by the tensor.
 * Errors: LM_ERR_INVALID_ARGUMENT, LM_ERR_DTYPE, LM_ERR_SHAPE (ndim out of
 * range, negative dimension, byte size overflows size_t),
 * LM_ERR_OUT_OF_MEMORY. */
LM_API lm_status lm_tensor_create(lm_context *ctx, lm_dtype dtype, int ndim,
                                  const int64_t *shape, lm_tensor **out);
/* Wrap caller memory without copying. The caller keeps ownership of `data`
 * and must keep it alive and unmoved until the tensor is destroyed;
 * `nbytes` must equal numel * lm_dtype_size(dtype). `data` must be aligned
 * to the element size. libmerge never writes through a wrapped tensor that
 * it uses as an input. */
LM_API lm_status lm_tensor_wrap(lm_context *ctx, lm_dtype dtype, int ndim,
                                const int64_t *shape, void *data,
                                size_t nbytes, lm_tensor **out);
/* Deep copy into storage owned by the new tensor. */
LM_API lm_status lm_tensor_clone(lm_context *ctx, const lm_tensor *src,
                                 lm_tensor **out);
/* NULL is accepted. Frees owned storage only. */
LM_API void lm_tensor_destroy(lm_tensor *tensor);

LM_API lm_dtype lm_tensor_dtype(const lm_tensor *tensor);
LM_API int lm_tensor_ndim(const lm_tensor *tensor);
/* Dimension i, or -1 when i is out of range. */
LM_API int64_t lm_tensor_dim(const lm_tensor *tensor, int i);
/* Pointer to the tensor's shape array (ndim entries). */
LM_API const int64_t *lm_tensor_shape(const lm_tensor *tensor);
LM_API size_t lm_tensor_numel(const lm_tensor *tensor);
LM_API size_t lm_tensor_nbytes(const lm_tensor *tensor);
LM_API void *lm_tensor_data(lm_tensor *tensor);
LM_API const void *lm_tensor_cdata(const lm_tensor *tensor);
/* 1 when the tensor wraps caller memory, 0 when it owns its storage. */
LM_API int lm_tensor_is_wrapped(const lm_tensor *tensor);

/* Element access by flat (row-major) index, converting through f64.
 * Errors: LM_ERR_OUT_OF_RANGE for index >= numel. */
LM_API lm_status lm_tensor_get(const lm_tensor *tensor, size_t index,
                               double *out);
LM_API lm_status lm_tensor_set(lm_tensor *tensor, size_t index, double value);
/* Element access by multi-index (ndim entries, each within its dim). */
LM_API lm_status lm_tensor_get_at(const lm_tensor *tensor,
                                  const int64_t *indices, double *out);

/* Thread-safety: a tensor may be read from many threads at once; writes
 * need exclusive access. */

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_TENSOR_H */
