/* Projectors: orthonormal bases from SVD, eigendecomposition or stats. */
#include <math.h>
#include <string.h>

#include "libmerge/projector.h"
#include "linalg/linalg.h"
#include "linalg/projector_private.h"

struct lm_projector {
    lm_context *ctx;
    size_t dim, rank;
    double energy;
    double *basis;  /* dim x rank */
    double *values; /* rank */
    bool singular;  /* values are singular values (else eigenvalues) */
};

/* Rank for `energy` over non-negative weights w (descending). */
static size_t rank_for_energy(const double *w, size_t n, double energy,
                              double *captured)
{
    double total = 0;
    for (size_t i = 0; i < n; i++)
        total += w[i] > 0 ? w[i] : 0;
    if (total <= 0) {
        *captured = 1.0;
        return n ? 1 : 0;
    }
    double acc = 0;
    for (size_t i = 0; i < n; i++) {
        acc += w[i] > 0 ? w[i] : 0;
        if (acc >= energy * total * (1 - 1e-12)) {
            *captured = acc / total;
            return i + 1;
        }
    }
    *captured = 1.0;
    return n;
}

/* Keep `rank` columns of vecs (dim x full) and their values; energy over
 * weights w. */
static lm_status finish(lm_context *ctx, const double *vecs, size_t dim,
                        size_t full, const double *values, const double *w,
                        size_t rank, double energy, lm_projector **out)
{
    if (energy < 0 || energy > 1 || isnan(energy))
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_RANGE,
                                    "projector: energy %g outside [0, 1]",
                                    energy);
    if (rank > full)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_RANGE,
                                    "projector: rank %zu > %zu available "
                                    "directions", rank, full);
    double captured = 1.0;
    if (rank == 0 && energy > 0) {
        rank = rank_for_energy(w, full, energy, &captured);
    } else {
        if (rank == 0)
            rank = full;
        double total = 0, kept = 0;
        for (size_t i = 0; i < full; i++) {
            double x = w[i] > 0 ? w[i] : 0;
            total += x;
            kept += i < rank ? x : 0;
        }
        captured = total > 0 ? kept / total : 1.0;
    }
    lm_projector *p = lm__calloc(ctx, 1, sizeof(*p));
    double *basis = lm__calloc(ctx, dim * rank + rank + 1, sizeof(double));
    if (!p || !basis) {
        lm_free(ctx, p);
        lm_free(ctx, basis);
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "projector: out of memory");
    }
    for (size_t i = 0; i < dim; i++)
        memcpy(basis + i * rank, vecs + i * full, rank * sizeof(double));
    p->ctx = ctx;
    p->dim = dim;
    p->rank = rank;
    p->energy = captured;
    p->basis = basis;
    p->values = basis + dim * rank;
    memcpy(p->values, values, rank * sizeof(double));
    p->singular = values != w; /* the SVD passes s and its squares */
    *out = p;
    return LM_OK;
}

static lm_status from_symmetric(lm_context *ctx, const double *a, size_t d,
                                size_t rank, double energy,
                                lm_projector **out)
{
    double *buf = lm__calloc(ctx, d * d + d, sizeof(double));
    if (!buf)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "projector: out of memory (%zu x %zu)", d,
                                    d);
    double *v = buf, *w = buf + d * d;
    lm_status st = lm__eigh(ctx, a, d, w, v);
    if (st == LM_OK) {
        /* Canonical signs: largest |entry| of each eigenvector positive. */
        for (size_t j = 0; j < d; j++) {
            size_t best = 0;
            for (size_t i = 1; i < d; i++)
                if (fabs(v[i * d + j]) > fabs(v[best * d + j]))
                    best = i;
            if (v[best * d + j] < 0)
                for (size_t i = 0; i < d; i++)
                    v[i * d + j] = -v[i * d + j];
        }
        st = finish(ctx, v, d, d, w, w, rank, energy, out);
    }
    lm_free(ctx, buf);
    return st;
}

