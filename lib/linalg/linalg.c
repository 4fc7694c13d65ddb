/* LAPACKE/CBLAS wrappers with status reporting and canonical signs. */
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <string.h>

#include "linalg/linalg.h"

/* Test hook: per thread, so concurrent merges are unaffected. */
static _Thread_local bool force_fallback;

void lm__svd_force_fallback_once(void) { force_fallback = true; }

static lm_status check_finite(lm_context *ctx, const char *what,
                              const double *a, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(a[i]))
            return lm_context_set_error(ctx, LM_ERR_NONFINITE,
                                        "%s: input has a non-finite value at "
                                        "element %zu", what, i);
    return LM_OK;
}

static lm_status lapack_failed(lm_context *ctx, const char *routine,
                               lapack_int info)
{
    return lm_context_set_error(ctx, info < 0 ? LM_ERR_INTERNAL : LM_ERR_LINALG,
                                "LAPACK %s failed (info %d: %s)", routine,
                                (int)info,
                                info < 0 ? "illegal argument"
                                         : "no convergence");
}

/* LAPACKE's high-level calls (LAPACKE_dgesdd, ...) malloc their workspace
 * and, for row-major input, transposed copies: allocations the context's
 * allocator neither sees nor can refuse, whose failure came back as an
 * "illegal argument". The calls below use the LAPACKE_*_work entry points
 * in column-major layout instead, with workspace sized by the routine's own
 * query and taken from the context, and transpose as LAPACKE would (same
 * LAPACK calls on the same data, so results are unchanged to the bit). */
static lm_status no_workspace(lm_context *ctx, const char *what, size_t m,
                              size_t n)
{
    return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                "%s: out of memory for the LAPACK workspace "
                                "(%zu x %zu)", what, m, n);
}

/* Uninitialised like LAPACKE's malloc (every byte is written before it is
 * read), unlike lm__calloc, which would touch every page of a workspace
 * of hundreds of MB. */
static double *doubles(lm_context *ctx, size_t n)
{
    return n > SIZE_MAX / sizeof(double) ? NULL
                                         : lm_alloc(ctx, n * sizeof(double));
}

/* A workspace size returned by a query (LAPACK reports it as a double). */
static size_t queried(double size)
{
    return size < 1 ? 1 : (size_t)size;
}

bool lm__lapack_fits(double count)
{
    double max = sizeof(lapack_int) == 4 ? 2147483647.0 : 9.2e18;
    return count <= max;
}

/* LAPACK's dimensions and workspace sizes are lapack_int (32-bit here):
 * checked before the call, since a size that wraps makes LAPACK misreport
 * its workspace or index out of bounds. */
static lm_status too_big(lm_context *ctx, const char *what, size_t m,
                         size_t n, double work)
{
    return lm_context_set_error(ctx, LM_ERR_UNSUPPORTED,
                                "%s of a %zu x %zu matrix needs a LAPACK "
                                "workspace of %.0f elements, above the "
                                "%zu-bit LAPACK integer limit", what, m, n,
                                work, 8 * sizeof(lapack_int));
}

/* out (col-major, m x n, leading dimension m) = a (row-major m x n). */
static void to_col_major(const double *a, size_t m, size_t n, double *out)
{
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++)
            out[i + j * m] = a[i * n + j];
}

static void from_col_major(const double *a, size_t m, size_t n, double *out)
{
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++)
            out[i * n + j] = a[i + j * m];
}

void lm__gemm(bool ta, bool tb, size_t m, size_t n, size_t k, double alpha,
              const double *a, const double *b, double beta, double *c)
{
    if (!m || !n)
        return;
    cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
                tb ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k, alpha,
                a, ta ? (int)m : (int)k, b, tb ? (int)k : (int)n, beta, c,
                (int)n);
}

void lm__f32_to_f64(const float *src, double *dst, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = src[i];
}

void lm__f64_to_f32(const double *src, float *dst, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = (float)src[i];
}

void lm__svd_canonical_signs(double *u, size_t m, size_t k, double *vt,
                             size_t n)
{
    for (size_t j = 0; j < k; j++) {
        size_t best = 0;
        double mag = -1;
        for (size_t i = 0; i < m; i++) {
            double v = fabs(u[i * k + j]);
            if (v > mag) {
                mag = v;
                best = i;
            }
        }
        if (u[best * k + j] < 0) {
            for (size_t i = 0; i < m; i++)
                u[i * k + j] = -u[i * k + j];
            for (size_t i = 0; i < n; i++)
                vt[j * n + i] = -vt[j * n + i];
        }
    }
}

