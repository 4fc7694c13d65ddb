/* The SVD family: `tsv` (TSV-M, Gargiulo et al. 2025), `iso_c` and
 * `iso_cts` (Marczak et al. 2025). Matrices ([out, in] tensors) are merged
 * through LAPACK, each factorization in the precision lm__svd_top's rule
 * picks (docs/methods/svd_family.md); every other tensor gets alpha * the
 * weighted mean of the task vectors, as the papers' code does for 1-D
 * parameters. Task vectors are multiplied by their model weights first. */
#include <cblas.h>
#include <float.h>
#include <math.h>
#include <string.h>

#include "linalg/linalg.h"
#include "linalg/whiten.h"
#include "core/sum_rule.h"
#include "strategies/embedding.h"

enum svd_method { TSV, ISO_C, ISO_CTS };

struct svd_state {
    lm_context *ctx;
    enum svd_method method;
    double alpha;
    double common_fraction; /* iso_cts */
    double tol;             /* svd_tolerance: precision rule, 0 = exact */
    bool randomized;
    int64_t power, oversample;
    lm_whiten whiten;
    double floor_c; /* whiten_floor: c of the rank-aware floor */
    struct lm__embedding_rule embedding; /* embedding_route */
};

/* The precision rule's tolerance (docs/methods/svd_family.md): each
 * factorization takes the cheapest route (Gram in f32, Gram in f64,
 * exact dgesdd) whose estimated relative error is within it. */
#define SVD_TOLERANCE_PARAM                                                 \
    {sizeof(lm_param_desc), "svd_tolerance", LM_PARAM_FLOAT, LM_SVD_TOL,    \
     0.0, 1e-2, NULL, "accepted estimated relative error of each "          \
     "factorization (f32/f64 Gram routes); 0 = exact f64 dgesdd only", 0}

static const lm_param_desc tsv_params[] = {
    {sizeof(lm_param_desc), "alpha", LM_PARAM_FLOAT, 1.0, 0.0, 10.0, NULL,
     "scale of the merged task vector (papers pick it on validation in "
     "(0, 3])", 0},
    {sizeof(lm_param_desc), "randomized", LM_PARAM_BOOL, 0.0, 0.0, 1.0, NULL,
     "per-task top-k SVDs by a randomized range finder whose rank grows "
     "until an a-posteriori error estimate is within svd_tolerance (exact "
     "route when it would not be cheaper)", 0},
    {sizeof(lm_param_desc), "power_iterations", LM_PARAM_INT, 2.0, 0.0, 10.0,
     NULL, "power iterations of the randomized SVD", 0},
    {sizeof(lm_param_desc), "oversample", LM_PARAM_INT, 0.0, 0.0, 4096.0,
     NULL, "extra random probes of the randomized SVD (0: max(16, k/2), "
     "accurate when the spectrum decays slowly around k)", 0},
    SVD_TOLERANCE_PARAM,
    LM__WHITEN_PARAMS_RANK_AWARE,
    LM__EMBEDDING_PARAMS("svd|mean|randomized",
                         "embeddings/heads: exact SVD (as other matrices), "
                         "alpha * weighted mean, or randomized top-k SVDs"),
};

/* Iso-C/CTS use every direction of the sum (a flat spectrum over all of
 * them), so a randomized top-k SVD has nothing to truncate: no
 * `randomized` embedding route. */
#define ISO_EMBEDDING_PARAMS                                                \
    LM__EMBEDDING_PARAMS("svd|mean", "embeddings/heads: SVD as other "      \
                         "matrices, or alpha * the weighted mean")

static const lm_param_desc iso_c_params[] = {
    {sizeof(lm_param_desc), "alpha", LM_PARAM_FLOAT, 1.0, 0.0, 10.0, NULL,
     "scale of the merged task vector", 0},
    SVD_TOLERANCE_PARAM,
    LM__WHITEN_PARAMS_RANK_AWARE,
    ISO_EMBEDDING_PARAMS,
};

/* No randomized option: the flattened spectrum gives every kept direction
 * the same weight, so approximate trailing directions would not be damped
 * as they are in tsv. */
