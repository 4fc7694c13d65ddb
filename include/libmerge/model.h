/* libmerge: named tensor sets ("models") and task vectors.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LIBMERGE_MODEL_H
#define LIBMERGE_MODEL_H

#include "libmerge/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lm_model lm_model;

/* An ordered set of uniquely named tensors (insertion order is kept and is
 * the order of merge outputs). Names are non-empty NUL-terminated strings,
 * copied by the model. */
LM_API lm_status lm_model_create(lm_context *ctx, lm_model **out);
/* Destroys the model and every tensor it owns. NULL is accepted. */
LM_API void lm_model_destroy(lm_model *model);

/* Add `tensor` under `name`; the model takes ownership of the tensor handle
 * on success only (on failure the caller still owns it).
 * Errors: LM_ERR_INVALID_ARGUMENT (NULL/empty name), LM_ERR_EXISTS. */
LM_API lm_status lm_model_add(lm_model *model, const char *name,
                              lm_tensor *tensor);
LM_API size_t lm_model_count(const lm_model *model);
/* Tensor i and its name (insertion order); NULL when out of range. The
 * i-th item of any libmerge collection is X_at, its count X_count, a
 * lookup by name X_find (docs/api.md). */
LM_API const char *lm_model_name_at(const lm_model *model, size_t i);
LM_API lm_tensor *lm_model_at(const lm_model *model, size_t i);
/* Look a tensor up by name. Errors: LM_ERR_NOT_FOUND. */
LM_API lm_status lm_model_find(const lm_model *model, const char *name,
                               lm_tensor **out);

/* Host-provided tensor bytes, read on demand. `read` must fill `dst` with
 * exactly `nbytes` bytes in the declared dtype and return LM_OK, or return
 * an error (a message set with lm_context_set_error is kept). It is called
 * from worker threads, possibly concurrently for different tensors, once
 * per use; libmerge keeps no copy after the tensor is merged. */
typedef lm_status (*lm_tensor_read_fn)(const char *name, void *dst,
                                       size_t nbytes, void *user);
/* Add a lazy tensor: shape and dtype now, bytes from `read` when merged.
 * Lazy tensors have no data pointer (lm_tensor_data returns NULL and
 * element access fails with LM_ERR_STATE). */
LM_API lm_status lm_model_add_lazy(lm_model *model, const char *name,
                                   lm_dtype dtype, int ndim,
                                   const int64_t *shape, lm_tensor_read_fn read,
                                   void *user);

/* String metadata carried by a model (e.g. a safetensors "__metadata__"
 * block or GGUF key/values read from a file). Setting an existing key
 * replaces its value. */
LM_API lm_status lm_model_set_metadata(lm_model *model, const char *key,
                                       const char *value);
LM_API size_t lm_model_metadata_count(const lm_model *model);
/* Entry i; NULL pointers when out of range. */
LM_API lm_status lm_model_metadata_at(const lm_model *model, size_t i,
                                      const char **key, const char **value);
/* Errors: LM_ERR_NOT_FOUND (no message recorded: absence is normal). */
LM_API lm_status lm_model_metadata_find(const lm_model *model,
                                        const char *key, const char **value);

/* Thread-safety: concurrent reads are safe; lm_model_add needs exclusive
 * access. */

typedef struct lm_task_vector lm_task_vector;

/* tau = finetuned - base for every tensor of `base`. Both models must hold
 * exactly the same names, and each pair the same shape and dtype; the
 * error names the first offending tensor. Deltas are stored in f32 (f64
 * for f64 inputs are computed in f64 then rounded to f32). */
LM_API lm_status lm_task_vector_create(lm_context *ctx, const lm_model *base,
                                       const lm_model *finetuned,
                                       lm_task_vector **out);
LM_API void lm_task_vector_destroy(lm_task_vector *tv);
LM_API size_t lm_task_vector_count(const lm_task_vector *tv);
LM_API const char *lm_task_vector_name_at(const lm_task_vector *tv, size_t i);
/* The f32 delta for `name`. Errors: LM_ERR_NOT_FOUND. The tensor belongs to
 * the task vector. */
LM_API lm_status lm_task_vector_find(const lm_task_vector *tv,
                                     const char *name, const lm_tensor **out);
/* A task vector whose deltas are the tensors of `deltas` (e.g. a file
 * written from lm_task_vector_to_model), copied to f32 (f64 rounded once).
 * Errors: LM_ERR_INVALID_ARGUMENT (an empty model), LM_ERR_UNSUPPORTED (a
 * lazy tensor), LM_ERR_OUT_OF_MEMORY. */
LM_API lm_status lm_task_vector_from_model(lm_context *ctx,
                                           const lm_model *deltas,
                                           lm_task_vector **out);
/* Multiply every delta by `factor` in place (f32): -1 negates (task
 * forgetting), sums of scaled vectors give analogies. `factor` must be
 * finite (LM_ERR_OUT_OF_RANGE). Needs exclusive access. */
LM_API lm_status lm_task_vector_scale(lm_task_vector *tv, double factor);
/* A new model holding copies of the deltas (f32), in the task vector's
 * order, e.g. to save with lm_safetensors_write. */
LM_API lm_status lm_task_vector_to_model(const lm_task_vector *tv,
                                         lm_model **out);

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_MODEL_H */
