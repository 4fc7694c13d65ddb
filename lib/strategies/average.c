/* `average`: the weighted mean of the models, sum_t w_t m_t / sum_t w_t,
 * computed on task vectors as base + sum_t w_t tau_t / sum_t w_t (mergekit
 * `linear` with normalize=true). normalize=false gives base + sum_t w_t
 * tau_t. */
#include "strategies/builtin.h"

static const lm_param_desc average_params[] = {
    {sizeof(lm_param_desc), "normalize", LM_PARAM_BOOL, 1.0, 0.0, 1.0, NULL,
     "divide by the sum of the weights (true: a weighted mean)"},
};

static lm_status average_init(const lm_strategy_init_info *info, void **state,
                              void *user)
{
    (void)user;
    int normalize;
    LM_TRY(lm_params_get_bool(info->params, "normalize", &normalize));
    double scale = 1.0;
    if (normalize) {
        double wsum = 0.0;
        for (size_t t = 0; t < info->n_models; t++)
            wsum += info->weights[t];
        if (wsum == 0.0)
            return lm_context_set_error(info->ctx, LM_ERR_OUT_OF_RANGE,
                                        "average: the model weights sum to 0; "
                                        "cannot normalize");
        scale = 1.0 / wsum;
    }
    struct lm__scalar_state *s = lm_alloc(info->ctx, sizeof(*s));
    if (!s)
        return LM_ERR_OUT_OF_MEMORY;
    s->ctx = info->ctx;
    s->value[0] = scale;
    *state = s;
    return LM_OK;
}

static lm_status average_merge(void *state, const lm_tensor_job *job,
                               void *user)
{
    (void)user;
    lm__weighted_sum(job, ((const struct lm__scalar_state *)state)->value[0]);
    return LM_OK;
}

const lm_strategy_vtable lm__average_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "average",
    .description = "weighted mean of the models (model soup)",
    .params = average_params,
    .n_params = sizeof(average_params) / sizeof(average_params[0]),
    .init = average_init,
    .merge_tensor = average_merge,
    .fini = lm__scalar_state_fini,
};
