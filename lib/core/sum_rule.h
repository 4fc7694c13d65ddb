/* The rule a strategy declares when, for some tensors, it needs only the
 * weighted sum of the task vectors (Iso-C: the polar factor of
 * M = sum_t w_t d_t). The core then forms M in f64 straight from the
 * inputs in blocks (core/sum_route.c) instead of copying the base and
 * every task vector into a whole-tensor f32 block first: T + 1 tensor-
 * sized buffers of fresh pages fewer. Library-internal, as
 * core/linear_rule.h: built-ins declare it, plugins never do.
 *
 * The sum is bit-identical to the plain path's: per element, with the
 * f32 base b and the f32 task vectors d_t = model_t - b (an f32
 * subtraction),
 *
 *     acc = 0.0;  acc += w_t * (double)d_t   for t = 0, 1, ... in order
 *
 * and, over the elements in order, the sums of squares the inputs'
 * precision needs (b2 = sum b^2, w2[t] = sum (b + d_t)^2 in f64,
 * m2 = sum acc^2). */
#ifndef LM_CORE_SUM_RULE_H
#define LM_CORE_SUM_RULE_H

#include <stdbool.h>

#include "libmerge/sys/strategy.h"

struct lm__sum_stats {
    double b2, m2;
    const double *w2; /* n_models entries */
};

struct lm__sum_rule {
    /* Whether merge_tensor would use only the sum for this tensor: `job`
     * without data (base, deltas, out NULL). */
    bool (*wants)(void *state, const lm_tensor_job *job);
    /* merge_tensor's work given the sum (numel doubles, row-major; the
     * strategy may overwrite it) and its statistics: job->deltas is
     * NULL, job->base and job->out are set as for merge_tensor. */
    lm_status (*merge)(void *state, const lm_tensor_job *job, double *sum,
                       const struct lm__sum_stats *stats);
};

/* Attach `rule` (static storage) to the registered strategy `name`. */
lm_status lm__strategy_set_sum_rule(lm_context *ctx, const char *name,
                                    const struct lm__sum_rule *rule);
/* The rule of a registered vtable, or NULL. */
const struct lm__sum_rule *lm__strategy_sum_rule(const lm_strategy_vtable *vt);

#endif