static const lm_param_desc iso_cts_params[] = {
    {sizeof(lm_param_desc), "alpha", LM_PARAM_FLOAT, 1.0, 0.0, 10.0, NULL,
     "scale of the merged task vector", 0},
    {sizeof(lm_param_desc), "common_space_fraction", LM_PARAM_FLOAT, 0.8,
     0.0, 1.0, NULL, "fraction of the rank given to the common subspace", 0},
    SVD_TOLERANCE_PARAM,
    LM__WHITEN_PARAMS_RELEASED,
    ISO_EMBEDDING_PARAMS,
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
    if (st == LM_OK)
        st = lm_params_get_float(info->params, "svd_tolerance", &s->tol);
    if (st == LM_OK)
        st = lm__whiten_get(info->params, &s->whiten, &s->floor_c);
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
    static const char *const names[] = {"tsv", "iso_c", "iso_cts"};
    if (st == LM_OK)
        st = lm__embedding_rule_init(info->ctx, info->params, names[method],
                                     &s->embedding);
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
    if (!s)
        return;
    lm__embedding_rule_free(&s->embedding);
    lm_free(s->ctx, s);
}

/* n doubles, not cleared: for buffers every entry of which is written
 * before it is read (clearing tens of MB per tensor cost ~7 % of tsv's CPU
 * time at hidden 768). */
static double *uncleared(lm_context *ctx, size_t n)
{
    return n <= SIZE_MAX / sizeof(double) ? lm_alloc(ctx, n * sizeof(double))
                                          : NULL;
}

/* Top-k triplets of x (m x n): exact SVD truncated, or randomized. */
static lm_status top_k(const struct svd_state *s, lm_context *ctx,
                       const double *x, size_t m, size_t n, size_t k,
                       uint64_t seed, double *u, double *sv, double *vt,
                       lm_svd_route *route)
{
    size_t full = m < n ? m : n;
    /* A probe count that scales with k: with a fixed 16 extra probes the
     * k-th direction is poorly resolved when sigma_k+1 / sigma_k is close
     * to 1, as in task vectors with slowly decaying spectra. */
    size_t p = s->oversample ? (size_t)s->oversample : (k / 2 > 16 ? k / 2 : 16);
    if (s->randomized && k + p < full)
        return lm__svd_randomized_checked(ctx, x, m, n, k, p,
                                          (size_t)s->power, seed, s->tol, u,
                                          sv, vt, route, NULL);
    return lm__svd_top(ctx, x, m, n, k, s->tol, u, sv, vt, NULL, route);
}

/* Which factorization routes one tensor took, at LM_LOG_DEBUG (the tests
 * read it to check the precision rule's choices). */
static void log_routes(const lm_tensor_job *job, const char *what,
                       const lm_svd_route *routes, size_t count)
{
    size_t n[LM_SVD_ROUTES] = {0};
    for (size_t i = 0; i < count; i++)
        n[routes[i]]++;
    lm_log(job->ctx, LM_LOG_DEBUG,
           "tensor '%s': %s SVD routes: gram_f32 %zu, gram_f64 %zu, "
           "exact %zu, randomized %zu", job->name, what, n[LM_SVD_GRAM_F32],
           n[LM_SVD_GRAM_F64], n[LM_SVD_EXACT], n[LM_SVD_RANDOMIZED]);
}

/* The rank-aware polar factors' routes (Gram in f32 or f64, or the exact
 * SVD), at LM_LOG_DEBUG, worded apart from log_routes' lines. */
static void log_polar_routes(const lm_tensor_job *job,
                             const lm_svd_route *routes, size_t count)
{
    size_t n[LM_SVD_ROUTES] = {0};
    for (size_t i = 0; i < count; i++)
        n[routes[i]]++;
    lm_log(job->ctx, LM_LOG_DEBUG,
           "tensor '%s': rank-aware polar routes: f32 %zu, f64 %zu, "
           "svd %zu", job->name, n[LM_SVD_GRAM_F32], n[LM_SVD_GRAM_F64],
           n[LM_SVD_EXACT]);
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
static lm_status compose(lm_context *ctx, const double *U,
                         const double *sigma, const double *V, size_t m,
                         size_t n, size_t c, double scale, double *tmp,
                         double *out)
{
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < c; j++)
            tmp[i * c + j] = U[i * c + j] * sigma[j];
    return lm__gemm_blocked(ctx, false, true, m, n, c, scale, tmp, V, 0.0,
                            out);
}

/* Weighted task vectors in f64: x[t] = w_t * tau_t. */
double *lm__weighted_tasks(const lm_tensor_job *job)
{
    size_t n = job->numel, k = job->n_models;
    /* Every element is written below: no clearing pass. */
    double *x = n * k <= SIZE_MAX / sizeof(double)
                    ? lm_alloc(job->ctx, n * k * sizeof(double))
                    : NULL;
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
                        size_t n, lm_whiten whiten, double floor_c,
                        double *out)
{
    struct svd_state plain;
    memset(&plain, 0, sizeof(plain));
    plain.ctx = job->ctx;
    plain.method = TSV;
    plain.alpha = 1.0;
    plain.whiten = whiten;
    plain.floor_c = floor_c;
    return merge_tsv(&plain, job, x, m, n, out);
}

