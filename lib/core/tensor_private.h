/* The tensor's private layout and element helpers. Not installed.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LM_CORE_TENSOR_PRIVATE_H
#define LM_CORE_TENSOR_PRIVATE_H

#include <stdbool.h>

#include "core/context_private.h"
#include "libmerge/model.h" /* lm_tensor_read_fn */
#include "libmerge/tensor.h"

struct lm_tensor {
    lm_context *ctx;
    lm_dtype dtype;
    int ndim;
    int64_t shape[LM_MAX_DIMS];
    size_t numel;
    void *data;
    bool owns_data;
    /* Lazy tensors: data is NULL and bytes come from the host. */
    lm_tensor_read_fn lazy_read;
    void *lazy_user;
    const char *lazy_name; /* the model entry's name */
};

/* Element count of a shape; *overflow when it does not fit size_t. */
size_t lm__numel_checked(int ndim, const int64_t *shape, bool *overflow);
/* Convert a tensor's elements to a caller-provided f32 buffer, reading
 * lazy tensors through their callback. */
lm_status lm__read_f32(lm_context *ctx, const lm_tensor *tensor, float *dst);
/* The same into f64 (exact for every dtype). */
lm_status lm__read_f64(lm_context *ctx, const lm_tensor *tensor, double *dst);
/* A lazy tensor (no storage; bytes from `read`). */
lm_status lm__tensor_create_lazy(lm_context *ctx, lm_dtype dtype, int ndim,
                                 const int64_t *shape, lm_tensor_read_fn read,
                                 void *user, lm_tensor **out);
/* Same number of dimensions and extents (any dtypes). */
bool lm__same_shape(const lm_tensor *a, const lm_tensor *b);
/* Same shape as the base tensor (any dtype: inputs may mix them), or a
 * message naming the tensor prefixed by `what`. */
lm_status lm__check_pair(lm_context *ctx, const char *what, const char *name,
                         const lm_tensor *base, const lm_tensor *other);

#endif /* LM_CORE_TENSOR_PRIVATE_H */