lm_status lm_projector_from_tensor(lm_context *ctx, const lm_tensor *a,
                                   lm_basis basis, size_t rank, double energy,
                                   lm_projector **out)
{
    if (!ctx || !a || !out)
        return LM_ERR_INVALID_ARGUMENT;
    if (a->ndim != 2)
        return lm_context_set_error(ctx, LM_ERR_SHAPE,
                                    "projector: the tensor must be 2-D");
    size_t m = (size_t)a->shape[0], n = (size_t)a->shape[1];
    if (basis == LM_BASIS_EIGEN && m != n)
        return lm_context_set_error(ctx, LM_ERR_SHAPE,
                                    "projector: an eigenbasis needs a square "
                                    "matrix, got %zu x %zu", m, n);
    if (basis > LM_BASIS_EIGEN)
        return LM_ERR_INVALID_ARGUMENT;
    size_t k = m < n ? m : n;
    float *f = lm__calloc(ctx, m * n + 1, sizeof(float));
    double *buf = lm__calloc(ctx, m * n + m * k + k + k * n + n * k + k,
                             sizeof(double));
    lm_status st = f && buf ? lm__read_f32(ctx, a, f)
                            : lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                                   "projector: out of memory "
                                                   "(%zu x %zu)", m, n);
    double *x = buf;
    if (st == LM_OK)
        lm__f32_to_f64(f, x, m * n);
    if (st == LM_OK && basis == LM_BASIS_EIGEN) {
        for (size_t i = 0; i < n && st == LM_OK; i++)
            for (size_t j = 0; j < i; j++)
                if (fabs(x[i * n + j] - x[j * n + i]) >
                    1e-6 * (fabs(x[i * n + j]) + fabs(x[j * n + i]) + 1e-30))
                    st = lm_context_set_error(ctx, LM_ERR_INVALID_ARGUMENT,
                                              "projector: the matrix is not "
                                              "symmetric");
        if (st == LM_OK)
            st = from_symmetric(ctx, x, n, rank, energy, out);
    } else if (st == LM_OK) {
        double *u = x + m * n, *s = u + m * k, *vt = s + k, *v = vt + k * n,
               *s2 = v + n * k;
        st = lm__svd(ctx, x, m, n, u, s, vt);
        if (st == LM_OK) {
            for (size_t i = 0; i < k; i++)
                s2[i] = s[i] * s[i];
            if (basis == LM_BASIS_LEFT) {
                st = finish(ctx, u, m, k, s, s2, rank, energy, out);
            } else {
                for (size_t i = 0; i < n; i++)
                    for (size_t j = 0; j < k; j++)
                        v[i * k + j] = vt[j * n + i];
                st = finish(ctx, v, n, k, s, s2, rank, energy, out);
            }
        }
    }
    lm_free(ctx, f);
    lm_free(ctx, buf);
    return st;
}

lm_status lm_projector_from_stats(lm_context *ctx, const lm_stats *stats,
                                  size_t model, const char *name, size_t rank,
                                  double energy, lm_projector **out)
{
    if (!ctx || !stats || !name || !out)
        return LM_ERR_INVALID_ARGUMENT;
    const double *g;
    size_t d;
    uint64_t n;
    LM_TRY(lm_stats_find(stats, model, name, &g, &d, &n));
    if (n == 0)
        return lm_context_set_error(ctx, LM_ERR_STATE,
                                    "projector: no rows observed for '%s'",
                                    name);
    double *c = lm__calloc(ctx, d * d, sizeof(double));
    if (!c)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "projector: out of memory for '%s'", name);
    for (size_t i = 0; i < d * d; i++)
        c[i] = g[i] / (double)n;
    lm_status st = from_symmetric(ctx, c, d, rank, energy, out);
    lm_free(ctx, c);
    return st;
}

void lm_projector_destroy(lm_projector *p)
{
    if (!p)
        return;
    lm_free(p->ctx, p->basis);
    lm_free(p->ctx, p);
}

size_t lm_projector_dim(const lm_projector *p) { return p ? p->dim : 0; }
size_t lm_projector_rank(const lm_projector *p) { return p ? p->rank : 0; }
double lm_projector_energy(const lm_projector *p) { return p ? p->energy : 0; }
const double *lm_projector_basis(const lm_projector *p)
{
    return p ? p->basis : NULL;
}
const double *lm_projector_values(const lm_projector *p)
{
    return p ? p->values : NULL;
}

double lm__projector_strength(const lm_projector *p, size_t j)
{
    double v = p->values[j];
    return p->singular ? v * v : v > 0 ? v : 0.0;
}

static lm_status apply(const lm_projector *p, const float *in, size_t n,
                       float *out, bool complement)
{
    if (!p || (!in && n) || (!out && n))
        return LM_ERR_INVALID_ARGUMENT;
    size_t d = p->dim, r = p->rank;
    double *buf = lm__calloc(p->ctx, n * d + n * r + n * d + 1,
                             sizeof(double));
    if (!buf)
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "projector: out of memory");
    double *x = buf, *c = x + n * d, *y = c + n * r;
    lm__f32_to_f64(in, x, n * d);
    lm__gemm(false, false, n, r, d, 1.0, x, p->basis, 0.0, c); /* X P */
    lm__gemm(false, true, n, d, r, 1.0, c, p->basis, 0.0, y);  /* X P P^T */
    for (size_t i = 0; i < n * d; i++)
        out[i] = (float)(complement ? x[i] - y[i] : y[i]);
    lm_free(p->ctx, buf);
    return LM_OK;
}

lm_status lm_projector_project(const lm_projector *p, const float *in,
                               size_t n, float *out)
{
    return apply(p, in, n, out, false);
}

lm_status lm_projector_complement(const lm_projector *p, const float *in,
                                  size_t n, float *out)
{
    return apply(p, in, n, out, true);
}