/* Rank-aware whitening's input precisions (linalg/whiten.h): each task's
 * rho_t = lm__input_precision(base, tau_t) into rho (T entries), and the
 * largest, which bounds any matrix built from several tasks. */
static double task_precisions(const lm_tensor_job *job, double *rho)
{
    double worst = 0;
    for (size_t t = 0; t < job->n_models; t++) {
        rho[t] = lm__input_precision(job->base, job->deltas[t], job->numel);
        worst = rho[t] > worst ? rho[t] : worst;
    }
    return worst;
}

/* The relative input precision of the weighted sum M = sum_t w_t tau_t:
 * FLT_EPSILON sqrt(sum_t w_t^2 (||base||^2 + ||base + tau_t||^2)) / ||M||
 * (one ulp on every input entry, independent across tasks). */
static double sum_precision(const lm_tensor_job *job, const double *sum)
{
    double in2 = 0, m2 = 0, b2 = 0;
    for (size_t i = 0; i < job->numel; i++) {
        double b = job->base ? (double)job->base[i] : 0.0;
        b2 += b * b;
        m2 += sum[i] * sum[i];
    }
    for (size_t t = 0; t < job->n_models; t++) {
        double w2 = 0, wt = job->weights[t];
        for (size_t i = 0; i < job->numel; i++) {
            double v = (job->base ? (double)job->base[i] : 0.0) +
                       (double)job->deltas[t][i];
            w2 += v * v;
        }
        in2 += wt * wt * (b2 + w2);
    }
    return m2 > 0 ? FLT_EPSILON * sqrt(in2 / m2) : 0.0;
}

/* Rank-aware: one block of triplets (columns [col, col + k) of U, m x
 * cols, and V, n x cols) keeps only the directions above its floor
 * (lm__whiten_keep); the others become zero columns, which the polar
 * factor ignores, so directions at their task's noise floor (beyond a
 * LoRA's rank, say) do not enter the concatenation. Returns the number
 * kept. */
static double drop_block(double *U, double *V, size_t m, size_t n,
                         size_t cols, size_t col, const double *sigma,
                         size_t k, double tau)
{
    double kept = 0;
    for (size_t j = col; j < col + k; j++) {
        if (lm__whiten_keep(sigma[j], tau)) {
            kept += 1;
            continue;
        }
        for (size_t i = 0; i < m; i++)
            U[i * cols + j] = 0;
        for (size_t i = 0; i < n; i++)
            V[i * cols + j] = 0;
    }
    return kept;
}

/* The per-task top-k triplets placed into shared concatenations: task t
 * owns columns [col0 + t k, col0 + (t+1) k) of U and V and those entries of
 * sigma, so tasks run in parallel without sharing anything they write. */
struct task_svds {
    const struct svd_state *s;
    const lm_tensor_job *job;
    const double *x;       /* the T matrices whose top-k we need */
    size_t m, n, k, cols, col0;
    double *U, *V, *sigma;
    lm_svd_route *routes; /* one per task */
};

/* Task t's k triplets into its columns of U, V and sigma. */
static void store(const struct task_svds *w, size_t t, const double *u,
                  const double *sv, const double *vt)
{
    size_t col = w->col0 + t * w->k;
    place(w->U, w->V, w->m, w->n, w->cols, col, u, vt, w->k);
    memcpy(w->sigma + col, sv, w->k * sizeof(double));
}

/* Top-k of xt (task t's matrix) into task t's columns. */
static lm_status svd_into(const struct task_svds *w, size_t t,
                          const double *xt)
{
    lm_context *ctx = w->job->ctx;
    size_t m = w->m, n = w->n, k = w->k;
    double *buf = uncleared(ctx, m * k + k + k * n); /* top_k writes all */
    if (!buf)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory for task %zu's SVD", t);
    double *u = buf, *sv = u + m * k, *vt = sv + k;
    lm_status st = top_k(w->s, ctx, xt, m, n, k, w->job->seed + t, u, sv, vt,
                         &w->routes[t]);
    if (st == LM_OK)
        store(w, t, u, sv, vt);
    lm_free(ctx, buf);
    return st;
}

