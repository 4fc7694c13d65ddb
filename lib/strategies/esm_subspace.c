/* One task's essential subspace for ESM, by one of three routes chosen by
 * cost (docs/methods/esm.md, "Routes by cost"):
 *
 * - gram: eigenvectors of G = dW C dW^T (d_out x d_out), C = X^T X. Cheap
 *   for small layers; O(d_out^2) memory (8 GB at a 32k vocabulary).
 * - output: the SVD of the output shift. The released code takes the SVD
 *   of dO = X dW^T (n x d_out). We hold C, not X, so we factor
 *   C = R^T R (R = D^1/2 V^T from C = V D V^T, r' = rank C <= min(n, d_in)
 *   rows) and take the SVD of B = R dW^T (r' x d_out). This is exact:
 *     dO^T dO = dW X^T X dW^T = dW R^T R dW^T = B^T B = G,
 *   so dO, B and G share the right singular vectors / eigenvectors with
 *   nonzero singular values, and lambda = s_B^2 / (n - 1) = s_dO^2 / (n - 1)
 *   (B = U S V^T gives G = V S^2 V^T; the eigenvectors of G with nonzero
 *   eigenvalues are the right singular vectors of dO). O(r' d_out) memory.
 * - randomized: a range finder applied implicitly to G (G Q computed as
 *   dW (C (dW^T Q)), never forming G), two power iterations, then the
 *   small eigenproblem Q^T G Q. O(d_out (k + 10)) memory; approximate
 *   unless k + 10 reaches rank G.
 *
 * All routes keep only the directions whose eigenvalue passes numpy's
 * matrix_rank tolerance for G (lambda_max max(d_out, d_in) eps): beyond
 * rank G the released code's directions are an arbitrary basis of a null
 * space (LAPACK's choice), so no route can reproduce them. */
#include <float.h>
#include <math.h>
#include <string.h>

#include "linalg/linalg.h"
#include "strategies/esm.h"

#define OVERSAMPLE 10
#define POWER_ITERS 2

const char *lm__esm_route_name(enum esm_route route)
{
    switch (route) {
    case ESD_GRAM:
        return "gram";
    case ESD_OUTPUT:
        return "output";
    case ESD_RANDOMIZED:
        return "randomized";
    default:
        return "auto";
    }
}

static size_t min_sz(size_t a, size_t b)
{
    return a < b ? a : b;
}

/* An upper bound on rank C (and so on rank G's row factor). */
static size_t factor_rows(size_t d_in, uint64_t rows)
{
    return rows < (uint64_t)d_in ? (size_t)rows : d_in;
}

static size_t sketch_cols(size_t d_out, size_t d_in, uint64_t rows,
                          size_t cap)
{
    size_t r = min_sz(factor_rows(d_in, rows), d_out);
    return min_sz(min_sz(cap, r) + OVERSAMPLE, d_out);
}

double lm__esm_route_bytes(enum esm_route route, size_t d_out, size_t d_in,
                           uint64_t rows, size_t cap)
{
    double o = (double)d_out, i = (double)d_in, b = sizeof(double);
    if (route == ESD_GRAM) /* dW C, G, eigenvectors, dsyevd's copy + work */
        return b * (5.0 * o * o + o * i + 6.0 * o);
    if (route == ESD_OUTPUT) {
        double r = (double)factor_rows(d_in, rows);
        double mn = r < o ? r : o;
        /* C's eigensolve, R, B, dgesdd's copy and Vt, U, work */
        return b * (5.0 * i * i + r * i + 3.0 * r * o + 5.0 * mn * mn +
                    r * i + 8.0 * mn + o);
    }
    double l = (double)sketch_cols(d_out, d_in, rows, cap);
    return b * (3.0 * o * l + 2.0 * i * l + 6.0 * l * l + o * l);
}

