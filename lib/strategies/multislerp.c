/* `multislerp`: barycentric interpolation of any number of models on a
 * hypersphere (mergekit/merge_methods/multislerp.py; C. Goddard,
 * "Multi-SLERP", https://goddard.blog/posts/multislerp-wow-what-a-cool-idea).
 * Each tensor is one flattened vector per model: x_t the task vectors
 * (`with_base`, mergekit with a base_model) or the models themselves.
 *   w    = weights, divided by their sum when `normalize_weights`;
 *   u_t  = x_t / (|x_t| + eps);  m = sum_t w_t u_t, m_hat = m / |m|;
 *   g    = sum_t w_t (u_t - (u_t . m_hat) m_hat)   (tangent space at m_hat);
 *   r    = (m_hat cos|g|' + g sin|g|' / |g|') sum_t w_t |x_t|,
 *          |g|' = |g| + eps;
 * and the base added back with `with_base`. One model: that model. When
 * |m| < eps two models are interpolated linearly (w_0 x_0 + w_1 x_1) and
 * more are an error, as in mergekit. Sums in f64. */
#include <math.h>

#include "strategies/geometry.h"

static const lm_param_desc multislerp_params[] = {
    {sizeof(lm_param_desc), "normalize_weights", LM_PARAM_BOOL, 1.0, 0.0,
     1.0, NULL, "divide the weights by their sum",
     LM_PARAM_PER_TENSOR},
    {sizeof(lm_param_desc), "eps", LM_PARAM_FLOAT, 1e-8, 0.0, 1.0, NULL,
     "added to norms before dividing",
     LM_PARAM_PER_TENSOR},
    WITH_BASE_PARAM,
};

static lm_status multislerp_init(const lm_strategy_init_info *info,
                                 void **state, void *user)
{
    (void)user;
    return lm__geo_init(info, state, "multislerp", 1, (size_t)-1,
                        "multislerp needs at least one");
}

static double norm(const double *x, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += x[i] * x[i];
    return sqrt(s);
}

/* The merged point for T >= 2 models in x (T x n), into res. */
static lm_status sphere_mean(const lm_tensor_job *job, const double *x,
                             const double *w, double eps, double *nrm,
                             double *res)
{
    size_t n = job->numel, T = job->n_models;
    double *m = res; /* the mean direction, then the result */
    for (size_t t = 0; t < T; t++)
        nrm[t] = norm(x + t * n, n);
    for (size_t i = 0; i < n; i++) {
        double acc = 0;
        for (size_t t = 0; t < T; t++)
            acc += w[t] * (x[t * n + i] / (nrm[t] + eps));
        m[i] = acc;
    }
    double mn = norm(m, n);
    if (mn < eps) {
        if (T != 2)
            return lm_context_set_error(
                job->ctx, LM_ERR_OUT_OF_RANGE,
                "multislerp: the weighted mean direction of tensor '%s' is "
                "zero (opposite vectors whose weights balance out); use "
                "other weights",
                job->name);
        for (size_t i = 0; i < n; i++)
            res[i] = w[0] * x[i] + w[1] * x[n + i];
        return LM_OK;
    }
    for (size_t i = 0; i < n; i++)
        m[i] /= mn;
    /* sum_t w_t (u_t . m_hat), so g = sum_t w_t u_t - that * m_hat
     * accumulates each tangent as mergekit does, entry by entry. */
    double *dots = nrm + T;
    for (size_t t = 0; t < T; t++) {
        double s = 0;
        for (size_t i = 0; i < n; i++)
            s += (x[t * n + i] / (nrm[t] + eps)) * m[i];
        dots[t] = s;
    }
    double gn = 0, scale = 0;
    for (size_t t = 0; t < T; t++)
        scale += nrm[t] * w[t];
    double *g = lm_alloc(job->ctx, (n ? n : 1) * sizeof(double));
    if (!g)
        return lm__geo_oom(job, "multislerp");
    for (size_t i = 0; i < n; i++) {
        double acc = 0;
        for (size_t t = 0; t < T; t++)
            acc += w[t] * (x[t * n + i] / (nrm[t] + eps) - dots[t] * m[i]);
        g[i] = acc;
        gn += acc * acc;
    }
    gn = sqrt(gn) + eps;
    double c = cos(gn), s = sin(gn) / gn;
    for (size_t i = 0; i < n; i++)
        res[i] = (m[i] * c + g[i] * s) * scale;
    lm_free(job->ctx, g);
    return LM_OK;
}

static lm_status multislerp_merge(void *state, const lm_tensor_job *job,
                                  void *user)
{
    (void)user;
    const lm_params *p = job->params;
    size_t n = job->numel, T = job->n_models;
    if (T == 1) { /* mergekit returns the one model as it is */
        for (size_t i = 0; i < n; i++)
            job->out[i] = job->deltas[0][i];
        return LM_OK;
    }
    int normalize, with_base;
    double eps;
    LM_TRY(lm_params_get_bool(p, "normalize_weights", &normalize));
    LM_TRY(lm_params_get_float(p, "eps", &eps));
    LM_TRY(lm_params_get_bool(p, "with_base", &with_base));
    double wsum = 0;
    for (size_t t = 0; t < T; t++)
        wsum += job->weights[t];
    if (normalize && wsum == 0)
        return lm_context_set_error(job->ctx, LM_ERR_OUT_OF_RANGE,
                                    "multislerp: the model weights for "
                                    "tensor '%s' sum to 0; cannot normalize",
                                    job->name);
    /* x (T x n), res (n), weights, norms and dots (3 T). */
    double *buf = lm__calloc(job->ctx, T * n + n + 3 * T, sizeof(double));
    if (!buf)
        return lm__geo_oom(job, "multislerp");
    double *x = buf, *res = buf + T * n, *w = res + n, *nrm = w + T;
    for (size_t t = 0; t < T; t++) {
        lm__geo_point(job, t, with_base, x + t * n);
        w[t] = normalize ? job->weights[t] / wsum : job->weights[t];
    }
    lm_status st = sphere_mean(job, x, w, eps, nrm, res);
    if (st == LM_OK)
        for (size_t i = 0; i < n; i++)
            job->out[i] =
                (float)(with_base ? res[i] : res[i] - job->base[i]);
    lm_free(job->ctx, buf);
    return st;
}

const lm_strategy_vtable lm__multislerp_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "multislerp",
    .description = "barycentric interpolation of many models on a "
                   "hypersphere (mergekit multislerp)",
    .params = multislerp_params,
    .n_params = sizeof(multislerp_params) / sizeof(multislerp_params[0]),
    .init = multislerp_init,
    .merge_tensor = multislerp_merge,
};
