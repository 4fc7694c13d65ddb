/* Helpers shared by the geometric strategies (geometry.h). */
#include "strategies/geometry.h"

lm_status lm__geo_init(const lm_strategy_init_info *info, void **state,
                       const char *method, size_t lo, size_t hi,
                       const char *why)
{
    if (info->n_models < lo || info->n_models > hi)
        return lm_context_set_error(info->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "%s: the plan has %zu model(s) besides "
                                    "the base; %s",
                                    method, info->n_models, why);
    *state = NULL;
    return LM_OK;
}

void lm__geo_point(const lm_tensor_job *job, size_t t, int with_base,
                   double *x)
{
    const float *d = job->deltas[t];
    for (size_t i = 0; i < job->numel; i++)
        x[i] = with_base ? (double)d[i] : (double)job->base[i] + d[i];
}

struct lm__vec_layout lm__vec_whole(const lm_tensor_job *job)
{
    struct lm__vec_layout l = {1, job->numel, 1, 0};
    return l;
}

struct lm__vec_layout lm__vec_rows(const lm_tensor_job *job)
{
    size_t len = job->ndim > 0 ? (size_t)job->shape[job->ndim - 1] : 1;
    struct lm__vec_layout l = {len ? job->numel / len : 0, len, 1, 0};
    return l;
}

struct lm__vec_layout lm__vec_columns(const lm_tensor_job *job)
{
    size_t len = job->ndim > 0 ? (size_t)job->shape[0] : 1;
    size_t inner = len ? job->numel / len : 0;
    struct lm__vec_layout l = {inner, len, inner, 1};
    return l;
}

lm_status lm__geo_oom(const lm_tensor_job *job, const char *method)
{
    return lm_context_set_error(job->ctx, LM_ERR_OUT_OF_MEMORY,
                                "%s: out of memory merging '%s'", method,
                                job->name);
}