static lm_status task_svd(void *arg, size_t t)
{
    const struct task_svds *w = arg;
    return svd_into(w, t, w->x + t * w->m * w->n);
}

static lm_status merge_tsv(const struct svd_state *s, const lm_tensor_job *job,
                           const double *x, size_t m, size_t n, double *out)
{
    size_t T = job->n_models, full = m < n ? m : n;
    size_t k = full / T ? full / T : 1, cols = k * T;
    lm_context *ctx = job->ctx;
    /* Each task writes its k columns of U, V and sigma (cols = k T), the
     * polar factors all of Up and Vp. */
    double *buf = uncleared(ctx, m * cols * 2 + n * cols * 2 + cols);
    if (!buf)
        return LM_ERR_OUT_OF_MEMORY;
    double *U = buf, *Up = U + m * cols, *V = Up + m * cols, *Vp = V + n * cols,
           *sigma = Vp + n * cols;
    lm_svd_route *routes = lm__calloc(ctx, T, sizeof(*routes));
    if (!routes) {
        lm_free(ctx, buf);
        return LM_ERR_OUT_OF_MEMORY;
    }
    struct task_svds w = {s, job, x, m, n, k, cols, 0, U, V, sigma, routes};
    lm_status st = lm__parallel_for(ctx, T, task_svd, &w);
    if (st == LM_OK)
        log_routes(job, "per-task", routes, T);
    lm_free(ctx, routes);
    double eps_cat = 0;
    if (st == LM_OK && s->whiten == LM_WHITEN_RANK_AWARE) {
        /* Task t's triplets against its own floor (sigma_1 of task t). */
        double *rho = lm__calloc(ctx, T, sizeof(double));
        if (!rho)
            st = LM_ERR_OUT_OF_MEMORY;
        else
            eps_cat = s->floor_c * task_precisions(job, rho);
        for (size_t t = 0; st == LM_OK && t < T; t++)
            drop_block(U, V, m, n, cols, t * k, sigma, k,
                       lm__whiten_floor(sigma[t * k], s->floor_c * rho[t],
                                        m, n, s->tol));
        lm_free(ctx, rho);
    }
    lm_svd_route polar_routes[2];
    if (st == LM_OK)
        st = lm__polar_pair_whiten(ctx, s->whiten, eps_cat, s->tol, s->tol,
                                   U, m, cols, Up, NULL, V, n, cols, Vp, NULL,
                                   polar_routes);
    if (st == LM_OK && s->whiten == LM_WHITEN_RANK_AWARE)
        log_polar_routes(job, polar_routes, 2);
    if (st == LM_OK)
        st = compose(ctx, Up, sigma, Vp, m, n, cols, s->alpha, U, out);
    lm_free(ctx, buf);
    return st;
}

/* The weighted sum of the task vectors in f64 (a workspace: free with
 * lm__workspace_free), straight from their f32 deltas: Iso-C needs only
 * the sum, so the T tasks are never widened side by side (T x m x n
 * doubles of fresh memory). Same operations in the same order as summing
 * lm__weighted_tasks' rows. */
static double *weighted_task_sum(const lm_tensor_job *job)
{
    size_t n = job->numel, T = job->n_models;
    double *sum = n <= SIZE_MAX / sizeof(double)
                      ? lm__workspace_alloc(job->ctx, n * sizeof(double))
                      : NULL;
    if (!sum)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        double acc = 0.0;
        for (size_t t = 0; t < T; t++)
            acc += job->weights[t] * (double)job->deltas[t][i];
        sum[i] = acc;
    }
    return sum;
}

/* The inputs' precision relative to the sum from its sums of squares
 * (sum_precision's formula). */
static double sum_precision_of(const lm_tensor_job *job,
                               const struct lm__sum_stats *st)
{
    double in2 = 0;
    for (size_t t = 0; t < job->n_models; t++)
        in2 += job->weights[t] * job->weights[t] * (st->b2 + st->w2[t]);
    return st->m2 > 0 ? FLT_EPSILON * sqrt(in2 / st->m2) : 0.0;
}

/* weighted_task_sum (a workspace: free with lm__workspace_free) and, in
 * the same pass over the deltas, sum_precision(job, sum) into *eps: the
 * same accumulations in the same order, so the same bits, without reading
 * base and deltas a second time. */
