/* Top-k SVD through the smaller Gram matrix, in the lowest precision whose
 * error estimate passes (f32, then f64), else LAPACK's exact dgesdd.
 * docs/methods/svd_family.md ("Precision per tensor") states the rule. */
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <string.h>

#include "linalg/linalg.h"

/* Whether syevd's integer workspace for order d (1 + 6d + 2d^2 with
 * vectors) fits LAPACK's integers. */
static bool syevd_fits(size_t d)
{
    return lm__lapack_fits(1.0 + 6.0 * (double)d + 2.0 * (double)d * (double)d);
}

#define REAL float
#define GE_NAME gram_eig_f32
#define GE_NAME_SYEVD syevd_f32
#define GE_DECOMPOSE decompose_f32
#define GE_GRAM lm__gram_upper_f32
#define GE_SINGLE true
#define GE_SYEVD_WORK LAPACKE_ssyevd_work
#define GE_ROUTINE "ssyevd"
#include "linalg/gram_eig_impl.h"
#undef REAL
#undef GE_NAME
#undef GE_NAME_SYEVD
#undef GE_DECOMPOSE
#undef GE_GRAM
#undef GE_SINGLE
#undef GE_SYEVD_WORK
#undef GE_ROUTINE

#define REAL double
#define GE_NAME gram_eig_f64
#define GE_NAME_SYEVD syevd_f64
#define GE_DECOMPOSE decompose_f64
#define GE_GRAM lm__gram_upper_f64
#define GE_SINGLE false
#define GE_SYEVD_WORK LAPACKE_dsyevd_work
#define GE_ROUTINE "dsyevd"
#include "linalg/gram_eig_impl.h"

lm_status lm__gram_eig(lm_context *ctx, const double *a, size_t m, size_t n,
                       bool single, double *w, double *q)
{
    if (!m || !n)
        return LM_OK;
    return single ? gram_eig_f32(ctx, a, m, n, w, q)
                  : gram_eig_f64(ctx, a, m, n, w, q);
}

lm_status lm__gram_eig_formed_f32(lm_context *ctx, float *g, size_t d,
                                  double *w, double *q)
{
    if (!d)
        return LM_OK;
    if (!syevd_fits(d))
        return lm_context_set_error(ctx, LM_ERR_UNSUPPORTED,
                                    "Gram eigendecomposition of order %zu "
                                    "exceeds the LAPACK integer limit", d);
    float *wr = lm_alloc(ctx, d * sizeof(float));
    if (!wr)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "eigendecomposition (ssyevd) of a Gram "
                                    "matrix: out of memory (order %zu)", d);
    lm_status st = decompose_f32(ctx, g, d, wr, w, q);
    lm_free(ctx, wr);
    return st;
}

double lm__gram_unit(bool single)
{
    /* Unit roundoff times LM_GRAM_ERROR_FACTOR: the backward error of
     * forming G and of the eigensolver, relative to ||G||. */
    return LM_GRAM_ERROR_FACTOR * (single ? 0x1p-24 : 0x1p-53);
}

/* First-order relative error of the top-k triplets from eigenpairs of G
 * perturbed by e = unit * lambda_1 (see the header). */
double lm__gram_svd_estimate(const double *w, size_t d, size_t k, bool single)
{
    double e = lm__gram_unit(single) * w[0];
    if (!(w[k - 1] > e))
        return INFINITY; /* sigma_k below the noise of G: rank-deficient */
    double est = e / w[k - 1];
    if (k < d) {
        double gap = w[k - 1] - w[k], top = 0;
        if (!(gap > 0))
            return INFINITY;
        for (size_t i = 0; i < k; i++)
            top += w[i];
        est += e / gap * sqrt(w[k - 1] / top);
    }
    return est;
}

/* The triplets from G's eigenpairs: for wide A, U_k = Q_k and
 * V_k^T = S^-1 U_k^T A; for tall A, V_k = Q_k and U_k = A V_k S^-1. */
static lm_status triplets(lm_context *ctx, const double *a, size_t m,
                          size_t n, size_t k, const double *w,
                          const double *q, double *u, double *s, double *vt)
{
    size_t d = m <= n ? m : n;
    lm_status st;
    for (size_t j = 0; j < k; j++)
        s[j] = sqrt(w[j]);
    if (m <= n) {
        for (size_t i = 0; i < m; i++)
            memcpy(u + i * k, q + i * d, k * sizeof(double));
        st = lm__gemm_blocked(ctx, true, false, k, n, m, 1.0, u, a, 0.0, vt);
        for (size_t j = 0; j < k; j++)
            for (size_t i = 0; i < n; i++)
                vt[j * n + i] /= s[j];
    } else {
        for (size_t j = 0; j < k; j++)
            for (size_t i = 0; i < n; i++)
                vt[j * n + i] = q[i * d + j];
        st = lm__gemm_blocked(ctx, false, true, m, k, n, 1.0, a, vt, 0.0, u);
        for (size_t i = 0; i < m; i++)
            for (size_t j = 0; j < k; j++)
                u[i * k + j] /= s[j];
    }
    lm__svd_canonical_signs(u, m, k, vt, n);
    return st;
}

