/* Helpers shared by the geometric strategies (linear, slerp, nuslerp,
 * multislerp, karcher, model_stock, nearswap, arcee_fusion, passthrough):
 * their common state, model-count checks, the points they interpolate and
 * how a tensor is cut into vectors. Not installed. */
#ifndef LM_STRATEGIES_GEOMETRY_H
#define LM_STRATEGIES_GEOMETRY_H

#include "strategies/builtin.h"

/* Parameter of the methods that run with or without mergekit's base_model
 * (nuslerp, multislerp). */
#define WITH_BASE_PARAM                                                     \
    {sizeof(lm_param_desc), "with_base", LM_PARAM_BOOL, 1.0, 0.0, 1.0, NULL, \
     "true: interpolate task vectors (mergekit with base_model); false: "   \
     "the models themselves (mergekit without base_model)",                \
     LM_PARAM_PER_TENSOR}

/* init of every geometric strategy: checks the plan's model count is
 * within [lo, hi] (the message names the strategy and says what the
 * models are for). No state: every parameter is read per tensor from
 * job->params, where mergekit's gradients and filters put them. */
lm_status lm__geo_init(const lm_strategy_init_info *info, void **state,
                       const char *method, size_t lo, size_t hi,
                       const char *why);

/* x[i] = task vector t (with_base) or model t itself (base + delta), f64. */
void lm__geo_point(const lm_tensor_job *job, size_t t, int with_base,
                   double *x);

/* A tensor cut into `count` vectors of `len` elements: element j of vector
 * c is at lm__vec_at(l, c, j). */
struct lm__vec_layout {
    size_t count, len, stride;
    int along_first;
};
/* One vector: the whole tensor, flattened. */
struct lm__vec_layout lm__vec_whole(const lm_tensor_job *job);
/* Rows along the last dimension (torch's dim=-1; a 1-D tensor is one
 * row). */
struct lm__vec_layout lm__vec_rows(const lm_tensor_job *job);
/* Vectors along the first dimension (torch's transpose(0, -1) then
 * dim=-1): one per index of the remaining dimensions. */
struct lm__vec_layout lm__vec_columns(const lm_tensor_job *job);

static inline size_t lm__vec_at(const struct lm__vec_layout *l, size_t c,
                                size_t j)
{
    return l->along_first ? c + j * l->stride : c * l->len + j;
}

/* Out-of-memory error naming the strategy and tensor. */
lm_status lm__geo_oom(const lm_tensor_job *job, const char *method);

#endif