static double *weighted_task_sum_eps(const lm_tensor_job *job, double *eps)
{
    size_t n = job->numel, T = job->n_models;
    double *w2 = lm__calloc(job->ctx, T, sizeof(double));
    double *sum = w2 && n <= SIZE_MAX / sizeof(double)
                      ? lm__workspace_alloc(job->ctx, n * sizeof(double))
                      : NULL;
    if (!sum) {
        lm_free(job->ctx, w2);
        return NULL;
    }
    double b2 = 0, m2 = 0;
    for (size_t i = 0; i < n; i++) {
        double b = job->base ? (double)job->base[i] : 0.0, acc = 0.0;
        b2 += b * b;
        for (size_t t = 0; t < T; t++) {
            double d = (double)job->deltas[t][i], v = b + d;
            acc += job->weights[t] * d;
            w2[t] += v * v;
        }
        sum[i] = acc;
        m2 += acc * acc;
    }
    *eps = sum_precision_of(job, &(struct lm__sum_stats){b2, m2, w2});
    lm_free(job->ctx, w2);
    return sum;
}

/* The merged tensor in f64 (out), as the other methods give it, except
 * with svd_tolerance > 0 (svd_merge's `direct`): then job->out is written
 * straight, the polar factor formed in row blocks, and out is NULL. */
static lm_status merge_iso_c(const struct svd_state *s,
                             const lm_tensor_job *job, size_t m, size_t n,
                             double *out, double *sum, double eps)
{
    size_t full = m < n ? m : n;
    lm_context *ctx = job->ctx;
    if (s->whiten == LM_WHITEN_RANK_AWARE) {
        /* The floor on M has no factorization term (M is summed, not
         * factored); the polar factor takes the Gram route when its
         * estimate is within svd_tolerance (0: the exact SVD), and with
         * svd_tolerance > 0 is written to job->out as the released one
         * (out NULL). */
        double mean = 0;
        lm_svd_route route;
        eps *= s->floor_c;
        lm_status st = out ? lm__polar_whiten(ctx, sum, m, n, eps, 0.0,
                                              s->tol, out, &mean, &route)
                           : lm__polar_whiten_f32(ctx, sum, m, n, eps, 0.0,
                                                  s->tol, s->alpha, job->out,
                                                  &mean, &route);
        if (st == LM_OK)
            log_polar_routes(job, &route, 1);
        for (size_t i = 0; out && st == LM_OK && i < m * n; i++)
            out[i] *= s->alpha * mean;
        return st;
    }
    if (s->tol > 0) { /* U V^T = polar(M), through M's Gram matrix */
        lm_svd_route route;
        return lm__polar_scaled_f32(ctx, sum, m, n, s->alpha, job->out, NULL,
                                    &route);
    }
    double *buf = lm__calloc(ctx, m * full + full + full * n, sizeof(double));
    if (!buf)
        return LM_ERR_OUT_OF_MEMORY;
    double *u = buf, *sv = u + m * full, *vt = sv + full;
    lm_status st = lm__svd(ctx, sum, m, n, u, sv, vt);
    if (st == LM_OK) {
        double mean = 0;
        for (size_t i = 0; i < full; i++)
            mean += sv[i];
        mean /= (double)full;
        st = lm__gemm_blocked(ctx, false, false, m, n, full, s->alpha * mean,
                              u, vt, 0.0, out);
    }
    lm_free(ctx, buf);
    return st;
}

/* Iso-C on one matrix given the weighted sum (a workspace the caller
 * frees) and the inputs' precision eps (rank-aware only): job->out
 * written, directly (svd_tolerance > 0) or through an f64 result. */
static lm_status iso_c_tensor(const struct svd_state *s,
                              const lm_tensor_job *job, double *sum,
                              double eps)
{
    size_t m = (size_t)job->shape[0], n = (size_t)job->shape[1];
    bool direct = s->tol > 0;
    double *out = direct ? NULL : uncleared(job->ctx, job->numel);
    lm_status st = out || direct ? merge_iso_c(s, job, m, n, out, sum, eps)
                                 : LM_ERR_OUT_OF_MEMORY;
    if (st == LM_OK && !direct)
        lm__f64_to_f32(out, job->out, job->numel);
    lm_free(job->ctx, out);
    return st;
}

/* Task t's directions outside the common left subspace Uc (U's first kc
 * columns): the top `per` triplets of (I - Uc Uc^T) tau_t. */
struct specific_svds {
    struct task_svds w;
    size_t kc;
    /* When m <= n the sum's SVD has all m left vectors, and those after
     * the first kc span exactly the complement of Uc: columns kc.. of
     * `left` (m x m). NULL otherwise. */
    const double *left;
};

