/* libmerge: LoRA adapters as factored task vectors.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LIBMERGE_LORA_H
#define LIBMERGE_LORA_H

#include "libmerge/plan.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lm_lora lm_lora;

/* A LoRA adapter: for some base weights W [out, in], a task vector
 * scale * B A with A [r, in] and B [out, r], kept factored. */
LM_API lm_status lm_lora_create(lm_context *ctx, lm_lora **out);
/* Destroys the adapter and the factor tensors it owns. NULL is accepted. */
LM_API void lm_lora_destroy(lm_lora *lora);

/* Add the update of base tensor `target`. Takes ownership of A and B on
 * success. A must be 2-D [r, in], B 2-D [out, r] with the same r >= 1;
 * scale finite. Errors: LM_ERR_SHAPE, LM_ERR_EXISTS, LM_ERR_OUT_OF_RANGE. */
LM_API lm_status lm_lora_add(lm_lora *lora, const char *target, lm_tensor *a,
                             lm_tensor *b, double scale);
LM_API size_t lm_lora_count(const lm_lora *lora);
/* Entry i (insertion order). Pointers stay owned by the adapter. */
LM_API lm_status lm_lora_at(const lm_lora *lora, size_t i,
                            const char **target, const lm_tensor **a,
                            const lm_tensor **b, double *scale);
/* Errors: LM_ERR_NOT_FOUND. */
LM_API lm_status lm_lora_find(const lm_lora *lora, const char *target,
                              const lm_tensor **a, const lm_tensor **b,
                              double *scale);

/* Whether target's base weight is stored transposed, [in, out] — GPT-2's
 * Conv1D layers, PEFT's `fan_in_fan_out: true` (lm_peft_read sets it from
 * adapter_config.json): its update is then scale * (B A)^T, with A still
 * [r, in] and B [out, r]. Errors: LM_ERR_NOT_FOUND (no such target). */
LM_API lm_status lm_lora_set_transposed(lm_lora *lora, const char *target,
                                        int transposed);
/* 1 when target is set transposed, else 0 (also for unknown targets). */
LM_API int lm_lora_is_transposed(const lm_lora *lora, const char *target);

/* Add an adapter to a plan as one task: its task vector is scale * B A for
 * the tensors it targets and zero elsewhere (the product is formed one
 * tensor at a time, in f32 with BLAS, only when that tensor is merged).
 * Every target must be a 2-D base tensor of shape [out, in] ([in, out]
 * when set transposed); execution
 * fails with LM_ERR_NOT_FOUND / LM_ERR_SHAPE naming it otherwise. Borrowed:
 * must outlive execution. */
LM_API lm_status lm_plan_add_lora(lm_plan *plan, const lm_lora *lora,
                                  double weight);

/* The dense task vector of an adapter: scale * B A (f32, BLAS) for each
 * target, which must be a 2-D tensor of `base` of shape [out, in]
 * (LM_ERR_NOT_FOUND / LM_ERR_SHAPE naming it otherwise). */
LM_API lm_status lm_task_vector_from_lora(lm_context *ctx,
                                          const lm_lora *lora,
                                          const lm_model *base,
                                          lm_task_vector **out);

/* Thread-safety: concurrent reads are safe; lm_lora_add needs exclusive
 * access. */

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_LORA_H */
