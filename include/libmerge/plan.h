/* libmerge: merge plans.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LIBMERGE_PLAN_H
#define LIBMERGE_PLAN_H

#include "libmerge/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lm_plan lm_plan;

/* A plan: one strategy, its parameters, a base model and the fine-tuned
 * models with per-model weights.
 * Errors: LM_ERR_NOT_FOUND (no strategy of that name; the message lists
 * the registered ones). */
LM_API lm_status lm_plan_create(lm_context *ctx, const char *strategy,
                                lm_plan **out);
LM_API void lm_plan_destroy(lm_plan *plan);
LM_API const char *lm_plan_strategy(const lm_plan *plan);

/* Set a parameter declared by the strategy.
 * Errors: LM_ERR_NOT_FOUND (unknown name; the message lists the valid
 * ones), LM_ERR_OUT_OF_RANGE (value outside [min, max], non-integer for an
 * INT, not 0/1 for a BOOL, NaN), LM_ERR_INVALID_ARGUMENT (a CHOICE set
 * with a number). */
LM_API lm_status lm_plan_set_float(lm_plan *plan, const char *name,
                                   double value);
/* Set any parameter from text, as a config file or binding would:
 * numbers for FLOAT/INT, true/false/1/0/yes/no/on/off for BOOL, a word for
 * CHOICE. Errors as lm_plan_set_float plus LM_ERR_INVALID_ARGUMENT for
 * text that does not parse. */
LM_API lm_status lm_plan_set_string(lm_plan *plan, const char *name,
                                    const char *value);

/* The base model (borrowed: it must outlive lm_plan_execute). Required. */
LM_API lm_status lm_plan_set_base(lm_plan *plan, const lm_model *base);
/* Add a fine-tuned model with its weight (borrowed like the base). Weights
 * must be finite. Models are tasks in the order added. */
LM_API lm_status lm_plan_add_model(lm_plan *plan, const lm_model *model,
                                   double weight);
LM_API size_t lm_plan_model_count(const lm_plan *plan);

/* Merge every tensor of the base into a new model with the base's names,
 * order, shapes and dtypes. Tensors run in parallel on the context's
 * threads; the result is bit-identical for any thread count. Every model
 * must have every base tensor with the same shape and dtype (the error
 * names the model index and tensor).
 * Errors: LM_ERR_STATE (no base or no models), LM_ERR_NOT_FOUND,
 * LM_ERR_SHAPE, LM_ERR_DTYPE, LM_ERR_NONFINITE (a merged value is NaN/Inf
 * while the inputs were finite), strategy errors. On failure *out is
 * untouched. */
LM_API lm_status lm_plan_execute(lm_plan *plan, lm_model **out);

/* Thread-safety: a plan is used by one thread at a time. */

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_PLAN_H */
