/* `task_arithmetic` (Ilharco et al. 2023): base + lambda * sum_t w_t tau_t.
 * Matches mergekit's task_arithmetic with normalize=false. */
#include "strategies/builtin.h"

static const lm_param_desc ta_params[] = {
    {sizeof(lm_param_desc), "lambda", LM_PARAM_FLOAT, 1.0, -10.0, 10.0, NULL,
     "scale of the summed task vectors (papers tune it; 0.3-0.5 is common)"},
};

static lm_status ta_init(const lm_strategy_init_info *info, void **state,
                         void *user)
{
    (void)user;
    double lambda;
    LM_TRY(lm_params_get_float(info->params, "lambda", &lambda));
    struct lm__scalar_state *s = lm_alloc(info->ctx, sizeof(*s));
    if (!s)
        return LM_ERR_OUT_OF_MEMORY;
    s->ctx = info->ctx;
    s->value[0] = lambda;
    *state = s;
    return LM_OK;
}

static lm_status ta_merge(void *state, const lm_tensor_job *job, void *user)
{
    (void)user;
    lm__weighted_sum(job, ((const struct lm__scalar_state *)state)->value[0]);
    return LM_OK;
}

const lm_strategy_vtable lm__task_arithmetic_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "task_arithmetic",
    .description = "base + lambda * sum of weighted task vectors",
    .params = ta_params,
    .n_params = sizeof(ta_params) / sizeof(ta_params[0]),
    .init = ta_init,
    .merge_tensor = ta_merge,
    .fini = lm__scalar_state_fini,
};
