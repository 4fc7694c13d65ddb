/* The rule a linear-combination strategy declares so that the executor
 * can merge its tensors in one fused pass (core/fused.c) instead of
 * calling merge_tensor on whole-tensor f32 copies. Library-internal: the
 * built-in strategies declare it after registering (builtin.c); plugins
 * never have one and keep the plain path. Not installed.
 *
 * The rule reproduces, operation for operation, what the strategy's
 * merge_tensor computes per element from the f32 base b and the f32 task
 * vectors d_t (model_t - b, rounded to f32):
 *
 *     acc = base_term ? base_coef * (double)b : 0.0
 *     acc += w_t * (double)d_t          for t = 0, 1, ... in order
 *     out = (float)(mul * (acc / div))  the merged task vector
 *
 * so that the fused result is bit-identical to the plain one. */
#ifndef LM_CORE_LINEAR_RULE_H
#define LM_CORE_LINEAR_RULE_H

#include <stdbool.h>

#include "libmerge/sys/strategy.h"

struct lm__linear_rule {
    bool base_term;
    double base_coef;
    double mul, div;
};

/* The rule for one tensor: `job` is the tensor's job as merge_tensor
 * would get it (name, shape, params view, per-tensor weights) but without
 * data (base, deltas and out are NULL). Errors as merge_tensor's. */
typedef lm_status (*lm__linear_rule_fn)(void *state, const lm_tensor_job *job,
                                        struct lm__linear_rule *out);

/* Attach `fn` to the registered strategy `name` (registry.c). */
lm_status lm__strategy_set_linear_rule(lm_context *ctx, const char *name,
                                       lm__linear_rule_fn fn);
/* The rule of a registered vtable (lm_strategy_find's), or NULL. */
lm__linear_rule_fn lm__strategy_linear_rule(const lm_strategy_vtable *vt);

#endif
