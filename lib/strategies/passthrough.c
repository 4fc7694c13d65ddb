/* `passthrough` (mergekit/merge_methods/passthrough.py): copy one model's
 * tensor, multiplied by its `scale` (default 1), as mergekit does for
 * frankenmerges and for tensors taken from a single model. `source` picks
 * the plan model whose tensor is copied (per tensor with
 * lm_plan_set_float_for, so a config reader can take each layer from a
 * different model; -1 copies the base); `scale` may be set per model and
 * per tensor, and the copied model's value is used. */
#include <math.h>

#include "strategies/geometry.h"

static const lm_param_desc passthrough_params[] = {
    {sizeof(lm_param_desc), "source", LM_PARAM_INT, 0.0, -1.0, 1e9, NULL,
     "index of the model whose tensor is copied (-1: the base)",
     LM_PARAM_PER_TENSOR},
    {sizeof(lm_param_desc), "scale", LM_PARAM_FLOAT, 1.0, -HUGE_VAL,
     HUGE_VAL, NULL, "factor applied to the copied tensor",
     LM_PARAM_PER_TENSOR | LM_PARAM_PER_MODEL},
};

static lm_status passthrough_init(const lm_strategy_init_info *info,
                                  void **state, void *user)
{
    (void)user;
    return lm__geo_init(info, state, "passthrough", 1, (size_t)-1,
                        "passthrough needs at least one");
}

static lm_status passthrough_merge(void *state, const lm_tensor_job *job,
                                   void *user)
{
    (void)user;
    const lm_params *p = job->params;
    int64_t source;
    double scale;
    LM_TRY(lm_params_get_int(p, "source", &source));
    if (source >= 0 && (uint64_t)source >= job->n_models)
        return lm_context_set_error(job->ctx, LM_ERR_OUT_OF_RANGE,
                                    "passthrough: source %lld for tensor "
                                    "'%s' is not a model index (the plan "
                                    "has %zu models)",
                                    (long long)source, job->name,
                                    job->n_models);
    LM_TRY(lm_params_get_model_float(
        p, "scale", source < 0 ? LM_ALL_MODELS : (size_t)source, &scale));
    for (size_t i = 0; i < job->numel; i++) {
        double v = job->base[i];
        if (source >= 0)
            v += job->deltas[source][i];
        job->out[i] = (float)(scale * v - job->base[i]);
    }
    return LM_OK;
}

const lm_strategy_vtable lm__passthrough_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "passthrough",
    .description = "copy one model's tensor, optionally scaled (mergekit "
                   "passthrough)",
    .params = passthrough_params,
    .n_params = sizeof(passthrough_params) / sizeof(passthrough_params[0]),
    .init = passthrough_init,
    .merge_tensor = passthrough_merge,
};