/* With an orthonormal basis Q (m x r) of the complement, the projected
 * task is Q C with C = Q^T tau_t (r x n): C's SVD a s b^T gives the exact
 * SVD (Q a) s b^T at a fraction of the cost, since r = m - kc is small. */
static lm_status specific_svd_reduced(const struct specific_svds *sp, size_t t)
{
    const struct task_svds *w = &sp->w;
    lm_context *ctx = w->job->ctx;
    size_t m = w->m, n = w->n, kc = sp->kc, r = m - kc, k = w->k;
    const double *xt = w->x + t * m * n, *q = sp->left + kc;
    double *buf = lm__calloc(ctx, r * n + r * k + k + k * n + m * k,
                             sizeof(double));
    if (!buf)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory projecting task %zu", t);
    double *c = buf, *a = c + r * n, *sv = a + r * k, *vt = sv + k,
           *u = vt + k * n;
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)r, (int)n,
                (int)m, 1.0, q, (int)m, xt, (int)n, 0.0, c, (int)n);
    lm_status st = top_k(w->s, ctx, c, r, n, k, w->job->seed + t, a, sv, vt,
                         &w->routes[t]);
    if (st == LM_OK) {
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)k,
                    (int)r, 1.0, q, (int)m, a, (int)k, 0.0, u, (int)k);
        lm__svd_canonical_signs(u, m, k, vt, n);
        store(w, t, u, sv, vt);
    }
    lm_free(ctx, buf);
    return st;
}

static lm_status specific_svd(void *arg, size_t t)
{
    struct specific_svds *sp = arg;
    if (sp->left)
        return specific_svd_reduced(sp, t);
    struct task_svds *w = &sp->w;
    lm_context *ctx = w->job->ctx;
    size_t m = w->m, n = w->n, kc = sp->kc;
    const double *xt = w->x + t * m * n;
    double *proj = lm__calloc(ctx, m * n + kc * n, sizeof(double));
    if (!proj)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory projecting task %zu", t);
    double *coef = proj + m * n;
    memcpy(proj, xt, m * n * sizeof(double));
    if (kc) { /* coef = Uc^T x_t (kc x n); proj -= Uc coef */
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)kc, (int)n,
                    (int)m, 1.0, w->U, (int)w->cols, xt, (int)n, 0.0, coef,
                    (int)n);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n,
                    (int)kc, -1.0, w->U, (int)w->cols, coef, (int)n, 1.0, proj,
                    (int)n);
    }
    lm_status st = svd_into(w, t, proj);
    lm_free(ctx, proj);
    return st;
}

/* The common and task-specific sizes as the official code
 * (github.com/danielm1405/iso-merging, src/utils/iso.py) computes them:
 * k_c0 = floor(f k), the task-specific total (k - k_c0) / T rounded to the
 * nearest integer (Python's round: ties to even) times T, and k_c takes
 * the rest, so k_c + T per = k and no direction is dropped (flooring both
 * dropped up to T - 1: ViT-B, T = 8 kept 766 of 768). Where the rounding
 * would exceed k (only when k_c0 < T / 2; the official code fails there)
 * per is floor(k / T). */
static void iso_cts_split(double fraction, size_t full, size_t T, size_t *kc,
                          size_t *per)
{
    size_t kc0 = (size_t)floor(fraction * (double)full);
    if (kc0 > full)
        kc0 = full;
    size_t rest = full - kc0, q = rest / T, r = rest % T;
    if (2 * r > T || (2 * r == T && q % 2 == 1))
        q++;
    if (q * T > full)
        q = full / T;
    *per = q;
    *kc = full - q * T;
}

