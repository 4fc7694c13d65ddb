/* libmerge: merging at load time, tensor by tensor, from many threads.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LIBMERGE_MERGER_H
#define LIBMERGE_MERGER_H

#include "libmerge/plan.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lm_merger lm_merger;

/* Prepare a merger from a plan whose strategy, parameters and tasks
 * (models, adapters and/or task vectors) are set; base tensors arrive one
 * by one through lm_merger_apply, in any order. Runs the strategy's init
 * once. The plan needs no base, except for methods that need every tensor
 * before merging any (a strategy with a prepare pass, such as ESM's layer
 * scaling or TIES/KnOTS with scope=model, or purification with
 * LM_PURIFY_MODEL allocation): then the
 * merger runs those passes over the plan's base here, on the context's
 * threads, and every later apply gives bit-for-bit what lm_plan_execute
 * gives. Memory kept for that: what the pass keeps (ESM: each scaled
 * layer's merged delta in f32, i.e. up to the model's size in f32;
 * purification: two doubles per model plus its 1 GiB cache of purified
 * task vectors). Without a base such a plan is LM_ERR_STATE. The plan and
 * everything it borrows must outlive the merger, and the plan must not be
 * changed while the merger lives. */
LM_API lm_status lm_merger_create(lm_plan *plan, lm_merger **out);
/* Runs the strategy's fini. NULL is accepted. */
LM_API void lm_merger_destroy(lm_merger *merger);

/* 1 when some task changes tensor `name` (a full model has it or an
 * adapter targets it), else 0. */
LM_API int lm_merger_touches(const lm_merger *merger, const char *name);

/* Merge tensor `name` in place: `tensor` holds the base values on entry
 * and the merged values (same dtype) on return. A tensor no task touches
 * returns LM_OK at once, unchanged. Thread-safe: call it from several
 * loader threads at once, for different tensors. The result is
 * bit-identical to lm_plan_execute with this tensor in the base.
 * Errors: LM_ERR_SHAPE / LM_ERR_DTYPE (a model's tensor disagrees with the
 * given base), LM_ERR_NOT_FOUND (a full model lacks a tensor another full
 * model has), strategy errors; on failure `tensor` is unchanged. */
LM_API lm_status lm_merger_apply(lm_merger *merger, const char *name,
                                 lm_tensor *tensor);
/* The same into a separate output tensor of the same shape (any dtype);
 * `base` is not modified. For an untouched tensor the base values are
 * converted into `out`. */
LM_API lm_status lm_merger_apply_to(lm_merger *merger, const char *name,
                                    const lm_tensor *base, lm_tensor *out);

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_MERGER_H */
