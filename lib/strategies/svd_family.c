/* The SVD family: `tsv` (TSV-M, Gargiulo et al. 2025), `iso_c` and
 * `iso_cts` (Marczak et al. 2025). Matrices ([out, in] tensors) are merged
 * in f64 through LAPACK; every other tensor gets alpha * the weighted mean
 * of the task vectors, as the papers' code does for 1-D parameters. Task
 * vectors are multiplied by their model weights first. */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "linalg/linalg.h"
#include "strategies/builtin.h"

enum svd_method { TSV, ISO_C, ISO_CTS };

struct svd_state {
    lm_context *ctx;
    enum svd_method method;
    double alpha;
    double common_fraction; /* iso_cts */
    bool randomized;
    int64_t power, oversample;
};

static const lm_param_desc tsv_params[] = {
    {sizeof(lm_param_desc), "alpha", LM_PARAM_FLOAT, 1.0, 0.0, 10.0, NULL,
     "scale of the merged task vector (papers pick it on validation in "
     "(0, 3])"},
    {sizeof(lm_param_desc), "randomized", LM_PARAM_BOOL, 0.0, 0.0, 1.0, NULL,
     "per-task top-k SVDs by a randomized range finder (faster)"},
    {sizeof(lm_param_desc), "power_iterations", LM_PARAM_INT, 2.0, 0.0, 10.0,
     NULL, "power iterations of the randomized SVD"},
    {sizeof(lm_param_desc), "oversample", LM_PARAM_INT, 16.0, 0.0, 1024.0,
     NULL, "extra random probes of the randomized SVD"},
};

static const lm_param_desc iso_c_params[] = {
    {sizeof(lm_param_desc), "alpha", LM_PARAM_FLOAT, 1.0, 0.0, 10.0, NULL,
     "scale of the merged task vector"},
};

/* No randomized option: the flattened spectrum gives every kept direction
 * the same weight, so approximate trailing directions would not be damped
 * as they are in tsv. */
static const lm_param_desc iso_cts_params[] = {
    {sizeof(lm_param_desc), "alpha", LM_PARAM_FLOAT, 1.0, 0.0, 10.0, NULL,
     "scale of the merged task vector"},
    {sizeof(lm_param_desc), "common_space_fraction", LM_PARAM_FLOAT, 0.8,
     0.0, 1.0, NULL, "fraction of the rank given to the common subspace"},
};

static lm_status svd_init(const lm_strategy_init_info *info, void **state,
                          enum svd_method method)
{
    struct svd_state *s = lm__calloc(info->ctx, 1, sizeof(*s));
    if (!s)
        return LM_ERR_OUT_OF_MEMORY;
    s->ctx = info->ctx;
    s->method = method;
    lm_status st = lm_params_get_float(info->params, "alpha", &s->alpha);
    if (st == LM_OK && method == ISO_CTS)
        st = lm_params_get_float(info->params, "common_space_fraction",
                                 &s->common_fraction);
    if (st == LM_OK && method == TSV) {
        int r;
        st = lm_params_get_bool(info->params, "randomized", &r);
        s->randomized = r != 0;
        if (st == LM_OK)
            st = lm_params_get_int(info->params, "power_iterations",
                                   &s->power);
        if (st == LM_OK)
            st = lm_params_get_int(info->params, "oversample",
                                   &s->oversample);
    }
    if (st != LM_OK) {
        lm_free(info->ctx, s);
        return st;
    }
    *state = s;
    return LM_OK;
}

static lm_status tsv_init(const lm_strategy_init_info *i, void **s, void *u)
{
    (void)u;
    return svd_init(i, s, TSV);
}

static lm_status iso_c_init(const lm_strategy_init_info *i, void **s, void *u)
{
    (void)u;
    return svd_init(i, s, ISO_C);
}

static lm_status iso_cts_init(const lm_strategy_init_info *i, void **s,
                              void *u)
{
    (void)u;
    return svd_init(i, s, ISO_CTS);
}

static void svd_fini(void *state, void *user)
{
    (void)user;
    struct svd_state *s = state;
    if (s)
        lm_free(s->ctx, s);
}

