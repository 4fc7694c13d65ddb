/* A lower bound on the condition number of A's smaller Gram matrix from
 * its f32 Cholesky factor: the polar factor's route is decided before any
 * eigendecomposition (docs/methods/svd_family.md, "Precision per
 * tensor"). */
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <string.h>

#include "linalg/linalg.h"

/* Rayleigh quotients of L L^T (L: column-major lower d x d) at the ends
 * of its spectrum: RAYLEIGH_STEPS power steps (x <- L L^T x) for the
 * largest eigenvalue and as many inverse steps (x <- L^-T L^-1 x) for the
 * smallest, from fixed start vectors, so deterministic. Each quotient
 * lies inside [lambda_min, lambda_max] of L L^T, so hi / lo bounds its
 * condition number from below; x (2 d floats) is scratch. d^2 flops per
 * step: a few hundredth of the factorization. */
#define RAYLEIGH_STEPS 8

static double rayleigh(const float *l, size_t d, float *x, bool inverse)
{
    float *y = x + d;
    for (size_t i = 0; i < d; i++)
        x[i] = 1.0f + (float)(i % 7) / 7.0f; /* no eigenvector alone */
    double q = 0;
    for (int step = 0; step <= RAYLEIGH_STEPS; step++) {
        double xx = 0;
        for (size_t i = 0; i < d; i++)
            xx += (double)x[i] * x[i];
        if (!(xx > 0) || !isfinite(xx))
            return NAN;
        float scale = (float)(1.0 / sqrt(xx));
        for (size_t i = 0; i < d; i++)
            x[i] *= scale;
        /* q = x^T L L^T x = ||L^T x||^2 for the unit x. */
        memcpy(y, x, d * sizeof(float));
        cblas_strmv(CblasColMajor, CblasLower, CblasTrans, CblasNonUnit,
                    (int)d, l, (int)d, y, 1);
        q = 0;
        for (size_t i = 0; i < d; i++)
            q += (double)y[i] * y[i];
        if (step == RAYLEIGH_STEPS)
            break;
        if (inverse) { /* x <- L^-T L^-1 x */
            cblas_strsv(CblasColMajor, CblasLower, CblasNoTrans,
                        CblasNonUnit, (int)d, l, (int)d, x, 1);
            cblas_strsv(CblasColMajor, CblasLower, CblasTrans, CblasNonUnit,
                        (int)d, l, (int)d, x, 1);
        } else { /* x <- L (L^T x) = L y */
            cblas_strmv(CblasColMajor, CblasLower, CblasNoTrans,
                        CblasNonUnit, (int)d, l, (int)d, y, 1);
            memcpy(x, y, d * sizeof(float));
        }
    }
    return q;
}

bool lm__gram_f32_fits(size_t m, size_t n)
{
    size_t d = m <= n ? m : n, other = m <= n ? n : m;
    double words = (double)m * (double)n + (double)d * (double)d;
    return d && lm__lapack_fits((double)d * (double)d) &&
           lm__lapack_fits((double)other) &&
           words <= (double)(SIZE_MAX / sizeof(float));
}

lm_status lm__gram_f32(lm_context *ctx, const double *a, size_t m, size_t n,
                       float *g)
{
    float *af = lm__workspace_alloc(ctx, m * n * sizeof(float));
    if (!af)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "f32 Gram matrix of a %zu x %zu matrix: "
                                    "out of memory", m, n);
    for (size_t i = 0; i < m * n; i++)
        af[i] = (float)a[i];
    /* Row-major upper triangle = column-major lower triangle. */
    lm_status st = lm__gram_upper_f32(ctx, af, m, n, g);
    lm__workspace_free(ctx, af);
    return st;
}

lm_status lm__gram_cond_bound_f32(lm_context *ctx, const float *g0,
                                  size_t d, double *bound, double *rms)
{
    *bound = INFINITY;
    if (rms)
        *rms = INFINITY;
    float *g = lm__workspace_alloc(ctx, (d * d + 2 * d) * sizeof(float));
    if (!g)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "condition bound of a %zu x %zu Gram "
                                    "matrix: out of memory", d, d);
    memcpy(g, g0, d * d * sizeof(float));
    lapack_int info = LAPACKE_spotrf_work(LAPACK_COL_MAJOR, 'L',
                                          (lapack_int)d, g, (lapack_int)d);
    /* Every Cholesky pivot L_ii^2 is a diagonal entry of a Schur
     * complement of G, so it lies in [lambda_min, lambda_max]: their
     * spread bounds cond(G) from below. A breakdown (info > 0) means a
     * pivot below f32's resolution: no finite bound. */
    if (info == 0) {
        double lo = INFINITY, hi = 0;
        for (size_t i = 0; i < d; i++) {
            double p = (double)g[i * d + i] * (double)g[i * d + i];
            lo = p < lo ? p : lo;
            hi = p > hi ? p : hi;
        }
        /* The same RMS over the pivots in place of the eigenvalues.
         * Their product is det G and each leading product a principal
         * minor, at least the product of as many smallest eigenvalues
         * (interlacing), so the pivots are spread no wider than the
         * eigenvalues and this stays below the eigenvalues' RMS (checked
         * on constructed spectra in tests/c/test_linalg_svd_routes.c).
         * Only a filter: the eigenvalue check after f32 decides. */
        double sum = 0;
        for (size_t i = 0; lo > 0 && i < d; i++) {
            double p = (double)g[i * d + i] * (double)g[i * d + i];
            sum += (hi / p) * (hi / p);
        }
        /* The pivots' spread alone can be far below cond(G) (a
         * well-spread diagonal hides a small eigenvalue); Rayleigh
         * quotients near both ends tighten it. */
        double top = lo > 0 ? rayleigh(g, d, g + d * d, false) : NAN,
               bottom = lo > 0 ? rayleigh(g, d, g + d * d, true) : NAN;
        if (lo > 0) {
            *bound = hi / lo;
            if (bottom > 0 && top / bottom > *bound)
                *bound = top / bottom;
            if (rms)
                *rms = sqrt(sum / (double)d);
        }
    }
    lm__workspace_free(ctx, g);
    return LM_OK;
}

lm_status lm__gram_cond_lower_bound(lm_context *ctx, const double *a,
                                    size_t m, size_t n, double *bound,
                                    double *rms)
{
    *bound = INFINITY;
    if (rms)
        *rms = INFINITY;
    if (!lm__gram_f32_fits(m, n))
        return LM_OK; /* no bound: the callers' eigenvalue checks decide */
    size_t d = m <= n ? m : n;
    float *g = lm__workspace_alloc(ctx, d * d * sizeof(float));
    if (!g)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "condition bound of a %zu x %zu Gram "
                                    "matrix: out of memory", m, n);
    lm_status st = lm__gram_f32(ctx, a, m, n, g);
    if (st == LM_OK)
        st = lm__gram_cond_bound_f32(ctx, g, d, bound, rms);
    lm__workspace_free(ctx, g);
    return st;
}