bool lm__esm_route_fits_lapack(enum esm_route route, size_t d_out,
                               size_t d_in, uint64_t rows, size_t cap)
{
    double o = (double)d_out, i = (double)d_in;
    if (route == ESD_GRAM)
        return lm__lapack_fits(1.0 + 6.0 * o + 2.0 * o * o);
    if (route == ESD_OUTPUT) {
        double r = (double)factor_rows(d_in, rows), mn = r < o ? r : o;
        return lm__lapack_fits(1.0 + 6.0 * i + 2.0 * i * i) &&
               lm__lapack_fits(4.0 * mn * mn + 7.0 * mn + (r < o ? o : r));
    }
    double l = (double)sketch_cols(d_out, d_in, rows, cap);
    return lm__lapack_fits(1.0 + 6.0 * l + 2.0 * l * l) &&
           lm__lapack_fits(o * l);
}

/* How many leading eigenvalues (descending, raw) pass numpy's
 * matrix_rank tolerance for G. */
static size_t numerical_rank(const double *ev, size_t n, size_t d_out,
                             size_t d_in)
{
    if (!n || !(ev[0] > 0))
        return 0;
    double tol = ev[0] * (double)(d_out > d_in ? d_out : d_in) * DBL_EPSILON;
    size_t r = 0;
    while (r < n && ev[r] > tol)
        r++;
    return r;
}

/* ||A_t||_F as released. pad=complete (or no padding): P is orthogonal, so
 * ||P^T dW|| = ||dW||. pad=identity with n < d_out: the first n columns
 * are the SVD's directions (those past rank G contribute P^T dW = 0 when
 * X has full column rank, the generic case) and columns n.. are e_j, so
 * rows j >= n of dW count again. basis: the r directions past which
 * nothing counts, as rows (r x d_out) or columns (d_out x r). */
static double task_norm(lm_context *ctx, const struct esm_opts *o,
                        const struct esm_task_in *in, const double *basis,
                        bool basis_rows, size_t r, lm_status *st)
{
    size_t d_out = in->d_out, d_in = in->d_in;
    double s2 = 0;
    if (!o->pad_identity || in->n_rows >= (uint64_t)d_out) {
        for (size_t i = 0; i < d_out * d_in; i++)
            s2 += in->dw[i] * in->dw[i];
        return sqrt(s2);
    }
    if (r) {
        double *a = lm__calloc(ctx, r * d_in, sizeof(double));
        if (!a) {
            *st = LM_ERR_OUT_OF_MEMORY;
            return 0;
        }
        /* A = P_r^T dW. */
        if (basis_rows)
            lm__gemm(false, false, r, d_in, d_out, 1.0, basis, in->dw, 0.0,
                     a);
        else
            lm__gemm(true, false, r, d_in, d_out, 1.0, basis, in->dw, 0.0, a);
        for (size_t i = 0; i < r * d_in; i++)
            s2 += a[i] * a[i];
        lm_free(ctx, a);
    }
    for (size_t j = (size_t)in->n_rows; j < d_out; j++)
        for (size_t c = 0; c < d_in; c++)
            s2 += in->dw[j * d_in + c] * in->dw[j * d_in + c];
    return sqrt(s2);
}

static double lambda_denom(uint64_t n)
{
    return n > 1 ? (double)(n - 1) : 1.0;
}