/* Top-k triplets of x (m x n): exact SVD truncated, or randomized. */
static lm_status top_k(const struct svd_state *s, lm_context *ctx,
                       const double *x, size_t m, size_t n, size_t k,
                       uint64_t seed, double *u, double *sv, double *vt)
{
    size_t full = m < n ? m : n;
    if (s->randomized && k + (size_t)s->oversample < full)
        return lm__svd_randomized(ctx, x, m, n, k, (size_t)s->oversample,
                                  (size_t)s->power, seed, u, sv, vt);
    double *buf = lm__calloc(ctx, m * full + full + full * n, sizeof(double));
    if (!buf)
        return LM_ERR_OUT_OF_MEMORY;
    double *fu = buf, *fs = fu + m * full, *fvt = fs + full;
    lm_status st = lm__svd(ctx, x, m, n, fu, fs, fvt);
    if (st == LM_OK) {
        for (size_t i = 0; i < m; i++)
            memcpy(u + i * k, fu + i * full, k * sizeof(double));
        memcpy(sv, fs, k * sizeof(double));
        memcpy(vt, fvt, k * n * sizeof(double));
    }
    lm_free(ctx, buf);
    return st;
}

/* Columns [col, col + k) of U (m x cols) from u (m x k); rows of Vt (k x n)
 * become columns [col, col + k) of V (n x cols). */
static void place(double *U, double *V, size_t m, size_t n, size_t cols,
                  size_t col, const double *u, const double *vt, size_t k)
{
    for (size_t i = 0; i < m; i++)
        memcpy(U + i * cols + col, u + i * k, k * sizeof(double));
    for (size_t j = 0; j < k; j++)
        for (size_t i = 0; i < n; i++)
            V[i * cols + col + j] = vt[j * n + i];
}

/* out = scale * U diag(sigma) V^T with U (m x c), V (n x c). */
static void compose(const double *U, const double *sigma, const double *V,
                    size_t m, size_t n, size_t c, double scale, double *tmp,
                    double *out)
{
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < c; j++)
            tmp[i * c + j] = U[i * c + j] * sigma[j];
    lm__gemm(false, true, m, n, c, scale, tmp, V, 0.0, out);
}

/* Weighted task vectors in f64: x[t] = w_t * tau_t. */
double *lm__weighted_tasks(const lm_tensor_job *job)
{
    size_t n = job->numel, k = job->n_models;
    double *x = lm__calloc(job->ctx, n * k, sizeof(double));
    if (!x)
        return NULL;
    for (size_t t = 0; t < k; t++)
        for (size_t i = 0; i < n; i++)
            x[t * n + i] = job->weights[t] * (double)job->deltas[t][i];
    return x;
}

static lm_status merge_tsv(const struct svd_state *s, const lm_tensor_job *job,
                           const double *x, size_t m, size_t n, double *out);

lm_status lm__tsv_merge(const lm_tensor_job *job, const double *x, size_t m,
                        size_t n, double *out)
{
    struct svd_state plain;
    memset(&plain, 0, sizeof(plain));
    plain.ctx = job->ctx;
    plain.method = TSV;
    plain.alpha = 1.0;
    return merge_tsv(&plain, job, x, m, n, out);
}

static lm_status merge_tsv(const struct svd_state *s, const lm_tensor_job *job,
                           const double *x, size_t m, size_t n, double *out)
{
    size_t T = job->n_models, full = m < n ? m : n;
    size_t k = full / T ? full / T : 1, cols = k * T;
    lm_context *ctx = job->ctx;
    double *buf = lm__calloc(ctx, m * cols * 2 + n * cols * 2 + cols +
                                      m * k + k + k * n,
                             sizeof(double));
    if (!buf)
        return LM_ERR_OUT_OF_MEMORY;
    double *U = buf, *Up = U + m * cols, *V = Up + m * cols, *Vp = V + n * cols,
           *sigma = Vp + n * cols, *u = sigma + cols, *sv = u + m * k,
           *vt = sv + k;
    lm_status st = LM_OK;
    for (size_t t = 0; st == LM_OK && t < T; t++) {
        st = top_k(s, ctx, x + t * m * n, m, n, k, job->seed + t, u, sv, vt);
        if (st == LM_OK) {
            place(U, V, m, n, cols, t * k, u, vt, k);
            memcpy(sigma + t * k, sv, k * sizeof(double));
        }
    }
    if (st == LM_OK)
        st = lm__polar(ctx, U, m, cols, Up);
    if (st == LM_OK)
        st = lm__polar(ctx, V, n, cols, Vp);
    if (st == LM_OK)
        compose(Up, sigma, Vp, m, n, cols, s->alpha, U, out);
    lm_free(ctx, buf);
    return st;
}

