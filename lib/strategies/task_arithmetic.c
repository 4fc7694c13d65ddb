/* `task_arithmetic` (Ilharco et al. 2023): base + lambda * sum_t w_t tau_t.
 * Matches mergekit's task_arithmetic with normalize=false. */
#include "strategies/builtin.h"

static const lm_param_desc ta_params[] = {
    {sizeof(lm_param_desc), "lambda", LM_PARAM_FLOAT, 1.0, -10.0, 10.0, NULL,
     "scale of the summed task vectors (papers tune it; 0.3-0.5 is common)",
     LM_PARAM_PER_TENSOR},
};

/* lambda is read per tensor: mergekit configs may give it a gradient. */
static lm_status ta_merge(void *state, const lm_tensor_job *job, void *user)
{
    (void)state;
    (void)user;
    double lambda;
    LM_TRY(lm_params_get_float(job->params, "lambda", &lambda));
    lm__weighted_sum(job, lambda);
    return LM_OK;
}

const lm_strategy_vtable lm__task_arithmetic_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "task_arithmetic",
    .description = "base + lambda * sum of weighted task vectors",
    .params = ta_params,
    .n_params = sizeof(ta_params) / sizeof(ta_params[0]),
    .merge_tensor = ta_merge,
};
