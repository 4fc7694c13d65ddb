/* `nearswap` (mergekit/merge_methods/nearswap.py; after
 * https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001): take the
 * model's value where it is close to the base's and keep the base's where
 * they differ. Per entry, with tau = model - base,
 *   w = clamp(t / max(|tau|, 1e-6), 0, 1),  merged = base + w tau,
 * so entries within t of the base are swapped in whole and farther ones
 * in proportion t / |tau|. `t` is required (mergekit has no default) and
 * may differ per tensor. */
#include <math.h>

#include "strategies/geometry.h"

static const lm_param_desc nearswap_params[] = {
    {sizeof(lm_param_desc), "t", LM_PARAM_FLOAT, 0.0, -HUGE_VAL, HUGE_VAL,
     NULL, "distance from the base within which the model's value is taken "
     "(required)",
     LM_PARAM_PER_TENSOR},
};

static lm_status nearswap_init(const lm_strategy_init_info *info,
                               void **state, void *user)
{
    (void)user;
    return lm__geo_init(info, state, "nearswap", 1, 1,
                        "nearswap merges the base with exactly one model");
}

static lm_status nearswap_merge(void *state, const lm_tensor_job *job,
                                void *user)
{
    (void)user;
    const lm_params *p = job->params;
    if (!lm_params_is_set(p, "t"))
        return lm_context_set_error(job->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "nearswap: parameter 't' is required "
                                    "(tensor '%s')", job->name);
    double t;
    LM_TRY(lm_params_get_float(p, "t", &t));
    const float *d = job->deltas[0];
    for (size_t i = 0; i < job->numel; i++) {
        double w = t / fmax(fabs((double)d[i]), 1e-6);
        w = fmin(fmax(w, 0.0), 1.0);
        job->out[i] = (float)(w * d[i]);
    }
    return LM_OK;
}

const lm_strategy_vtable lm__nearswap_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "nearswap",
    .description = "take the model's values near the base's, interpolate "
                   "the others (mergekit nearswap)",
    .params = nearswap_params,
    .n_params = sizeof(nearswap_params) / sizeof(nearswap_params[0]),
    .init = nearswap_init,
    .merge_tensor = nearswap_merge,
};