/* A row-major m x n matrix is the column-major n x m matrix A^T, whose
 * SVD A^T = V S U^T hands LAPACK's outputs back in row-major layout: its
 * left vectors (column-major n x k) are our Vt, its right vectors
 * (column-major k x m) our U. This skips LAPACKE's transposed copies. */
static lapack_int gesdd(lm_context *ctx, const double *a, size_t m,
                        size_t n, double *copy, double *u, double *s,
                        double *vt, lm_status *st)
{
    size_t k = m < n ? m : n;
    double mx = (double)(m < n ? n : m), need = 4.0 * k * k + 7.0 * k + mx;
    if (!lm__lapack_fits(need) || !lm__lapack_fits(mx)) {
        *st = too_big(ctx, "SVD (dgesdd)", m, n, need);
        return 0;
    }
    double query = 0;
    lapack_int iquery = 0;
    lapack_int info = LAPACKE_dgesdd_work(
        LAPACK_COL_MAJOR, 'S', (lapack_int)n, (lapack_int)m, copy,
        (lapack_int)n, s, vt, (lapack_int)n, u, (lapack_int)k, &query, -1,
        &iquery);
    if (info != 0)
        return info;
    size_t lwork = queried(query);
    double *work = doubles(ctx, lwork + (8 * k * sizeof(lapack_int) +
                                            sizeof(double) - 1) /
                                               sizeof(double));
    if (!work) {
        *st = no_workspace(ctx, "SVD (dgesdd)", m, n);
        return 0;
    }
    memcpy(copy, a, m * n * sizeof(double));
    info = LAPACKE_dgesdd_work(LAPACK_COL_MAJOR, 'S', (lapack_int)n,
                               (lapack_int)m, copy, (lapack_int)n, s, vt,
                               (lapack_int)n, u, (lapack_int)k, work,
                               (lapack_int)lwork,
                               (lapack_int *)(work + lwork));
    lm_free(ctx, work);
    return info;
}

static lapack_int gesvd(lm_context *ctx, const double *a, size_t m,
                        size_t n, double *copy, double *u, double *s,
                        double *vt, lm_status *st)
{
    size_t k = m < n ? m : n;
    double mx = (double)(m < n ? n : m), need = 5.0 * k + mx;
    if (!lm__lapack_fits(need)) {
        *st = too_big(ctx, "SVD (dgesvd)", m, n, need);
        return 0;
    }
    double query = 0;
    lapack_int info = LAPACKE_dgesvd_work(
        LAPACK_COL_MAJOR, 'S', 'S', (lapack_int)n, (lapack_int)m, copy,
        (lapack_int)n, s, vt, (lapack_int)n, u, (lapack_int)k, &query, -1);
    if (info != 0)
        return info;
    size_t lwork = queried(query);
    double *work = doubles(ctx, lwork);
    if (!work) {
        *st = no_workspace(ctx, "SVD (dgesvd)", m, n);
        return 0;
    }
    memcpy(copy, a, m * n * sizeof(double));
    info = LAPACKE_dgesvd_work(LAPACK_COL_MAJOR, 'S', 'S', (lapack_int)n,
                               (lapack_int)m, copy, (lapack_int)n, s, vt,
                               (lapack_int)n, u, (lapack_int)k, work,
                               (lapack_int)lwork);
    lm_free(ctx, work);
    return info;
}

/* A row-major m x n matrix is the column-major n x m matrix A^T, whose
 * SVD A^T = V S U^T hands LAPACK's outputs back in row-major layout: its
 * left vectors (column-major n x k) are our Vt, its right vectors
 * (column-major k x m) our U. This skips LAPACKE's transposed copies. */
