/* `average`: the weighted mean of the models, sum_t w_t m_t / sum_t w_t,
 * computed on task vectors as base + sum_t w_t tau_t / sum_t w_t (mergekit
 * `linear` with normalize=true). normalize=false gives base + sum_t w_t
 * tau_t. */
#include "strategies/builtin.h"

#include "core/linear_rule.h"

static const lm_param_desc average_params[] = {
    {sizeof(lm_param_desc), "normalize", LM_PARAM_BOOL, 1.0, 0.0, 1.0, NULL,
     "divide by the sum of the weights (true: a weighted mean)",
     LM_PARAM_PER_TENSOR},
};

/* Read per tensor: the weights (and normalize) may differ by tensor in a
 * mergekit config. out = scale * sum_t w_t tau_t. */
lm_status lm__average_rule(void *state, const lm_tensor_job *job,
                           struct lm__linear_rule *out)
{
    (void)state;
    int normalize;
    LM_TRY(lm_params_get_bool(job->params, "normalize", &normalize));
    double scale = 1.0;
    if (normalize) {
        double wsum = 0.0;
        for (size_t t = 0; t < job->n_models; t++)
            wsum += job->weights[t];
        if (wsum == 0.0)
            return lm_context_set_error(job->ctx, LM_ERR_OUT_OF_RANGE,
                                        "average: the model weights sum to 0 "
                                        "for tensor '%s'; cannot normalize",
                                        job->name);
        scale = 1.0 / wsum;
    }
    *out = (struct lm__linear_rule){.mul = scale, .div = 1.0};
    return LM_OK;
}

static lm_status average_merge(void *state, const lm_tensor_job *job,
                               void *user)
{
    (void)user;
    struct lm__linear_rule rule;
    LM_TRY(lm__average_rule(state, job, &rule));
    lm__linear_apply(job, &rule);
    return LM_OK;
}

const lm_strategy_vtable lm__average_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "average",
    .description = "weighted mean of the models (model soup)",
    .params = average_params,
    .n_params = sizeof(average_params) / sizeof(average_params[0]),
    .merge_tensor = average_merge,
};