static lm_status exact(lm_context *ctx, const double *a, size_t m, size_t n,
                       size_t k, double *u, double *s, double *vt,
                       double *left)
{
    size_t d = m < n ? m : n;
    double *buf = lm__workspace_alloc(ctx, (m * d + d + d * n) * sizeof(double));
    if (!buf)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "SVD: out of memory for %zu x %zu", m, n);
    double *fu = buf, *fs = fu + m * d, *fvt = fs + d;
    lm_status st = lm__svd(ctx, a, m, n, fu, fs, fvt);
    if (st == LM_OK) {
        for (size_t i = 0; i < m; i++)
            memcpy(u + i * k, fu + i * d, k * sizeof(double));
        memcpy(s, fs, k * sizeof(double));
        memcpy(vt, fvt, k * n * sizeof(double));
        if (left && m <= n)
            memcpy(left, fu, m * m * sizeof(double));
    }
    lm__workspace_free(ctx, buf);
    return st;
}

lm_status lm__svd_top(lm_context *ctx, const double *a, size_t m, size_t n,
                      size_t k, double tol, double *u, double *s, double *vt,
                      double *left, lm_svd_route *route)
{
    size_t d = m < n ? m : n;
    if (k > d)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_RANGE,
                                    "SVD: rank %zu > min(%zu, %zu)", k, m, n);
    *route = LM_SVD_EXACT;
    if (!k)
        return LM_OK;
    for (size_t i = 0; i < m * n; i++)
        if (!isfinite(a[i]))
            return lm_context_set_error(ctx, LM_ERR_NONFINITE,
                                        "SVD: input has a non-finite value "
                                        "at element %zu", i);
    if (tol > 0) {
        double *buf = lm__workspace_alloc(ctx, (d + d * d) * sizeof(double));
        if (!buf)
            return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                        "SVD: out of memory for %zu x %zu",
                                        m, n);
        double *w = buf, *q = w + d;
        lm_status st = LM_OK;
        /* f32 eigenvalues alone decide (a quarter of the cost of the
         * vectors), so a refused f32 route costs little. */
        st = lm__gram_eig(ctx, a, m, n, true, w, NULL);
        if (st == LM_ERR_LINALG) /* no convergence (silent): f64 decides */
            st = LM_OK;
        bool f32 = st == LM_OK &&
                   lm__gram_svd_estimate(w, d, k, true) <= tol;
        for (int single = f32; st == LM_OK && single >= 0; single--) {
            st = lm__gram_eig(ctx, a, m, n, single, w, q);
            if (st != LM_OK || lm__gram_svd_estimate(w, d, k, single) > tol)
                continue;
            st = triplets(ctx, a, m, n, k, w, q, u, s, vt);
            if (st != LM_OK)
                break;
            if (left && m <= n) { /* the first k with U's signs */
                memcpy(left, q, m * m * sizeof(double));
                for (size_t i = 0; i < m; i++)
                    memcpy(left + i * m, u + i * k, k * sizeof(double));
            }
            *route = single ? LM_SVD_GRAM_F32 : LM_SVD_GRAM_F64;
            break;
        }
        lm__workspace_free(ctx, buf);
        /* No convergence on G (silent) is no verdict on A: dgesdd
         * decides. Other failures stand. */
        if (st != LM_OK && st != LM_ERR_LINALG)
            return st;
        if (*route != LM_SVD_EXACT)
            return LM_OK;
    }
    return exact(ctx, a, m, n, k, u, s, vt, left);
}

double lm__polar_estimate(const double *w, size_t k, bool single)
{
    double e = lm__gram_unit(single) * w[0];
    if (!k || !(w[k - 1] > 8 * e))
        return INFINITY;
    /* sum_i (w_1 / w_i)^2: ratios, so no 1 / w^2 over- or underflow. */
    double sum = 0;
    for (size_t i = 0; i < k; i++)
        sum += (w[0] / w[i]) * (w[0] / w[i]);
    return lm__gram_unit(single) * (1.0 + sqrt(sum / (double)k));
}