static lm_status merge_iso_c(const struct svd_state *s,
                             const lm_tensor_job *job, const double *x,
                             size_t m, size_t n, double *out)
{
    size_t T = job->n_models, full = m < n ? m : n;
    lm_context *ctx = job->ctx;
    double *buf = lm__calloc(ctx, m * n + m * full + full + full * n,
                             sizeof(double));
    if (!buf)
        return LM_ERR_OUT_OF_MEMORY;
    double *sum = buf, *u = sum + m * n, *sv = u + m * full, *vt = sv + full;
    for (size_t t = 0; t < T; t++)
        for (size_t i = 0; i < m * n; i++)
            sum[i] += x[t * m * n + i];
    lm_status st = lm__svd(ctx, sum, m, n, u, sv, vt);
    if (st == LM_OK) {
        double mean = 0;
        for (size_t i = 0; i < full; i++)
            mean += sv[i];
        mean /= (double)full;
        lm__gemm(false, false, m, n, full, s->alpha * mean, u, vt, 0.0, out);
    }
    lm_free(ctx, buf);
    return st;
}

static lm_status merge_iso_cts(const struct svd_state *s,
                               const lm_tensor_job *job, const double *x,
                               size_t m, size_t n, double *out)
{
    size_t T = job->n_models, full = m < n ? m : n;
    size_t kc = (size_t)floor(s->common_fraction * (double)full);
    size_t per = (full - kc) / T, cols = kc + per * T;
    lm_context *ctx = job->ctx;
    if (cols == 0)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_RANGE,
                                    "iso_cts: tensor '%s' (%zu x %zu) leaves "
                                    "no directions with %zu tasks and "
                                    "common_space_fraction %g", job->name, m,
                                    n, T, s->common_fraction);
    size_t kt = per ? per : 1;
    double *buf = lm__calloc(ctx, m * n * 2 + m * full + full + full * n +
                                      2 * m * cols + 2 * n * cols + cols +
                                      m * kt + kt + kt * n,
                             sizeof(double));
    if (!buf)
        return LM_ERR_OUT_OF_MEMORY;
    double *sum = buf, *proj = sum + m * n, *u = proj + m * n,
           *sv = u + m * full, *vt = sv + full, *U = vt + full * n,
           *Up = U + m * cols, *V = Up + m * cols, *Vp = V + n * cols,
           *sigma = Vp + n * cols, *tu = sigma + cols, *ts = tu + m * kt,
           *tvt = ts + kt;
    for (size_t t = 0; t < T; t++)
        for (size_t i = 0; i < m * n; i++)
            sum[i] += x[t * m * n + i];
    lm_status st = lm__svd(ctx, sum, m, n, u, sv, vt);
    if (st == LM_OK && kc) {
        /* The common subspace: M's top kc triplets. */
        for (size_t i = 0; i < m; i++)
            memcpy(U + i * cols, u + i * full, kc * sizeof(double));
        for (size_t j = 0; j < kc; j++)
            for (size_t i = 0; i < n; i++)
                V[i * cols + j] = vt[j * n + i];
        memcpy(sigma, sv, kc * sizeof(double));
    }
    /* Task-specific directions from each tau_t with the common left
     * subspace projected out: (I - Uc Uc^T) tau_t. */
    double *coef = kc ? lm__calloc(ctx, kc * n, sizeof(double)) : NULL;
    if (kc && !coef)
        st = LM_ERR_OUT_OF_MEMORY;
    for (size_t t = 0; st == LM_OK && per && t < T; t++) {
        const double *xt = x + t * m * n;
        memcpy(proj, xt, m * n * sizeof(double));
        if (kc) {
            /* coef = Uc^T x_t (kc x n); proj -= Uc coef. Uc is U's first kc
             * columns with row stride cols. */
            cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)kc,
                        (int)n, (int)m, 1.0, U, (int)cols, xt, (int)n, 0.0,
                        coef, (int)n);
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m,
                        (int)n, (int)kc, -1.0, U, (int)cols, coef, (int)n,
                        1.0, proj, (int)n);
        }
        st = top_k(s, ctx, proj, m, n, per, job->seed + t, tu, ts, tvt);
        if (st == LM_OK) {
            place(U, V, m, n, cols, kc + t * per, tu, tvt, per);
            memcpy(sigma + kc + t * per, ts, per * sizeof(double));
        }
    }
    lm_free(ctx, coef);
    if (st == LM_OK)
        st = lm__polar(ctx, U, m, cols, Up);
    if (st == LM_OK)
        st = lm__polar(ctx, V, n, cols, Vp);
    if (st == LM_OK) {
        double mean = 0;
        for (size_t i = 0; i < cols; i++)
            mean += sigma[i];
        mean /= (double)cols;
        lm__gemm(false, true, m, n, cols, s->alpha * mean, Up, Vp, 0.0, out);
    }
    lm_free(ctx, buf);
    return st;
}