static lm_status via_gram(lm_context *ctx, const struct esm_opts *o,
                          const struct esm_task_in *in, double *p,
                          double *lambda, size_t *kept, double *norm)
{
    size_t d_out = in->d_out, d_in = in->d_in;
    double *buf = lm__calloc(ctx, d_out * d_in + 2 * d_out * d_out + d_out,
                             sizeof(double));
    if (!buf)
        return LM_ERR_OUT_OF_MEMORY;
    double *y = buf, *g = y + d_out * d_in, *v = g + d_out * d_out,
           *ev = v + d_out * d_out;
    lm__gemm(false, false, d_out, d_in, d_in, 1.0, in->dw, in->gram, 0.0, y);
    lm__gemm(false, true, d_out, d_out, d_in, 1.0, y, in->dw, 0.0, g);
    /* Exact symmetry for the eigensolver. */
    for (size_t i = 0; i < d_out; i++)
        for (size_t j = i + 1; j < d_out; j++)
            g[j * d_out + i] = g[i * d_out + j] =
                0.5 * (g[i * d_out + j] + g[j * d_out + i]);
    lm_status st = lm__eigh(ctx, g, d_out, ev, v);
    if (st == LM_OK) {
        /* rank G <= min(n, d_in): rounding noise never counts past it
         * (and y below holds at most d_in columns per row). */
        size_t r = min_sz(numerical_rank(ev, d_out, d_out, d_in),
                          factor_rows(d_in, in->n_rows));
        size_t k = min_sz(r, in->cap);
        for (size_t i = 0; i < d_out; i++)
            memcpy(p + i * in->cap, v + i * d_out, k * sizeof(double));
        for (size_t j = 0; j < k; j++)
            lambda[j] = ev[j] / lambda_denom(in->n_rows);
        *kept = k;
        /* The basis for the identity pad's norm: v's first r columns. */
        if (o->pad_identity && in->n_rows < (uint64_t)d_out) {
            for (size_t i = 0; i < d_out; i++)
                memmove(y + i * r, v + i * d_out, r * sizeof(double));
            *norm = task_norm(ctx, o, in, y, false, r, &st);
        } else {
            *norm = task_norm(ctx, o, in, NULL, false, 0, &st);
        }
    }
    lm_free(ctx, buf);
    return st;
}

/* R = D^1/2 V^T over C's eigenpairs above numpy's rank tolerance: rows of
 * r (d_in x d_in room), count in *rr. */
static lm_status gram_factor(lm_context *ctx, const struct esm_task_in *in,
                             double *r, size_t *rr)
{
    size_t d = in->d_in;
    double *buf = lm__calloc(ctx, d * d + d, sizeof(double));
    if (!buf)
        return LM_ERR_OUT_OF_MEMORY;
    double *v = buf, *w = v + d * d;
    lm_status st = lm__eigh(ctx, in->gram, d, w, v);
    if (st == LM_OK) {
        size_t k = 0;
        double tol = w[0] > 0 ? w[0] * (double)d * DBL_EPSILON : 0;
        while (k < d && w[k] > tol && w[0] > 0)
            k++;
        k = min_sz(k, factor_rows(d, in->n_rows)); /* rank C <= n */
        for (size_t j = 0; j < k; j++) {
            double sq = sqrt(w[j]);
            for (size_t i = 0; i < d; i++)
                r[j * d + i] = sq * v[i * d + j];
        }
        *rr = k;
    }
    lm_free(ctx, buf);
    return st;
}

static lm_status via_output(lm_context *ctx, const struct esm_opts *o,
                            const struct esm_task_in *in, double *p,
                            double *lambda, size_t *kept, double *norm)
{
    size_t d_out = in->d_out, d_in = in->d_in;
    double *r = lm__calloc(ctx, d_in * d_in, sizeof(double));
    if (!r)
        return LM_ERR_OUT_OF_MEMORY;
    size_t rr = 0;
    lm_status st = gram_factor(ctx, in, r, &rr);
    *kept = 0;
    if (st != LM_OK || rr == 0) {
        lm_free(ctx, r);
        if (st == LM_OK)
            *norm = task_norm(ctx, o, in, NULL, true, 0, &st);
        return st;
    }
    size_t mn = min_sz(rr, d_out);
    double *buf = lm__calloc(ctx, rr * d_out + rr * mn + mn + mn * d_out,
                             sizeof(double));
    if (!buf) {
        lm_free(ctx, r);
        return LM_ERR_OUT_OF_MEMORY;
    }
    double *b = buf, *u = b + rr * d_out, *s = u + rr * mn, *vt = s + mn;
    lm__gemm(false, true, rr, d_out, d_in, 1.0, r, in->dw, 0.0, b);
    lm_free(ctx, r);
    st = lm__svd(ctx, b, rr, d_out, u, s, vt);
    if (st == LM_OK) {
        for (size_t i = 0; i < mn; i++)
            s[i] *= s[i]; /* eigenvalues of G */
        size_t rank = numerical_rank(s, mn, d_out, d_in);
        size_t k = min_sz(rank, in->cap);
        for (size_t j = 0; j < k; j++) {
            lambda[j] = s[j] / lambda_denom(in->n_rows);
            for (size_t i = 0; i < d_out; i++)
                p[i * in->cap + j] = vt[j * d_out + i];
        }
        *kept = k;
        *norm = task_norm(ctx, o, in, vt, true, rank, &st);
    }
    lm_free(ctx, buf);
    return st;
}

