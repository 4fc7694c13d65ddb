/* `nuslerp`: SLERP of two models with mergekit's weight convention and
 * per-row options (mergekit/merge_methods/nuslerp.py). The factor is t =
 * w_1 / (w_0 + w_1) from the two models' weights (0.5 when |w_0 + w_1| <
 * 1e-6). With `with_base` (mergekit with a base_model) the two task
 * vectors are interpolated and the base added back; without it the two
 * models' own weights are (the plan's base then only anchors the task
 * vectors: make it either model).
 *
 * Vectors: the whole flattened tensor (`nuslerp_flatten`, default true),
 * else rows along the last dimension, or along the first dimension with
 * `nuslerp_row_wise` (mergekit's dim=0; the name is mergekit's). Per
 * vector: unit vectors v / max(|v|, 1e-7), theta = acos(clamp(cos, -1,
 * 1)); when |sin theta| < 1e-8 the pair is colinear and interpolated
 * linearly, else (sin((1 - t) theta) v_0 + sin(t theta) v_1) / sin theta
 * on the raw vectors. Sums in f64. */
#include <math.h>

#include "strategies/geometry.h"

static const lm_param_desc nuslerp_params[] = {
    {sizeof(lm_param_desc), "nuslerp_flatten", LM_PARAM_BOOL, 1.0, 0.0, 1.0,
     NULL, "treat each tensor as one vector (else per row)",
     LM_PARAM_PER_TENSOR},
    {sizeof(lm_param_desc), "nuslerp_row_wise", LM_PARAM_BOOL, 0.0, 0.0, 1.0,
     NULL, "without flatten: vectors along the first dimension (else the "
     "last)",
     LM_PARAM_PER_TENSOR},
    WITH_BASE_PARAM,
};

static lm_status nuslerp_init(const lm_strategy_init_info *info, void **state,
                              void *user)
{
    (void)user;
    return lm__geo_init(info, state, "nuslerp", 2, 2,
                        "nuslerp merges exactly two models (the base, if "
                        "used, is not one of them)");
}

static void interpolate(const struct lm__vec_layout *l, size_t c, double t,
                        const double *v0, const double *v1, double *res)
{
    double n0 = 0, n1 = 0, dot = 0;
    for (size_t j = 0; j < l->len; j++) {
        size_t i = lm__vec_at(l, c, j);
        n0 += v0[i] * v0[i];
        n1 += v1[i] * v1[i];
        dot += v0[i] * v1[i];
    }
    double cos_theta = dot / (fmax(sqrt(n0), 1e-7) * fmax(sqrt(n1), 1e-7));
    double theta = acos(fmin(fmax(cos_theta, -1.0), 1.0));
    double sin_theta = sin(theta);
    int colinear = fabs(sin_theta) < 1e-8;
    double a = colinear ? 1.0 - t : sin((1.0 - t) * theta) / sin_theta;
    double b = colinear ? t : sin(t * theta) / sin_theta;
    for (size_t j = 0; j < l->len; j++) {
        size_t i = lm__vec_at(l, c, j);
        res[i] = a * v0[i] + b * v1[i];
    }
}

static lm_status nuslerp_merge(void *state, const lm_tensor_job *job,
                               void *user)
{
    (void)user;
    const lm_params *p = job->params;
    int flatten, row_wise, with_base;
    LM_TRY(lm_params_get_bool(p, "nuslerp_flatten", &flatten));
    LM_TRY(lm_params_get_bool(p, "nuslerp_row_wise", &row_wise));
    LM_TRY(lm_params_get_bool(p, "with_base", &with_base));
    double wsum = job->weights[0] + job->weights[1];
    double t = fabs(wsum) < 1e-6 ? 0.5 : job->weights[1] / wsum;
    size_t n = job->numel;
    double *buf = lm_alloc(job->ctx, 3 * (n ? n : 1) * sizeof(double));
    if (!buf)
        return lm__geo_oom(job, "nuslerp");
    double *v0 = buf, *v1 = buf + n, *res = buf + 2 * n;
    lm__geo_point(job, 0, with_base, v0);
    lm__geo_point(job, 1, with_base, v1);
    struct lm__vec_layout l = flatten    ? lm__vec_whole(job)
                              : row_wise ? lm__vec_columns(job)
                                         : lm__vec_rows(job);
    for (size_t c = 0; c < l.count; c++)
        interpolate(&l, c, t, v0, v1, res);
    for (size_t i = 0; i < n; i++)
        job->out[i] = (float)(with_base ? res[i] : res[i] - job->base[i]);
    lm_free(job->ctx, buf);
    return LM_OK;
}

const lm_strategy_vtable lm__nuslerp_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "nuslerp",
    .description = "SLERP of two models or task vectors by their weights, "
                   "whole or per row (mergekit nuslerp)",
    .params = nuslerp_params,
    .n_params = sizeof(nuslerp_params) / sizeof(nuslerp_params[0]),
    .init = nuslerp_init,
    .merge_tensor = nuslerp_merge,
};
