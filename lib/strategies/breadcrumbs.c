/* `breadcrumbs`, `breadcrumbs_ties` (Davari & Belilovsky, "Model
 * Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks",
 * arXiv:2312.06795): drop each task vector's largest-magnitude outliers
 * (a `gamma` fraction) and its smallest entries, keeping a `density`
 * fraction, then sum (or TIES-elect) the weighted results. mergekit's
 * semantics and defaults (github.com/arcee-ai/mergekit,
 * mergekit/sparsify.py magnitude_outliers); docs/methods/mergekit_sparse.md. */
#include "strategies/sparsify.h"

#define BREADCRUMBS_PARAMS(normalize_default)                               \
    {sizeof(lm_param_desc), "density", LM_PARAM_FLOAT, 1.0, 0.0, 1.0, NULL, \
     "fraction of each task vector kept (per model; 1 keeps all)",          \
     LM__PER_MODEL},                                                        \
    {sizeof(lm_param_desc), "gamma", LM_PARAM_FLOAT, 0.01, 0.0, 1.0, NULL,  \
     "fraction of largest-magnitude entries dropped (per model)",           \
     LM__PER_MODEL},                                                        \
    {sizeof(lm_param_desc), "lambda", LM_PARAM_FLOAT, 1.0, -10.0, 10.0,     \
     NULL, "scale of the merged task vector",                               \
     LM__PER_TENSOR},                                                       \
    {sizeof(lm_param_desc), "normalize", LM_PARAM_BOOL, normalize_default,  \
     0.0, 1.0, NULL, "divide by the (agreeing) weights' sum",               \
     LM__PER_TENSOR},                                                       \
    {sizeof(lm_param_desc), "rescale", LM_PARAM_BOOL, 0.0, 0.0, 1.0, NULL,  \
     "restore each pruned task vector's L1 norm", LM__PER_TENSOR}

static const lm_param_desc breadcrumbs_params[] = {BREADCRUMBS_PARAMS(0.0)};
static const lm_param_desc breadcrumbs_ties_params[] = {
    BREADCRUMBS_PARAMS(0.0)};

static lm_status outliers(const lm_tensor_job *job, const lm_params *plan,
                          size_t t, bool rescale, float *x, float *scratch,
                          float *tmp)
{
    double density, gamma;
    LM_TRY(lm__task_param(job, plan, "density", t, &density));
    LM_TRY(lm__task_param(job, plan, "gamma", t, &gamma));
    if (density >= 1.0)
        return LM_OK; /* mergekit: nothing dropped, nothing rescaled */
    lm__magnitude_outliers(x, job->numel, density, gamma, scratch, tmp);
    if (rescale)
        lm__rescale_l1(job->deltas[t], x, job->numel);
    return LM_OK;
}

static lm_status breadcrumbs_init(const lm_strategy_init_info *info,
                                  void **state, void *user)
{
    (void)user;
    return lm__gta_init(info, state, false, outliers);
}

static lm_status breadcrumbs_ties_init(const lm_strategy_init_info *info,
                                       void **state, void *user)
{
    (void)user;
    return lm__gta_init(info, state, true, outliers);
}

const lm_strategy_vtable lm__breadcrumbs_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "breadcrumbs",
    .description = "Model Breadcrumbs: drop outliers and small entries, sum",
    .params = breadcrumbs_params,
    .n_params = sizeof(breadcrumbs_params) / sizeof(breadcrumbs_params[0]),
    .init = breadcrumbs_init,
    .merge_tensor = lm__gta_merge,
    .fini = lm__gta_fini,
};

const lm_strategy_vtable lm__breadcrumbs_ties_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "breadcrumbs_ties",
    .description = "Model Breadcrumbs pruning, then TIES sign election",
    .params = breadcrumbs_ties_params,
    .n_params =
        sizeof(breadcrumbs_ties_params) / sizeof(breadcrumbs_ties_params[0]),
    .init = breadcrumbs_ties_init,
    .merge_tensor = lm__gta_merge,
    .fini = lm__gta_fini,
};
