/* `linear` (Wortsman et al. 2022, "Model soups"; mergekit's `linear`,
 * mergekit/merge_methods/linear.py): the weighted sum of the MODELS,
 * sum_t w_t m_t, divided by sum_t w_t when `normalize` (default true).
 *
 * Unlike `average` with normalize=false (base + sum_t w_t tau_t), the
 * unnormalised sum is over the models themselves, as mergekit computes
 * it: base + task vector with task vector sum_t w_t tau_t +
 * (sum_t w_t - 1) base. The plan's base counts only if it is also added
 * as a model; without a base model in mergekit's sense, make any model
 * the plan's base and add every model (the result does not depend on
 * which). Weights may differ per tensor (lm_plan_set_float_for). */
#include "strategies/geometry.h"

#include "core/linear_rule.h"

static const lm_param_desc linear_params[] = {
    {sizeof(lm_param_desc), "normalize", LM_PARAM_BOOL, 1.0, 0.0, 1.0, NULL,
     "divide by the sum of the weights (true: a weighted mean)",
     LM_PARAM_PER_TENSOR},
};

static lm_status linear_init(const lm_strategy_init_info *info, void **state,
                             void *user)
{
    (void)user;
    return lm__geo_init(info, state, "linear", 1, (size_t)-1,
                        "linear needs at least one");
}

/* normalize: out = (1 / sum_t w_t) * sum_t w_t tau_t; otherwise
 * sum_t w_t (base + tau_t) - base, the base's share in one term
 * (sum_t w_t - 1) base. */
lm_status lm__linear_rule(void *state, const lm_tensor_job *job,
                          struct lm__linear_rule *out)
{
    (void)state;
    int normalize;
    LM_TRY(lm_params_get_bool(job->params, "normalize",
                              &normalize));
    double wsum = 0.0;
    for (size_t t = 0; t < job->n_models; t++)
        wsum += job->weights[t];
    if (normalize && wsum == 0.0)
        return lm_context_set_error(job->ctx, LM_ERR_OUT_OF_RANGE,
                                    "linear: the model weights for tensor "
                                    "'%s' sum to 0; cannot normalize",
                                    job->name);
    if (normalize)
        *out = (struct lm__linear_rule){.mul = 1.0 / wsum, .div = 1.0};
    else
        *out = (struct lm__linear_rule){.base_term = true,
                                        .base_coef = wsum - 1.0,
                                        .mul = 1.0, .div = 1.0};
    return LM_OK;
}

static lm_status linear_merge(void *state, const lm_tensor_job *job,
                              void *user)
{
    (void)user;
    struct lm__linear_rule rule;
    LM_TRY(lm__linear_rule(state, job, &rule));
    lm__linear_apply(job, &rule);
    return LM_OK;
}

const lm_strategy_vtable lm__linear_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "linear",
    .description = "weighted sum of the models, normalised by default "
                   "(mergekit linear)",
    .params = linear_params,
    .n_params = sizeof(linear_params) / sizeof(linear_params[0]),
    .init = linear_init,
    .merge_tensor = linear_merge,
};