static lm_status svd_merge(void *state, const lm_tensor_job *job, void *user)
{
    (void)user;
    const struct svd_state *s = state;
    size_t n_el = job->numel, T = job->n_models;
    if (job->ndim != 2 || job->shape[0] < 2 || job->shape[1] < 2) {
        double wsum = 0;
        for (size_t t = 0; t < T; t++)
            wsum += job->weights[t];
        lm__weighted_sum(job, wsum != 0 ? s->alpha / wsum : 0.0);
        return LM_OK;
    }
    size_t m = (size_t)job->shape[0], n = (size_t)job->shape[1];
    double *x = lm__weighted_tasks(job);
    double *out = lm__calloc(job->ctx, n_el, sizeof(double));
    lm_status st = x && out ? LM_OK : LM_ERR_OUT_OF_MEMORY;
    if (st == LM_OK) {
        if (s->method == TSV)
            st = merge_tsv(s, job, x, m, n, out);
        else if (s->method == ISO_C)
            st = merge_iso_c(s, job, x, m, n, out);
        else
            st = merge_iso_cts(s, job, x, m, n, out);
    }
    if (st == LM_OK)
        lm__f64_to_f32(out, job->out, n_el);
    else if (st == LM_ERR_OUT_OF_MEMORY)
        lm_context_set_error(job->ctx, st, "out of memory merging '%s' "
                             "(%zu x %zu, %zu tasks)", job->name, m, n, T);
    else if (!strstr(lm_context_error(job->ctx), job->name)) {
        char msg[LM_ERROR_CAPACITY];
        lm_context_copy_error(job->ctx, msg, sizeof(msg));
        lm_context_set_error(job->ctx, st, "tensor '%s': %s", job->name, msg);
    }
    lm_free(job->ctx, x);
    lm_free(job->ctx, out);
    return st;
}

#define SVD_VTABLE(var, nm, desc, tbl, initfn)                              \
    const lm_strategy_vtable var = {                                        \
        .struct_size = sizeof(lm_strategy_vtable),                          \
        .abi_version = LM_STRATEGY_ABI_VERSION,                             \
        .name = nm,                                                         \
        .description = desc,                                                \
        .params = tbl,                                                      \
        .n_params = sizeof(tbl) / sizeof(tbl[0]),                           \
        .init = initfn,                                                     \
        .merge_tensor = svd_merge,                                          \
        .fini = svd_fini,                                                   \
    }

SVD_VTABLE(lm__tsv_strategy, "tsv",
           "TSV-M: per-task top singular triplets, orthogonalised", tsv_params,
           tsv_init);
SVD_VTABLE(lm__iso_c_strategy, "iso_c",
           "Iso-C: sum of task vectors with a flat spectrum", iso_c_params,
           iso_c_init);
SVD_VTABLE(lm__iso_cts_strategy, "iso_cts",
           "Iso-CTS: common and task-specific subspaces, flat spectrum",
           iso_cts_params, iso_cts_init);