static lm_status merge_iso_cts(const struct svd_state *s,
                               const lm_tensor_job *job, const double *x,
                               size_t m, size_t n, double *out)
{
    size_t T = job->n_models, full = m < n ? m : n, kc, per;
    iso_cts_split(s->common_fraction, full, T, &kc, &per);
    size_t cols = kc + per * T;
    lm_context *ctx = job->ctx;
    /* cols == full >= 2: svd_merge routes only matrices here. */
    /* M's top kk = max(kc, 1) triplets (u: m x kk, vt: kk x n) and, for
     * wide layers, all its left vectors (left: m x m). */
    size_t kk = kc ? kc : 1;
    double *buf = lm__calloc(ctx, m * n + m * kk + full + kk * n +
                                      (m <= n ? m * m : 0) + 2 * m * cols +
                                      2 * n * cols + cols,
                             sizeof(double));
    lm_svd_route *routes = lm__calloc(ctx, T + 1, sizeof(*routes));
    if (!buf || !routes) {
        lm_free(ctx, buf);
        lm_free(ctx, routes);
        return LM_ERR_OUT_OF_MEMORY;
    }
    double *sum = buf, *u = sum + m * n, *sv = u + m * kk, *vt = sv + full,
           *left = vt + kk * n, *U = left + (m <= n ? m * m : 0),
           *Up = U + m * cols, *V = Up + m * cols, *Vp = V + n * cols,
           *sigma = Vp + n * cols;
    for (size_t t = 0; t < T; t++)
        for (size_t i = 0; i < m * n; i++)
            sum[i] += x[t * m * n + i];
    lm_status st = lm__svd_top(ctx, sum, m, n, kk, s->tol, u, sv, vt,
                               m <= n ? left : NULL, &routes[T]);
    if (st == LM_OK && kc) {
        /* The common subspace: M's top kc triplets. */
        for (size_t i = 0; i < m; i++)
            memcpy(U + i * cols, u + i * kk, kc * sizeof(double));
        for (size_t j = 0; j < kc; j++)
            for (size_t i = 0; i < n; i++)
                V[i * cols + j] = vt[j * n + i];
        memcpy(sigma, sv, kc * sizeof(double));
    }
    /* Rank-aware: the common directions above M's floor (a prefix: sv is
     * descending). Only those are projected out of the tasks: the others
     * are rounding noise of M (beyond its rank: an arbitrary basis of its
     * null space), and projecting a task onto their complement would make
     * its specific directions just as arbitrary. */
    double eps_m = 0;
    size_t kc_proj = kc;
    if (st == LM_OK && s->whiten == LM_WHITEN_RANK_AWARE) {
        eps_m = s->floor_c * sum_precision(job, sum);
        double tau = lm__whiten_floor(sv[0], eps_m, m, n, s->tol);
        kc_proj = 0;
        while (kc_proj < kc && lm__whiten_keep(sv[kc_proj], tau))
            kc_proj++;
    }
    if (st == LM_OK && per) {
        struct specific_svds sp = {{s, job, x, m, n, per, cols, kc, U, V,
                                    sigma, routes},
                                   kc_proj, m <= n ? left : NULL};
        st = lm__parallel_for(ctx, T, specific_svd, &sp);
    }
    if (st == LM_OK)
        log_routes(job, "sum and task-specific", per ? routes : routes + T,
                   per ? T + 1 : 1);
    /* Rank-aware: the common triplets against M's floor, task t's against
     * its own (||tau_t||_F bounds its sigma_1: its projected spectrum
     * alone may be all noise); the concatenation against the least
     * precise input. The mean singular value runs over the effective
     * number of directions. */
    double eps_cat = 0, count = (double)cols;
    if (st == LM_OK && s->whiten == LM_WHITEN_RANK_AWARE) {
        double *rho = lm__calloc(ctx, T, sizeof(double));
        if (!rho)
            st = LM_ERR_OUT_OF_MEMORY;
        if (st == LM_OK) {
            eps_cat = s->floor_c * task_precisions(job, rho);
            for (size_t t = 0; t < T; t++)
                rho[t] *= s->floor_c;
            eps_cat = eps_m > eps_cat ? eps_m : eps_cat;
            count = kc ? drop_block(U, V, m, n, cols, 0, sigma, kc,
                                     lm__whiten_floor(sv[0], eps_m, m, n,
                                                      s->tol))
                       : 0.0;
        }
        for (size_t t = 0; st == LM_OK && per && t < T; t++) {
            double f2 = 0;
            for (size_t i = 0; i < m * n; i++)
                f2 += x[t * m * n + i] * x[t * m * n + i];
            count += drop_block(U, V, m, n, cols, kc + t * per, sigma, per,
                                 lm__whiten_floor(sqrt(f2), rho[t], m, n,
                                                  s->tol));
        }
        lm_free(ctx, rho);
    }
    lm_svd_route polar_routes[2];
    if (st == LM_OK)
        st = lm__polar_pair_whiten(ctx, s->whiten, eps_cat, s->tol, s->tol,
                                   U, m, cols, Up, NULL, V, n, cols, Vp, NULL,
                                   polar_routes);
    if (st == LM_OK && s->whiten == LM_WHITEN_RANK_AWARE)
        log_polar_routes(job, polar_routes, 2);
    if (st == LM_OK) {
        double mean = 0;
        for (size_t i = 0; i < cols; i++)
            mean += sigma[i];
        mean = count > 0 ? mean / count : 0.0;
        st = lm__gemm_blocked(ctx, false, true, m, n, cols, s->alpha * mean,
                              Up, Vp, 0.0, out);
    }
    lm_free(ctx, routes);
    lm_free(ctx, buf);
    return st;
}