lm_status lm__svd(lm_context *ctx, const double *a, size_t m, size_t n,
                  double *u, double *s, double *vt)
{
    LM_TRY(check_finite(ctx, "SVD", a, m * n));
    size_t k = m < n ? m : n;
    if (!k)
        return LM_OK;
    double *copy = doubles(ctx, m * n);
    if (!copy)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "SVD: out of memory for %zu x %zu", m, n);
    lm_status st = LM_OK;
    lapack_int info = 1;
    if (!force_fallback)
        info = gesdd(ctx, a, m, n, copy, u, s, vt, &st);
    force_fallback = false;
    if (st == LM_OK && info != 0) { /* dgesdd occasionally fails where
                                       dgesvd succeeds */
        info = gesvd(ctx, a, m, n, copy, u, s, vt, &st);
        if (st == LM_OK && info != 0)
            st = lapack_failed(ctx, "dgesvd (after dgesdd)", info);
    }
    lm_free(ctx, copy);
    if (st == LM_OK)
        lm__svd_canonical_signs(u, m, k, vt, n);
    return st;
}

lm_status lm__eigh(lm_context *ctx, const double *a, size_t n, double *w,
                   double *v)
{
    LM_TRY(check_finite(ctx, "eigendecomposition", a, n * n));
    if (!n)
        return LM_OK;
    double need = 1.0 + 6.0 * (double)n + 2.0 * (double)n * (double)n;
    if (!lm__lapack_fits(need))
        return too_big(ctx, "eigendecomposition (dsyevd)", n, n, need);
    double query = 0;
    lapack_int iquery = 0;
    lapack_int info = LAPACKE_dsyevd_work(LAPACK_COL_MAJOR, 'V', 'U',
                                          (lapack_int)n, v, (lapack_int)n, w,
                                          &query, -1, &iquery, -1);
    if (info != 0)
        return lapack_failed(ctx, "dsyevd", info);
    size_t lwork = queried(query), liwork = queried((double)iquery);
    /* the column-major copy, then work, then iwork */
    double *at = doubles(ctx, n * n + lwork +
                                     (liwork * sizeof(lapack_int) +
                                      sizeof(double) - 1) / sizeof(double));
    if (!at)
        return no_workspace(ctx, "eigendecomposition (dsyevd)", n, n);
    /* Upper triangle of row-major A = upper triangle of column-major A^T
     * as LAPACKE copies it; dsyevd reads nothing else. */
    to_col_major(a, n, n, at);
    info = LAPACKE_dsyevd_work(LAPACK_COL_MAJOR, 'V', 'U', (lapack_int)n, at,
                               (lapack_int)n, w, at + n * n,
                               (lapack_int)lwork,
                               (lapack_int *)(at + n * n + lwork),
                               (lapack_int)liwork);
    if (info == 0)
        from_col_major(at, n, n, v);
    lm_free(ctx, at);
    if (info != 0)
        return lapack_failed(ctx, "dsyevd", info);
    /* Ascending -> descending, columns swapped to match. */
    for (size_t i = 0; i < n / 2; i++) {
        size_t j = n - 1 - i;
        double t = w[i];
        w[i] = w[j];
        w[j] = t;
        for (size_t r = 0; r < n; r++) {
            t = v[r * n + i];
            v[r * n + i] = v[r * n + j];
            v[r * n + j] = t;
        }
    }
    return LM_OK;
}

lm_status lm__cholesky(lm_context *ctx, const double *a, size_t n,
                       double ridge, double *l)
{
    LM_TRY(check_finite(ctx, "Cholesky", a, n * n));
    if (!isfinite(ridge))
        return lm_context_set_error(ctx, LM_ERR_NONFINITE,
                                    "Cholesky: the ridge is not finite");
    if (!n)
        return LM_OK;
    double *at = doubles(ctx, n * n);
    if (!at)
        return no_workspace(ctx, "Cholesky (dpotrf)", n, n);
    to_col_major(a, n, n, at);
    for (size_t i = 0; i < n; i++)
        at[i * n + i] += ridge;
    lapack_int info = LAPACKE_dpotrf_work(LAPACK_COL_MAJOR, 'L',
                                          (lapack_int)n, at, (lapack_int)n);
    from_col_major(at, n, n, l);
    lm_free(ctx, at);
    if (info > 0)
        return lm_context_set_error(ctx, LM_ERR_LINALG,
                                    "LAPACK dpotrf failed (info %d: the "
                                    "matrix is not positive definite)",
                                    (int)info);
    if (info < 0)
        return lapack_failed(ctx, "dpotrf", info);
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++)
            l[i * n + j] = 0.0;
    return LM_OK;
}

