/* Registration of the built-in strategies, and helpers they share. */
#include "strategies/builtin.h"

#include "core/linear_rule.h"

static const lm_strategy_vtable *const builtins[] = {
    &lm__average_strategy,
    &lm__task_arithmetic_strategy,
    &lm__ties_strategy,
    &lm__dare_linear_strategy,
    &lm__dare_ties_strategy,
    &lm__tsv_strategy,
    &lm__iso_c_strategy,
    &lm__iso_cts_strategy,
    &lm__knots_strategy,
    &lm__esm_strategy,
    &lm__linear_strategy,
    &lm__slerp_strategy,
    &lm__nuslerp_strategy,
    &lm__multislerp_strategy,
    &lm__karcher_strategy,
    &lm__model_stock_strategy,
    &lm__nearswap_strategy,
    &lm__arcee_fusion_strategy,
    &lm__passthrough_strategy,
    &lm__breadcrumbs_strategy,
    &lm__breadcrumbs_ties_strategy,
    &lm__della_strategy,
    &lm__della_linear_strategy,
    &lm__sce_strategy,
    &lm__ram_strategy,
    &lm__ramplus_tl_strategy,
    &lm__nsc_strategy,
};

/* Strategies whose rule is out = base + linear combination of the task
 * vectors: the executor merges them in one fused pass (core/fused.c). */
static const struct {
    const char *name;
    lm__linear_rule_fn rule;
} linear_rules[] = {
    {"task_arithmetic", lm__task_arithmetic_rule},
    {"average", lm__average_rule},
    {"linear", lm__linear_rule},
};

lm_status lm__register_builtin_strategies(lm_context *ctx)
{
    for (size_t i = 0; i < sizeof(builtins) / sizeof(builtins[0]); i++)
        LM_TRY(lm_register_strategy(ctx, builtins[i]));
    for (size_t i = 0; i < sizeof(linear_rules) / sizeof(linear_rules[0]);
         i++)
        LM_TRY(lm__strategy_set_linear_rule(ctx, linear_rules[i].name,
                                            linear_rules[i].rule));
    LM_TRY(lm__svd_sum_rules_register(ctx));
    return lm__sparse_rules_register(ctx);
}

void lm__linear_apply(const lm_tensor_job *job,
                      const struct lm__linear_rule *r)
{
    for (size_t i = 0; i < job->numel; i++) {
        double acc = r->base_term ? r->base_coef * (double)job->base[i] : 0.0;
        for (size_t t = 0; t < job->n_models; t++)
            acc += job->weights[t] * (double)job->deltas[t][i];
        job->out[i] = (float)(r->mul * (acc / r->div));
    }
}

void lm__weighted_sum(const lm_tensor_job *job, double scale)
{
    for (size_t i = 0; i < job->numel; i++) {
        double acc = 0.0;
        for (size_t t = 0; t < job->n_models; t++)
            acc += job->weights[t] * (double)job->deltas[t][i];
        job->out[i] = (float)(scale * acc);
    }
}
