/* Rank-aware whitening: the polar factor with directions at the input
 * noise floor shrunk (whiten.h; docs/methods/svd_family.md). */
#include <float.h>
#include <math.h>
#include <string.h>

#include "linalg/linalg.h"
#include "linalg/whiten.h"

lm_status lm__whiten_get(const lm_params *params, lm_whiten *mode,
                         double *floor_c)
{
    const char *v = NULL;
    lm_status st = lm_params_get_choice(params, "whiten", &v);
    if (st == LM_OK)
        *mode = strcmp(v, "rank_aware") == 0 ? LM_WHITEN_RANK_AWARE
                                             : LM_WHITEN_RELEASED;
    if (st == LM_OK)
        st = lm_params_get_float(params, "whiten_floor", floor_c);
    return st;
}

double lm__input_precision(const float *base, const float *d, size_t n)
{
    double in2 = 0, d2 = 0;
    for (size_t i = 0; i < n; i++) {
        double b = base ? (double)base[i] : 0.0, w = b + (double)d[i];
        in2 += b * b + w * w;
        d2 += (double)d[i] * (double)d[i];
    }
    return d2 > 0 ? FLT_EPSILON * sqrt(in2 / d2) : 0.0;
}

double lm__whiten_floor(double sigma1, double eps_in, size_t m, size_t n,
                        double tol)
{
    double big = (double)(m > n ? m : n);
    return sigma1 * (eps_in * sqrt(big) + tol);
}

double lm__whiten_weight(double s, double tau)
{
    if (!(s > 0))
        return 0.0;
    return s * s / (s * s + tau * tau);
}

bool lm__whiten_keep(double s, double tau)
{
    return s > tau;
}

/* lm__polar_whiten into dest (whiten.h's struct lm__whiten_dest). */
static lm_status polar_whiten_into(lm_context *ctx, const double *a, size_t m,
                                   size_t n, double eps_in, double tol,
                                   double route_tol,
                                   const struct lm__whiten_dest *dest,
                                   double *mean_sv, lm_svd_route *route)
{
    size_t k = m < n ? m : n;
    lm_svd_route taken = LM_SVD_EXACT;
    if (route)
        *route = taken;
    if (mean_sv)
        *mean_sv = 0.0;
    if (!k)
        return LM_OK;
    for (size_t i = 0; i < m * n; i++)
        if (!isfinite(a[i]))
            return lm_context_set_error(ctx, LM_ERR_NONFINITE,
                                        "polar decomposition: input has a "
                                        "non-finite value at element %zu",
                                        i);
    if (route_tol > 0) {
        bool done;
        LM_TRY(lm__polar_whiten_gram(ctx, a, m, n, eps_in, tol, route_tol,
                                     NULL, dest, mean_sv, &done, &taken,
                                     NULL));
        if (done) {
            if (route)
                *route = taken;
            return LM_OK;
        }
    }
    /* The exact SVD where the Gram route's estimate does not pass (tau
     * and the smallest directions too close to G's noise, e u_64 w_1);
     * an f32 destination gets the f64 factor scaled, the same bits as
     * lm__gemm_blocked_f32. */
    double *buf = lm__calloc(ctx, m * k + k + k * n + (dest->out ? m * n : 0),
                             sizeof(double));
    if (!buf)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "polar: out of memory");
    double *u = buf, *s = u + m * k, *vt = s + k, *p = vt + k * n;
    if (!dest->out)
        p = dest->p;
    lm_status st = lm__svd(ctx, a, m, n, u, s, vt);
    if (st == LM_OK) {
        double tau = lm__whiten_floor(s[0], eps_in, m, n, tol), sum_s = 0,
               sum_g = 0;
        for (size_t j = 0; j < k; j++) {
            double g = lm__whiten_weight(s[j], tau);
            sum_s += s[j];
            sum_g += g;
            for (size_t i = 0; i < m; i++)
                u[i * k + j] *= g;
        }
        double mean = sum_g > 0 ? sum_s / sum_g : 0.0;
        if (mean_sv)
            *mean_sv = mean;
        lm__gemm(false, false, m, n, k, 1.0, u, vt, 0.0, p);
        for (size_t i = 0; dest->out && i < m * n; i++)
            dest->out[i] = (float)(p[i] * (dest->scale * mean));
    }
    lm_free(ctx, buf);
    return st;
}

lm_status lm__polar_whiten(lm_context *ctx, const double *a, size_t m,
                           size_t n, double eps_in, double tol,
                           double route_tol, double *p, double *mean_sv,
                           lm_svd_route *route)
{
    struct lm__whiten_dest dest = {p, NULL, 1.0};
    return polar_whiten_into(ctx, a, m, n, eps_in, tol, route_tol, &dest,
                             mean_sv, route);
}

lm_status lm__polar_whiten_f32(lm_context *ctx, const double *a, size_t m,
                               size_t n, double eps_in, double tol,
                               double route_tol, double scale, float *out,
                               double *mean_sv, lm_svd_route *route)
{
    struct lm__whiten_dest dest = {NULL, out, scale};
    return polar_whiten_into(ctx, a, m, n, eps_in, tol, route_tol, &dest,
                             mean_sv, route);
}

struct whiten_pair {
    lm_context *ctx;
    double eps_in, tol, route_tol;
    const double *in[2];
    double *out[2], *mean[2];
    size_t rows[2], cols[2];
    lm_svd_route routes[2];
};

static lm_status whiten_one(void *arg, size_t i)
{
    struct whiten_pair *w = arg;
    return lm__polar_whiten(w->ctx, w->in[i], w->rows[i], w->cols[i],
                            w->eps_in, w->tol, w->route_tol, w->out[i],
                            w->mean[i], &w->routes[i]);
}

lm_status lm__polar_pair_whiten(lm_context *ctx, lm_whiten mode,
                                double eps_in, double tol, double route_tol,
                                const double *a, size_t ma, size_t na,
                                double *pa, double *mean_a, const double *b,
                                size_t mb, size_t nb, double *pb,
                                double *mean_b, lm_svd_route *routes)
{
    if (mode == LM_WHITEN_RELEASED)
        return lm__polar_pair(ctx, a, ma, na, pa, mean_a, b, mb, nb, pb,
                              mean_b);
    struct whiten_pair w = {ctx,      eps_in,           tol,
                            route_tol, {a, b},          {pa, pb},
                            {mean_a, mean_b}, {ma, mb}, {na, nb},
                            {LM_SVD_EXACT, LM_SVD_EXACT}};
    lm_status st = lm__parallel_for(ctx, 2, whiten_one, &w);
    if (routes)
        memcpy(routes, w.routes, sizeof(w.routes));
    return st;
}