lm_status lm__cholesky_solve(lm_context *ctx, const double *l, size_t n,
                             double *b, size_t nrhs)
{
    if (!n || !nrhs)
        return LM_OK;
    double *lt = doubles(ctx, n * n + n * nrhs);
    if (!lt)
        return no_workspace(ctx, "Cholesky solve (dpotrs)", n, nrhs);
    double *bt = lt + n * n;
    to_col_major(l, n, n, lt);
    to_col_major(b, n, nrhs, bt);
    lapack_int info = LAPACKE_dpotrs_work(LAPACK_COL_MAJOR, 'L',
                                          (lapack_int)n, (lapack_int)nrhs,
                                          lt, (lapack_int)n, bt,
                                          (lapack_int)n);
    if (info == 0)
        from_col_major(bt, n, nrhs, b);
    lm_free(ctx, lt);
    return info ? lapack_failed(ctx, "dpotrs", info) : LM_OK;
}

lm_status lm__qr_q(lm_context *ctx, const double *a, size_t m, size_t n,
                   double *q)
{
    LM_TRY(check_finite(ctx, "QR", a, m * n));
    size_t k = m < n ? m : n;
    if (!k)
        return LM_OK;
    /* A's column-major copy (m x n) and tau first; the same buffer's
     * workspace, sized for both dgeqrf and dorgqr, follows. */
    double *at = doubles(ctx, m * n + k);
    if (!at)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "QR: out of memory");
    double *tau = at + m * n, q1 = 0, q2 = 0;
    lapack_int info = LAPACKE_dgeqrf_work(LAPACK_COL_MAJOR, (lapack_int)m,
                                          (lapack_int)n, at, (lapack_int)m,
                                          tau, &q1, -1);
    if (info == 0)
        info = LAPACKE_dorgqr_work(LAPACK_COL_MAJOR, (lapack_int)m,
                                   (lapack_int)k, (lapack_int)k, at,
                                   (lapack_int)m, tau, &q2, -1);
    size_t lwork1 = queried(q1), lwork2 = queried(q2);
    double *work = info == 0 ? doubles(ctx, lwork1 > lwork2 ? lwork1
                                                              : lwork2)
                             : NULL;
    if (info == 0 && !work) {
        lm_free(ctx, at);
        return no_workspace(ctx, "QR (dgeqrf/dorgqr)", m, n);
    }
    if (info == 0) {
        to_col_major(a, m, n, at);
        info = LAPACKE_dgeqrf_work(LAPACK_COL_MAJOR, (lapack_int)m,
                                   (lapack_int)n, at, (lapack_int)m, tau,
                                   work, (lapack_int)lwork1);
    }
    /* Q from the first k columns, which lead the column-major copy. */
    if (info == 0)
        info = LAPACKE_dorgqr_work(LAPACK_COL_MAJOR, (lapack_int)m,
                                   (lapack_int)k, (lapack_int)k, at,
                                   (lapack_int)m, tau, work,
                                   (lapack_int)lwork2);
    if (info == 0)
        from_col_major(at, m, k, q); /* q may be a: written last */
    lm_free(ctx, work);
    lm_free(ctx, at);
    return info ? lapack_failed(ctx, "dgeqrf/dorgqr", info) : LM_OK;
}

/* The f32 Gram route's estimate, lm__gram_unit(f32) * cond(A)^2, must
 * stay within LM_SVD_TOL (cond(A) <= about 6.4). The largest ratio, not
 * lm__polar_estimate's mean over all directions: that would admit more
 * f32 polar factors, whose output then moves by several f32 ulps from an
 * f64 one (tsv/iso_c fixtures of tests/c/test_strategies_ref.c). */
static bool f32_polar_ok(const double *w, size_t k)
{
    return w[k - 1] > 0 &&
           lm__gram_unit(true) * w[0] / w[k - 1] <= LM_SVD_TOL;
}

