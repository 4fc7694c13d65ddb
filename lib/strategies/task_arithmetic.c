/* `task_arithmetic` (Ilharco et al. 2023): base + lambda * sum_t w_t tau_t,
 * optionally divided by sum_t w_t (`normalize`, mergekit's option: a sum
 * with |sum| < 1e-8 divides by 1). Matches mergekit's task_arithmetic
 * (github.com/arcee-ai/mergekit, generalized_task_arithmetic.py). */
#include <math.h>

#include "strategies/sparsify.h"

#include "core/linear_rule.h"

static const lm_param_desc ta_params[] = {
    {sizeof(lm_param_desc), "lambda", LM_PARAM_FLOAT, 1.0, -10.0, 10.0, NULL,
     "scale of the summed task vectors (papers tune it; 0.3-0.5 is common)",
     LM__PER_TENSOR},
    {sizeof(lm_param_desc), "normalize", LM_PARAM_BOOL, 0.0, 0.0, 1.0, NULL,
     "divide by the sum of the weights (mergekit; |sum| < 1e-8: by 1)",
     LM__PER_TENSOR},
};

static lm_status ta_init(const lm_strategy_init_info *info, void **state,
                         void *user)
{
    (void)user;
    /* Parameters are read per tensor; the state only remembers them. */
    *state = (void *)info->params;
    return LM_OK;
}

/* out = lambda * (sum_t w_t tau_t / div), div the weight sum when
 * normalizing (as lm__gta_combine without election). */
lm_status lm__task_arithmetic_rule(void *state, const lm_tensor_job *job,
                                   struct lm__linear_rule *out)
{
    const lm_params *p = lm__job_params(job, state);
    double lambda;
    int normalize;
    LM_TRY(lm_params_get_float(p, "lambda", &lambda));
    LM_TRY(lm_params_get_bool(p, "normalize", &normalize));
    double div = 1.0;
    if (normalize) {
        double wsum = 0.0;
        for (size_t t = 0; t < job->n_models; t++)
            wsum += job->weights[t];
        if (fabs(wsum) >= 1e-8)
            div = wsum;
    }
    *out = (struct lm__linear_rule){.mul = lambda, .div = div};
    return LM_OK;
}

static lm_status ta_merge(void *state, const lm_tensor_job *job, void *user)
{
    (void)user;
    struct lm__linear_rule rule;
    LM_TRY(lm__task_arithmetic_rule(state, job, &rule));
    lm__linear_apply(job, &rule);
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
};
