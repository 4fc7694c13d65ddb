/* `karcher`: the Karcher (Riemannian, Fréchet) mean of the models'
 * directions on the unit sphere (Karcher 1977, "Riemannian center of
 * mass and mollifier smoothing"), rescaled by their mean norm, as mergekit
 * computes it (mergekit/merge_methods/karcher.py). Each tensor is one
 * flattened vector per model; the points are the models themselves (base
 * + task vector), so a base counts only when it is also added as a model.
 *
 *   alpha_t = 1/N: the models' weights are not used (as in mergekit, so
 *   its configs give its numbers whatever weights they list);
 *   u_t = m_t / |m_t| (zero when |m_t| = 0); only models with |m_t| > tol
 *   steer the direction, their alphas renormalised;
 *   u = normalised weighted mean of the u_t (the first unit vector when
 *   that mean's norm < tol);
 *   up to max_iter times: T = sum alpha_t theta_t / sin theta_t (u_t -
 *   cos theta_t u) over models with theta_t = acos(clamp(u . u_t)) >= tol;
 *   stop when |T| < tol; else u = cos|T| u + sin|T| T/|T|, renormalised;
 *   result = (sum_t alpha_t |m_t|) u  (every model's norm, zeros included).
 * Sums in f64. */
#include <math.h>

#include "strategies/geometry.h"

static const lm_param_desc karcher_params[] = {
    {sizeof(lm_param_desc), "max_iter", LM_PARAM_INT, 10.0, 0.0, 100000.0,
     NULL, "iterations of the Karcher mean",
     LM_PARAM_PER_TENSOR},
    {sizeof(lm_param_desc), "tol", LM_PARAM_FLOAT, 1e-5, 0.0, 1.0, NULL,
     "convergence tolerance (also the smallest norm and angle used)",
     LM_PARAM_PER_TENSOR},
};

static lm_status karcher_init(const lm_strategy_init_info *info, void **state,
                              void *user)
{
    (void)user;
    return lm__geo_init(info, state, "karcher", 1, (size_t)-1,
                        "karcher needs at least one");
}

static double dot(const double *a, const double *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* The Karcher iteration on unit vectors units (T x n) with weights a
 * (zero for models left out); u holds the start and receives the mean. */
static void iterate(const double *units, const double *a, size_t T, size_t n,
                    int64_t max_iter, double tol, double *u, double *step)
{
    for (int64_t it = 0; it < max_iter; it++) {
        for (size_t i = 0; i < n; i++)
            step[i] = 0;
        for (size_t t = 0; t < T; t++) {
            if (a[t] == 0)
                continue;
            const double *ut = units + t * n;
            double c = fmin(fmax(dot(u, ut, n), -1.0), 1.0);
            double theta = acos(c);
            if (theta < tol)
                continue;
            double f = a[t] * theta / sin(theta);
            for (size_t i = 0; i < n; i++)
                step[i] += f * (ut[i] - c * u[i]);
        }
        double sn = sqrt(dot(step, step, n));
        if (sn < tol)
            break;
        double c = cos(sn), s = sin(sn) / sn;
        for (size_t i = 0; i < n; i++)
            u[i] = c * u[i] + s * step[i];
        double un = sqrt(dot(u, u, n));
        if (un > tol)
            for (size_t i = 0; i < n; i++)
                u[i] /= un;
    }
}

static lm_status karcher_merge(void *state, const lm_tensor_job *job,
                               void *user)
{
    (void)user;
    const lm_params *p = job->params;
    int64_t max_iter;
    double tol;
    LM_TRY(lm_params_get_int(p, "max_iter", &max_iter));
    LM_TRY(lm_params_get_float(p, "tol", &tol));
    size_t n = job->numel, T = job->n_models;
    /* units (T x n), u, step (n each), alpha, norms, kept alphas (3 T). */
    double *buf = lm__calloc(job->ctx, T * n + 2 * n + 3 * T, sizeof(double));
    if (!buf)
        return lm__geo_oom(job, "karcher");
    double *units = buf, *u = units + T * n, *step = u + n;
    double *alpha = step + n, *nrm = alpha + T, *a = nrm + T;
    double kept = 0, scale = 0;
    size_t first = T;
    for (size_t t = 0; t < T; t++) {
        double *ut = units + t * n;
        lm__geo_point(job, t, 0, ut);
        alpha[t] = 1.0 / (double)T;
        nrm[t] = sqrt(dot(ut, ut, n));
        for (size_t i = 0; nrm[t] > 0 && i < n; i++)
            ut[i] /= nrm[t];
        scale += alpha[t] * nrm[t];
        if (nrm[t] > tol) {
            kept += alpha[t];
            first = first < T ? first : t;
        }
    }
    if (first == T) { /* every model (near) zero: the result is zero */
        for (size_t i = 0; i < n; i++)
            job->out[i] = -job->base[i];
        lm_free(job->ctx, buf);
        return LM_OK;
    }
    for (size_t t = 0; t < T; t++)
        a[t] = nrm[t] > tol ? alpha[t] / kept : 0;
    for (size_t t = 0; t < T; t++)
        for (size_t i = 0; a[t] != 0 && i < n; i++)
            u[i] += a[t] * units[t * n + i];
    double un = sqrt(dot(u, u, n));
    for (size_t i = 0; i < n; i++)
        u[i] = un < tol ? units[first * n + i] : u[i] / un;
    iterate(units, a, T, n, max_iter, tol, u, step);
    for (size_t i = 0; i < n; i++)
        job->out[i] = (float)(scale * u[i] - job->base[i]);
    lm_free(job->ctx, buf);
    return LM_OK;
}

const lm_strategy_vtable lm__karcher_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "karcher",
    .description = "Karcher (Riemannian) mean of the models' directions, "
                   "scaled by their mean norm (mergekit karcher)",
    .params = karcher_params,
    .n_params = sizeof(karcher_params) / sizeof(karcher_params[0]),
    .init = karcher_init,
    .merge_tensor = karcher_merge,
};