/* Polar factor through the smaller Gram matrix G (A^T A for tall A, A A^T
 * otherwise): G = Q W Q^T, P = A Q W^-1/2 Q^T (or Q W^-1/2 Q^T A), about
 * twice as fast as an SVD of A. Taken in f32 when f32_polar_ok, else in
 * f64 when lm__polar_estimate of f64's eigenvalues is within LM_SVD_TOL
 * (a bound over all directions: a few small singular values weigh by
 * their share, where the largest ratio alone, u cond(A)^2, sent them to
 * the SVD); lower bounds from G's f32 Cholesky pivots first decide
 * whether f32, and then f64, are tried.
 * *done is false when A is too poorly conditioned for either (or
 * rank-deficient: no unique polar factor), for the SVD route. */
/* Where a polar factor goes: p (f64), or out (f32) times scale and the
 * mean singular value, through lm__gemm_blocked_f32's row blocks. */
struct polar_dest {
    double *p;
    float *out;
    double scale;
};

/* P = A W (tall) or W A (wide) into d, W = Q W^-1/2 Q^T (k x k). */
static lm_status polar_product(lm_context *ctx, const double *a, size_t m,
                               size_t n, const double *w_inv_sqrt,
                               double mean, const struct polar_dest *d)
{
    bool tall = m > n;
    size_t k = tall ? n : m;
    if (d->p)
        return tall ? lm__gemm_blocked(ctx, false, false, m, n, n, 1.0, a,
                                       w_inv_sqrt, 0.0, d->p)
                    : lm__gemm_blocked(ctx, false, false, m, n, m, 1.0,
                                       w_inv_sqrt, a, 0.0, d->p);
    double scale = d->scale * mean;
    return tall ? lm__gemm_blocked_f32(ctx, false, false, m, n, k, a,
                                       w_inv_sqrt, scale, d->out)
                : lm__gemm_blocked_f32(ctx, false, false, m, n, k,
                                       w_inv_sqrt, a, scale, d->out);
}

static lm_status polar_gram(lm_context *ctx, const double *a, size_t m,
                            size_t n, const struct polar_dest *dest,
                            double *mean_sv, bool *done, lm_svd_route *route)
{
    size_t k = m > n ? n : m;
    *done = false;
    /* Written before read; reused across tensors (lm__workspace_alloc). */
    double *buf = lm__workspace_alloc(ctx, (3 * k * k + k) * sizeof(double));
    if (!buf)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "polar: out of memory");
    double *g = buf, *q = g + k * k, *w = q + k * k, *t = w + k;
    /* Lower bounds from G's f32 Cholesky pivots refuse f32 (and, when
     * finite and above f64's limit, the Gram route) before any
     * eigendecomposition (a tenth of one); what passes is decomposed and
     * checked on its eigenvalues below. G in f32 is formed once for the
     * bound and the f32 eigendecomposition (A's f32 copy is as large as
     * A: fresh pages). */
    double bound = INFINITY, rms = INFINITY;
    bool fits = lm__gram_f32_fits(m, n);
    float *g32 = fits ? lm__workspace_alloc(ctx, k * k * sizeof(float)) : NULL;
    lm_status st = fits && !g32 ? lm_context_set_error(ctx,
                                                       LM_ERR_OUT_OF_MEMORY,
                                                       "polar: out of memory")
                                : LM_OK;
    if (g32) {
        st = lm__gram_f32(ctx, a, m, n, g32);
        if (st == LM_OK)
            st = lm__gram_cond_bound_f32(ctx, g32, k, &bound, &rms);
    }
    bool single = st == LM_OK && lm__gram_unit(true) * bound <= LM_SVD_TOL;
    if (st == LM_OK && isfinite(rms) &&
        lm__gram_unit(false) * rms > LM_SVD_TOL) {
        lm__workspace_free(ctx, g32);
        lm__workspace_free(ctx, buf);
        return LM_OK; /* the SVD route */
    }
    if (st == LM_OK)
        st = single ? lm__gram_eig_formed_f32(ctx, g32, k, w, q)
                    : lm__gram_eig(ctx, a, m, n, false, w, q);
    lm__workspace_free(ctx, g32);
    if (st == LM_ERR_LINALG && single) { /* f32 did not converge: f64 */
        single = false;
        st = lm__gram_eig(ctx, a, m, n, false, w, q);
    }
    if (st == LM_OK && single && !f32_polar_ok(w, k)) {
        single = false; /* borderline */
        st = lm__gram_eig(ctx, a, m, n, false, w, q);
    }
    if (st == LM_OK &&
        (single || lm__polar_estimate(w, k, false) <= LM_SVD_TOL)) {
        double mean = 0;
        for (size_t i = 0; i < k; i++)
            mean += sqrt(w[i]);
        mean /= (double)k;
        if (mean_sv)
            *mean_sv = mean;
        /* g <- Q W^-1/2, then t <- Q W^-1/2 Q^T (symmetric). */
        for (size_t i = 0; i < k; i++)
            for (size_t j = 0; j < k; j++)
                g[i * k + j] = q[i * k + j] / sqrt(w[j]);
        st = lm__gemm_blocked(ctx, false, true, k, k, k, 1.0, g, q, 0.0, t);
        if (st == LM_OK)
            st = polar_product(ctx, a, m, n, t, mean, dest);
        *done = st == LM_OK;
        *route = single ? LM_SVD_GRAM_F32 : LM_SVD_GRAM_F64;
    }
    lm__workspace_free(ctx, buf);
    /* No convergence on G (silent): the SVD route decides. */
    return st == LM_ERR_LINALG ? LM_OK : st;
}

