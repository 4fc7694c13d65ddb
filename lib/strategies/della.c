/* `della`, `della_linear` (Deep et al., "DELLA-Merging: Reducing
 * Interference in Model Merging through Magnitude-Based Sampling",
 * arXiv:2406.11617): drop each task-vector entry at random with a keep
 * probability that grows with its magnitude rank in its row (from
 * density - epsilon to density + epsilon), restore the L1 norm, then
 * TIES-elect (della) or sum (della_linear). mergekit's semantics and
 * defaults (github.com/arcee-ai/mergekit, mergekit/sparsify.py
 * della_magprune); docs/methods/mergekit_sparse.md. */
#include "strategies/sparsify.h"

#define DELLA_PARAMS(normalize_default)                                     \
    {sizeof(lm_param_desc), "density", LM_PARAM_FLOAT, 1.0, 0.0, 1.0, NULL, \
     "mean keep probability (per model; 1 keeps all)",                      \
     LM__PER_MODEL},                                                        \
    {sizeof(lm_param_desc), "epsilon", LM_PARAM_FLOAT, 0.15, 0.0, 1.0, NULL, \
     "half-width of the keep probabilities (per model)",                    \
     LM__PER_MODEL},                                                        \
    {sizeof(lm_param_desc), "lambda", LM_PARAM_FLOAT, 1.0, -10.0, 10.0,     \
     NULL, "scale of the merged task vector",                               \
     LM__PER_TENSOR},                                                       \
    {sizeof(lm_param_desc), "normalize", LM_PARAM_BOOL, normalize_default,  \
     0.0, 1.0, NULL, "divide by the (agreeing) weights' sum",               \
     LM__PER_TENSOR},                                                       \
    {sizeof(lm_param_desc), "rescale", LM_PARAM_BOOL, 1.0, 0.0, 1.0, NULL,  \
     "restore each pruned task vector's L1 norm", LM__PER_TENSOR}

static const lm_param_desc della_params[] = {DELLA_PARAMS(1.0)};
static const lm_param_desc della_linear_params[] = {DELLA_PARAMS(0.0)};

static lm_status magprune(const lm_tensor_job *job, const lm_params *plan,
                          size_t t, bool rescale, float *x, float *scratch,
                          float *tmp)
{
    (void)scratch;
    (void)tmp;
    double density, epsilon;
    LM_TRY(lm__task_param(job, plan, "density", t, &density));
    LM_TRY(lm__task_param(job, plan, "epsilon", t, &epsilon));
    if (density >= 1.0)
        return LM_OK; /* mergekit: nothing dropped, nothing rescaled */
    size_t n = job->numel;
    if (density <= 0.0) {
        for (size_t i = 0; i < n; i++)
            x[i] = 0.0f;
        return LM_OK;
    }
    if (density + epsilon >= 1.0 || density - epsilon <= 0.0)
        return lm_context_set_error(
            job->ctx, LM_ERR_OUT_OF_RANGE,
            "della: tensor '%s', model %zu: density %g and epsilon %g give "
            "keep probabilities outside (0, 1); need 0 < density - epsilon "
            "and density + epsilon < 1",
            job->name, t, density, epsilon);
    LM_TRY(lm__della_mask(job->ctx, x, job->ndim, job->shape, n, density,
                          epsilon, job->seed, t));
    if (rescale)
        lm__rescale_l1(job->deltas[t], x, n);
    return LM_OK;
}

static lm_status della_init(const lm_strategy_init_info *info, void **state,
                            void *user)
{
    (void)user;
    return lm__gta_init(info, state, true, magprune);
}

static lm_status della_linear_init(const lm_strategy_init_info *info,
                                   void **state, void *user)
{
    (void)user;
    return lm__gta_init(info, state, false, magprune);
}

const lm_strategy_vtable lm__della_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "della",
    .description = "DELLA magnitude-ranked random drop, then TIES election",
    .params = della_params,
    .n_params = sizeof(della_params) / sizeof(della_params[0]),
    .init = della_init,
    .merge_tensor = lm__gta_merge,
    .fini = lm__gta_fini,
};

const lm_strategy_vtable lm__della_linear_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "della_linear",
    .description = "DELLA magnitude-ranked random drop, then a weighted sum",
    .params = della_linear_params,
    .n_params = sizeof(della_linear_params) / sizeof(della_linear_params[0]),
    .init = della_linear_init,
    .merge_tensor = lm__gta_merge,
    .fini = lm__gta_fini,
};
