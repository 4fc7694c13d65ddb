/* `slerp`: spherical linear interpolation (Shoemake 1985, "Animating
 * rotation with quaternion curves") between the base (t = 0) and one
 * model (t = 1), over each tensor as one flattened vector, with
 * mergekit's rules (mergekit/merge_methods/slerp.py):
 *   - each end is divided by its norm only when the norm exceeds 1e-8 (a
 *     zero tensor stays zero, so its cosine with the other is 0);
 *   - when |cos| > 0.9995 (DOT_THRESHOLD) the ends are treated as colinear
 *     and interpolated linearly, (1 - t) v0 + t v1;
 *   - otherwise sin((1 - t) theta) / sin theta v0 + sin(t theta) / sin
 *     theta v1 on the raw (unnormalised) ends, theta = acos(cos).
 * `t` is required (mergekit has no default) and may differ per tensor
 * (lm_plan_set_float_for: mergekit's gradients and filters). Norms and
 * the dot product are accumulated in f64. */
#include <math.h>

#include "strategies/geometry.h"

#define SLERP_EPS 1e-8
#define DOT_THRESHOLD 0.9995

static const lm_param_desc slerp_params[] = {
    {sizeof(lm_param_desc), "t", LM_PARAM_FLOAT, 0.5, -HUGE_VAL, HUGE_VAL,
     NULL, "interpolation factor: 0 is the base, 1 the model; required "
     "(mergekit has no default)",
     LM_PARAM_PER_TENSOR},
};

static lm_status slerp_init(const lm_strategy_init_info *info, void **state,
                            void *user)
{
    (void)user;
    return lm__geo_init(info, state, "slerp", 1, 1,
                        "slerp interpolates between the base (t = 0) and "
                        "exactly one model (t = 1)");
}

static lm_status slerp_merge(void *state, const lm_tensor_job *job,
                             void *user)
{
    (void)user;
    const lm_params *p = job->params;
    if (!lm_params_is_set(p, "t"))
        return lm_context_set_error(job->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "slerp: parameter 't' is required "
                                    "(tensor '%s')", job->name);
    double t;
    LM_TRY(lm_params_get_float(p, "t", &t));
    const float *b = job->base, *d = job->deltas[0];
    size_t n = job->numel;
    double n0 = 0, n1 = 0, dot = 0;
    for (size_t i = 0; i < n; i++) {
        double v0 = b[i], v1 = (double)b[i] + d[i];
        n0 += v0 * v0;
        n1 += v1 * v1;
        dot += v0 * v1;
    }
    n0 = sqrt(n0);
    n1 = sqrt(n1);
    /* Cosine of the directions; an end of norm <= eps is left as is. */
    dot /= (n0 > SLERP_EPS ? n0 : 1.0) * (n1 > SLERP_EPS ? n1 : 1.0);
    if (fabs(dot) > DOT_THRESHOLD) {
        /* (1 - t) base + t model - base */
        for (size_t i = 0; i < n; i++)
            job->out[i] = (float)(t * d[i]);
        return LM_OK;
    }
    double theta0 = acos(dot), sin0 = sin(theta0);
    double s0 = sin(theta0 - theta0 * t) / sin0;
    double s1 = sin(theta0 * t) / sin0;
    /* s0 base + s1 (base + tau) - base */
    for (size_t i = 0; i < n; i++)
        job->out[i] = (float)((s0 + s1 - 1.0) * b[i] + s1 * d[i]);
    return LM_OK;
}

const lm_strategy_vtable lm__slerp_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "slerp",
    .description = "spherical interpolation between the base and one model "
                   "(mergekit slerp)",
    .params = slerp_params,
    .n_params = sizeof(slerp_params) / sizeof(slerp_params[0]),
    .init = slerp_init,
    .merge_tensor = slerp_merge,
};