static lm_status polar_into(lm_context *ctx, const double *a, size_t m,
                            size_t n, const struct polar_dest *dest,
                            double *mean_sv, lm_svd_route *route)
{
    *route = LM_SVD_EXACT;
    LM_TRY(check_finite(ctx, "polar decomposition", a, m * n));
    size_t k = m < n ? m : n;
    if (!k) {
        if (mean_sv)
            *mean_sv = 0.0;
        return LM_OK;
    }
    bool done;
    LM_TRY(polar_gram(ctx, a, m, n, dest, mean_sv, &done, route));
    if (done)
        return LM_OK;
    double *buf = doubles(ctx, m * k + k + k * n); /* lm__svd writes all */
    if (!buf)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "polar: out of memory");
    double *u = buf, *s = buf + m * k, *vt = s + k;
    lm_status st = lm__svd(ctx, a, m, n, u, s, vt);
    if (st == LM_OK) {
        double mean = 0;
        for (size_t i = 0; i < k; i++)
            mean += s[i];
        mean /= (double)k;
        if (mean_sv)
            *mean_sv = mean;
        st = dest->p ? lm__gemm_blocked(ctx, false, false, m, n, k, 1.0, u,
                                        vt, 0.0, dest->p)
                     : lm__gemm_blocked_f32(ctx, false, false, m, n, k, u,
                                            vt, dest->scale * mean,
                                            dest->out);
    }
    lm_free(ctx, buf);
    return st;
}

lm_status lm__polar_routed(lm_context *ctx, const double *a, size_t m,
                           size_t n, double *p, double *mean_sv,
                           lm_svd_route *route)
{
    struct polar_dest dest = {p, NULL, 0.0};
    return polar_into(ctx, a, m, n, &dest, mean_sv, route);
}

lm_status lm__polar_scaled_f32(lm_context *ctx, const double *a, size_t m,
                               size_t n, double scale, float *out,
                               double *mean_sv, lm_svd_route *route)
{
    struct polar_dest dest = {NULL, out, scale};
    return polar_into(ctx, a, m, n, &dest, mean_sv, route);
}

static lm_status polar(lm_context *ctx, const double *a, size_t m, size_t n,
                       double *p, double *mean_sv)
{
    lm_svd_route route;
    return lm__polar_routed(ctx, a, m, n, p, mean_sv, &route);
}

lm_status lm__polar(lm_context *ctx, const double *a, size_t m, size_t n,
                    double *p)
{
    return polar(ctx, a, m, n, p, NULL);
}

lm_status lm__polar_scaled(lm_context *ctx, const double *a, size_t m,
                           size_t n, double *p, double *mean_sv)
{
    return polar(ctx, a, m, n, p, mean_sv);
}

struct polar_pair {
    lm_context *ctx;
    const double *in[2];
    double *out[2], *mean[2];
    size_t rows[2], cols[2];
};

static lm_status polar_one(void *arg, size_t i)
{
    const struct polar_pair *p = arg;
    return polar(p->ctx, p->in[i], p->rows[i], p->cols[i], p->out[i],
                 p->mean[i]);
}