/* Z = G Q = dW (C (dW^T Q)) for Q (d_out x l); t1, t2: d_in x l. */
static void apply_g(const struct esm_task_in *in, const double *q, size_t l,
                    double *t1, double *t2, double *z)
{
    lm__gemm(true, false, in->d_in, l, in->d_out, 1.0, in->dw, q, 0.0, t1);
    lm__gemm(false, false, in->d_in, l, in->d_in, 1.0, in->gram, t1, 0.0, t2);
    lm__gemm(false, false, in->d_out, l, in->d_in, 1.0, in->dw, t2, 0.0, z);
}

static lm_status via_randomized(lm_context *ctx, const struct esm_opts *o,
                                const struct esm_task_in *in, double *p,
                                double *lambda, size_t *kept, double *norm)
{
    size_t d_out = in->d_out, d_in = in->d_in;
    size_t l = sketch_cols(d_out, d_in, in->n_rows, in->cap);
    double *buf = lm__calloc(ctx, 2 * d_out * l + 2 * d_in * l + 2 * l * l +
                                      l,
                             sizeof(double));
    if (!buf)
        return LM_ERR_OUT_OF_MEMORY;
    double *q = buf, *z = q + d_out * l, *t1 = z + d_out * l,
           *t2 = t1 + d_in * l, *h = t2 + d_in * l, *v = h + l * l,
           *w = v + l * l;
    for (size_t i = 0; i < d_out * l; i++)
        q[i] = lm__gaussian(in->seed, i);
    apply_g(in, q, l, t1, t2, z);
    lm_status st = lm__qr_q(ctx, z, d_out, l, q);
    for (size_t it = 0; st == LM_OK && it < POWER_ITERS; it++) {
        apply_g(in, q, l, t1, t2, z);
        st = lm__qr_q(ctx, z, d_out, l, q);
    }
    if (st == LM_OK) {
        /* H = Q^T G Q (l x l), symmetrised; its eigenpairs give G's top
         * ones on range(Q). */
        apply_g(in, q, l, t1, t2, z);
        lm__gemm(true, false, l, l, d_out, 1.0, q, z, 0.0, h);
        for (size_t i = 0; i < l; i++)
            for (size_t j = i + 1; j < l; j++)
                h[j * l + i] = h[i * l + j] = 0.5 * (h[i * l + j] + h[j * l + i]);
        st = lm__eigh(ctx, h, l, w, v);
    }
    if (st == LM_OK) {
        size_t rank = min_sz(numerical_rank(w, l, d_out, d_in),
                             factor_rows(d_in, in->n_rows));
        size_t k = min_sz(rank, in->cap);
        /* P = Q V[:, :k] into p (stride cap). */
        lm__gemm(false, false, d_out, l, l, 1.0, q, v, 0.0, z);
        for (size_t i = 0; i < d_out; i++)
            memcpy(p + i * in->cap, z + i * l, k * sizeof(double));
        for (size_t j = 0; j < k; j++)
            lambda[j] = w[j] / lambda_denom(in->n_rows);
        *kept = k;
        *norm = task_norm(ctx, o, in, NULL, false, 0, &st);
    }
    lm_free(ctx, buf);
    return st;
}

lm_status lm__esm_subspace(lm_context *ctx, const struct esm_opts *o,
                           enum esm_route route, const struct esm_task_in *in,
                           double *p, double *lambda, size_t *kept,
                           double *norm)
{
    *kept = 0;
    *norm = 0;
    if (route == ESD_GRAM)
        return via_gram(ctx, o, in, p, lambda, kept, norm);
    if (route == ESD_OUTPUT)
        return via_output(ctx, o, in, p, lambda, kept, norm);
    return via_randomized(ctx, o, in, p, lambda, kept, norm);
}