/* A failure's message names the tensor (svd_merge's and the sum rule's). */
static lm_status tensor_error(const lm_tensor_job *job, lm_status st)
{
    if (st == LM_ERR_OUT_OF_MEMORY)
        lm_context_set_error(job->ctx, st, "out of memory merging '%s' "
                             "(%lld x %lld, %zu tasks)", job->name,
                             (long long)job->shape[0],
                             (long long)job->shape[1], job->n_models);
    else if (st != LM_OK && !strstr(lm_context_error(job->ctx), job->name)) {
        char msg[LM_ERROR_CAPACITY];
        lm_context_copy_error(job->ctx, msg, sizeof(msg));
        lm_context_set_error(job->ctx, st, "tensor '%s': %s", job->name, msg);
    }
    return st;
}

/* A matrix (both sides at least 2) not sent to the weighted mean: the
 * tensors svd_merge merges by an SVD. */
static bool svd_routed(const lm_tensor_job *job,
                       enum lm__embedding_route route)
{
    return job->ndim == 2 && job->shape[0] >= 2 && job->shape[1] >= 2 &&
           route != LM_EMBEDDING_MEAN;
}

static lm_status svd_merge(void *state, const lm_tensor_job *job, void *user)
{
    (void)user;
    const struct svd_state *s = state;
    size_t n_el = job->numel, T = job->n_models;
    enum lm__embedding_route route = lm__embedding_route_for(&s->embedding,
                                                             job);
    /* The randomized route: these options with randomized top-k SVDs (a
     * shallow copy, only read). */
    struct svd_state randomized;
    if (route == LM_EMBEDDING_RANDOMIZED) {
        randomized = *s;
        randomized.randomized = true;
        s = &randomized;
    }
    if (!svd_routed(job, route)) {
        double wsum = 0;
        for (size_t t = 0; t < T; t++)
            wsum += job->weights[t];
        lm__weighted_sum(job, wsum != 0 ? s->alpha / wsum : 0.0);
        return LM_OK;
    }
    size_t m = (size_t)job->shape[0], n = (size_t)job->shape[1];
    lm_status st;
    if (s->method == ISO_C) {
        /* Iso-C needs only the sum (and, rank-aware, the inputs'
         * precision, in the same pass). */
        double eps = 0;
        double *sum = s->whiten == LM_WHITEN_RANK_AWARE
                          ? weighted_task_sum_eps(job, &eps)
                          : weighted_task_sum(job);
        st = sum ? iso_c_tensor(s, job, sum, eps) : LM_ERR_OUT_OF_MEMORY;
        lm__workspace_free(job->ctx, sum);
        return tensor_error(job, st);
    }
    double *x = lm__weighted_tasks(job);
    double *out = uncleared(job->ctx, n_el); /* written */
    st = x && out ? LM_OK : LM_ERR_OUT_OF_MEMORY;
    if (st == LM_OK) {
        if (s->method == TSV)
            st = merge_tsv(s, job, x, m, n, out);
        else
            st = merge_iso_cts(s, job, x, m, n, out);
    }
    if (st == LM_OK)
        lm__f64_to_f32(out, job->out, n_el);
    lm_free(job->ctx, x);
    lm_free(job->ctx, out);
    return tensor_error(job, st);
}

/* Iso-C's sum rule (core/sum_rule.h): the matrices svd_merge would merge
 * by the SVD route, from a sum the core forms from the inputs. */
static bool iso_c_wants_sum(void *state, const lm_tensor_job *job)
{
    const struct svd_state *s = state;
    return s->method == ISO_C &&
           svd_routed(job, lm__embedding_route_for(&s->embedding, job));
}

static lm_status iso_c_sum_merge(void *state, const lm_tensor_job *job,
                                 double *sum,
                                 const struct lm__sum_stats *stats)
{
    const struct svd_state *s = state;
    double eps = s->whiten == LM_WHITEN_RANK_AWARE
                     ? sum_precision_of(job, stats)
                     : 0.0;
    return tensor_error(job, iso_c_tensor(s, job, sum, eps));
}

lm_status lm__svd_sum_rules_register(lm_context *ctx)
{
    static const struct lm__sum_rule iso_c_rule = {iso_c_wants_sum,
                                                   iso_c_sum_merge};
    return lm__strategy_set_sum_rule(ctx, "iso_c", &iso_c_rule);
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