lm_status lm__polar_pair(lm_context *ctx, const double *a, size_t ma,
                         size_t na, double *pa, double *mean_a,
                         const double *b, size_t mb, size_t nb, double *pb,
                         double *mean_b)
{
    struct polar_pair p = {ctx, {a, b}, {pa, pb}, {mean_a, mean_b},
                           {ma, mb}, {na, nb}};
    return lm__parallel_for(ctx, 2, polar_one, &p);
}

/* Standard normal draws from a counter-based generator: value i depends
 * only on (seed, i). */
double lm__gaussian(uint64_t seed, uint64_t i)
{
    uint64_t a = lm__mix64(seed ^ lm__mix64(2 * i));
    uint64_t b = lm__mix64(seed ^ lm__mix64(2 * i + 1));
    double u1 = ((double)(a >> 11) + 0.5) / 9007199254740992.0;
    double u2 = (double)(b >> 11) / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

lm_status lm__svd_randomized(lm_context *ctx, const double *a, size_t m,
                             size_t n, size_t k, size_t oversample,
                             size_t power, uint64_t seed, double *u,
                             double *s, double *vt)
{
    LM_TRY(check_finite(ctx, "randomized SVD", a, m * n));
    size_t full = m < n ? m : n;
    size_t l = k + oversample;
    if (k > full)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_RANGE,
                                    "randomized SVD: rank %zu > min(%zu, %zu)",
                                    k, m, n);
    if (l >= full) { /* nothing to gain: exact SVD, truncated */
        double *buf = lm__calloc(ctx, m * full + full + full * n,
                                 sizeof(double));
        if (!buf)
            return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                        "randomized SVD: out of memory");
        double *fu = buf, *fs = buf + m * full, *fvt = fs + full;
        lm_status st = lm__svd(ctx, a, m, n, fu, fs, fvt);
        for (size_t i = 0; st == LM_OK && i < m; i++)
            memcpy(u + i * k, fu + i * full, k * sizeof(double));
        if (st == LM_OK) {
            memcpy(s, fs, k * sizeof(double));
            memcpy(vt, fvt, k * n * sizeof(double));
        }
        lm_free(ctx, buf);
        return st;
    }
    double *buf = lm__calloc(ctx, n * l + 2 * m * l + l * n + l * l + l,
                             sizeof(double));
    if (!buf)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "randomized SVD: out of memory");
    double *omega = buf, *y = omega + n * l, *q = y + m * l, *bm = q + m * l,
           *ub = bm + l * n, *sb = ub + l * l;
    for (size_t i = 0; i < n * l; i++)
        omega[i] = lm__gaussian(seed, i);
    lm__gemm(false, false, m, l, n, 1.0, a, omega, 0.0, y); /* Y = A Omega */
    lm_status st = lm__qr_q(ctx, y, m, l, q);
    for (size_t it = 0; st == LM_OK && it < power; it++) {
        /* Z = A^T Q (n x l) -> orthonormalise -> Y = A Z -> Q. */
        lm__gemm(true, false, n, l, m, 1.0, a, q, 0.0, omega);
        st = lm__qr_q(ctx, omega, n, l, omega);
        if (st == LM_OK) {
            lm__gemm(false, false, m, l, n, 1.0, a, omega, 0.0, y);
            st = lm__qr_q(ctx, y, m, l, q);
        }
    }
    if (st == LM_OK) {
        lm__gemm(true, false, l, n, m, 1.0, q, a, 0.0, bm); /* B = Q^T A */
        double *vtb = lm__calloc(ctx, l * n, sizeof(double));
        st = vtb ? lm__svd(ctx, bm, l, n, ub, sb, vtb)
                 : lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                        "randomized SVD: out of memory");
        if (st == LM_OK) {
            /* U = Q Ub, keep the first k columns. */
            double *full_u = y; /* m x l scratch */
            lm__gemm(false, false, m, l, l, 1.0, q, ub, 0.0, full_u);
            for (size_t i = 0; i < m; i++)
                memcpy(u + i * k, full_u + i * l, k * sizeof(double));
            memcpy(s, sb, k * sizeof(double));
            memcpy(vt, vtb, k * n * sizeof(double));
            lm__svd_canonical_signs(u, m, k, vt, n);
        }
        lm_free(ctx, vtb);
    }
    lm_free(ctx, buf);
    return st;
}

