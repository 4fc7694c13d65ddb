/* `knots` (Stoica et al. 2025): align task updates (typically LoRA) in the
 * SVD basis of their concatenation, [dW_1 | ... | dW_T] = U S [V_1^T ...
 * V_T^T], merge the aligned blocks S V_t^T elementwise with TIES or task
 * arithmetic, and map back: dW = lambda * U merged. Non-matrix tensors get
 * lambda * the weighted sum of task vectors. */
#include <string.h>

#include "linalg/linalg.h"
#include "strategies/embedding.h"
#include "strategies/global_topk.h"
#include "strategies/sign_merge.h"

/* The official code keeps only directions with singular value above this
 * (task_merger.py apply_svd: s > 1e-5); scope=model follows it. */
#define KNOTS_SUPPORT 1e-5

static const lm_param_desc knots_params[] = {
    {sizeof(lm_param_desc), "merge", LM_PARAM_CHOICE, 0, 0, 0, "ties|ta",
     "how the aligned blocks are merged", 0},
    {sizeof(lm_param_desc), "density", LM_PARAM_FLOAT, 0.2, 1e-6, 1.0, NULL,
     "ties: fraction of each aligned block kept, by magnitude", 0},
    {sizeof(lm_param_desc), "lambda", LM_PARAM_FLOAT, 1.0, -10.0, 10.0, NULL,
     "scale of the merged update (KnOTS-TIES best: 0.6)", 0},
    {sizeof(lm_param_desc), "consensus", LM_PARAM_CHOICE, 0, 0, 0, "sum|count",
     "ties: elect the sign of the sum or the majority", 0},
    {sizeof(lm_param_desc), "divide", LM_PARAM_CHOICE, 0, 0, 0,
     "count|weights", "ties: disjoint mean over agreeing tasks or by weights", 0},
    {sizeof(lm_param_desc), "weights_in_election", LM_PARAM_BOOL, 0.0, 0.0,
     1.0, NULL, "ties: weight the blocks before the sign election", 0},
    {sizeof(lm_param_desc), "scope", LM_PARAM_CHOICE, 0, 0, 0, "tensor|model",
     "ties: trim each tensor's blocks, or each task's blocks of every matrix "
     "flattened together (the paper's code; two extra passes)", 0},
    LM__EMBEDDING_PARAMS("svd|mean", "embeddings/heads: aligned by the "
                         "joint SVD as other matrices, or lambda * the "
                         "weighted sum"),
};

struct knots_state {
    lm_context *ctx;
    bool ties;
    double density, lambda;
    struct lm__sign_merge_opts opts;
    /* scope=model (with merge=ties): per-task density copies and the
     * whole-model thresholds over the aligned blocks. */
    bool model_scope;
    double *densities;
    struct lm__global_topk topk;
    struct lm__embedding_rule embedding; /* embedding_route */
};

static void knots_fini(void *state, void *user);

static lm_status init_model_scope(const lm_strategy_init_info *info,
                                  struct knots_state *s)
{
    const char *scope;
    LM_TRY(lm_params_get_choice(info->params, "scope", &scope));
    if (!s->ties || strcmp(scope, "model") != 0)
        return LM_OK;
    s->model_scope = true;
    s->densities = lm__calloc(info->ctx, info->n_models ? info->n_models : 1,
                              sizeof(double));
    if (!s->densities)
        return LM_ERR_OUT_OF_MEMORY;
    for (size_t t = 0; t < info->n_models; t++)
        s->densities[t] = s->density;
    return lm__global_topk_init(info->ctx, &s->topk, info->n_models);
}

static lm_status knots_init(const lm_strategy_init_info *info, void **state,
                            void *user)
{
    (void)user;
    struct knots_state *s = lm__calloc(info->ctx, 1, sizeof(*s));
    if (!s)
        return LM_ERR_OUT_OF_MEMORY;
    s->ctx = info->ctx;
    const char *merge;
    lm_status st = lm_params_get_choice(info->params, "merge", &merge);
    if (st == LM_OK)
        st = lm_params_get_float(info->params, "density", &s->density);
    if (st == LM_OK)
        st = lm_params_get_float(info->params, "lambda", &s->lambda);
    if (st == LM_OK)
        st = lm__sign_merge_params(info->params, &s->opts);
    if (st != LM_OK) {
        lm_free(info->ctx, s);
        return st;
    }
    s->ties = strcmp(merge, "ties") == 0;
    st = lm__embedding_rule_init(info->ctx, info->params, "knots",
                                 &s->embedding);
    if (st == LM_OK)
        st = init_model_scope(info, s);
    if (st != LM_OK) {
        knots_fini(s, user);
        return st;
    }
    *state = s;
    return LM_OK;
}

static void knots_fini(void *state, void *user)
{
    (void)user;
    struct knots_state *s = state;
    if (!s)
        return;
    lm__global_topk_free(s->ctx, &s->topk);
    lm__embedding_rule_free(&s->embedding);
    lm_free(s->ctx, s->densities);
    lm_free(s->ctx, s);
}

/* One matrix tensor's joint SVD and aligned blocks: X = [dW_1 | ... |
 * dW_T] (m x Tn) = U S Vt, block t = S Vt[:, t n .. (t+1) n) (k x n). */
struct aligned {
    size_t m, n, T, k, cols;
    size_t support; /* leading directions with singular value > 1e-5 */
    double *buf, *u, *sv, *vt, *merged, *res;
    float *blocks;  /* T blocks, then a k x n scratch block */
    const float **rows;
};

static void aligned_free(lm_context *ctx, struct aligned *a)
{
    lm_free(ctx, a->buf);
    lm_free(ctx, a->blocks);
    lm_free(ctx, (void *)a->rows);
}

static lm_status aligned_blocks(const lm_tensor_job *job, struct aligned *a)
{
    lm_context *ctx = job->ctx;
    size_t T = job->n_models;
    size_t m = (size_t)job->shape[0], n = (size_t)job->shape[1];
    size_t cols = n * T, k = m < cols ? m : cols;
    *a = (struct aligned){m, n, T, k, cols, 0, NULL, NULL, NULL, NULL, NULL,
                          NULL, NULL, NULL};
    /* X (m x Tn), U (m x k), S (k), Vt (k x Tn), the merged block (k x n)
     * and an f64 result (m x n). */
    a->buf = lm__calloc(ctx, m * cols + m * k + k + k * cols + k * n + m * n,
                        sizeof(double));
    a->blocks = lm__calloc(ctx, T * k * n + k * n + 1, sizeof(float));
    a->rows = lm__calloc(ctx, T, sizeof(*a->rows));
    if (!a->buf || !a->blocks || !a->rows) {
        aligned_free(ctx, a);
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "knots: out of memory for '%s' (%zu x "
                                    "%zu, %zu tasks)", job->name, m, n, T);
    }
    double *x = a->buf;
    a->u = x + m * cols;
    a->sv = a->u + m * k;
    a->vt = a->sv + k;
    a->merged = a->vt + k * cols;
    a->res = a->merged + k * n;
    for (size_t i = 0; i < m; i++)
        for (size_t t = 0; t < T; t++)
            for (size_t j = 0; j < n; j++)
                x[i * cols + t * n + j] = job->deltas[t][i * n + j];
    lm_status st = lm__svd(ctx, x, m, cols, a->u, a->sv, a->vt);
    if (st != LM_OK) {
        if (!strstr(lm_context_error(ctx), job->name)) {
            char msg[LM_ERROR_CAPACITY];
            lm_context_copy_error(ctx, msg, sizeof(msg));
            lm_context_set_error(ctx, st, "tensor '%s': %s", job->name, msg);
        }
        aligned_free(ctx, a);
        return st;
    }
    while (a->support < k && a->sv[a->support] > KNOTS_SUPPORT)
        a->support++;
    for (size_t t = 0; t < T; t++) {
        float *b = a->blocks + t * k * n;
        for (size_t r = 0; r < k; r++)
            for (size_t j = 0; j < n; j++)
                b[r * n + j] = (float)(a->sv[r] * a->vt[r * cols + t * n + j]);
        a->rows[t] = b;
    }
    return LM_OK;
}

/* Merged through the joint SVD: matrices, except embeddings routed to
 * the weighted sum. */
static bool is_matrix(const struct knots_state *s, const lm_tensor_job *job)
{
    return job->ndim == 2 && job->shape[0] >= 2 && job->shape[1] >= 2 &&
           lm__embedding_route_for(&s->embedding, job) != LM_EMBEDDING_MEAN;
}

static unsigned knots_passes(void *state, void *user)
{
    (void)user;
    const struct knots_state *s = state;
    return s->model_scope ? LM__GLOBAL_TOPK_PASSES : 0;
}

/* scope=model: count each task's supported blocks (the official code's
 * flattened s V_t of every SVD'd matrix; other tensors are not in it). */
static lm_status knots_prepare(void *state, const lm_tensor_job *job,
                               void *user)
{
    (void)user;
    struct knots_state *s = state;
    if (!is_matrix(s, job))
        return LM_OK;
    struct aligned a;
    LM_TRY(aligned_blocks(job, &a));
    lm_status st = LM_OK;
    for (size_t t = 0; t < a.T && st == LM_OK; t++)
        st = lm__global_topk_add(job->ctx, &s->topk, t, a.rows[t],
                                 a.support * a.n);
    aligned_free(job->ctx, &a);
    return st;
}

static lm_status knots_prepared(void *state, void *user)
{
    (void)user;
    struct knots_state *s = state;
    lm__global_topk_pass_done(&s->topk, s->densities);
    return LM_OK;
}

static lm_status knots_merge(void *state, const lm_tensor_job *job,
                             void *user)
{
    (void)user;
    const struct knots_state *s = state;
    if (!is_matrix(s, job)) {
        lm__weighted_sum(job, s->lambda);
        return LM_OK;
    }
    struct aligned a;
    LM_TRY(aligned_blocks(job, &a));
    size_t T = a.T, k = a.k, n = a.n;
    float *scratch = a.blocks + T * k * n;
    size_t keep = lm__density_count(s->density, k * n);
    for (size_t t = 0; s->ties && t < T; t++) {
        float *b = a.blocks + t * k * n;
        if (s->model_scope) {
            /* Unsupported directions are dropped, as the official code
             * drops them from U and V. */
            lm__global_topk_trim(&s->topk, t, b, a.support * n);
            memset(b + a.support * n, 0, (k - a.support) * n * sizeof(float));
        } else {
            lm__keep_top_k(b, k * n, keep, scratch);
        }
    }
    float *mb = scratch; /* reuse: trimming is done */
    if (s->ties) {
        lm__sign_merge(a.rows, job->weights, T, k * n, &s->opts, mb);
    } else {
        for (size_t i = 0; i < k * n; i++) {
            double acc = 0;
            for (size_t t = 0; t < T; t++)
                acc += job->weights[t] * (double)a.rows[t][i];
            mb[i] = (float)acc;
        }
    }
    lm__f32_to_f64(mb, a.merged, k * n);
    lm__gemm(false, false, a.m, n, k, s->lambda, a.u, a.merged, 0.0, a.res);
    lm__f64_to_f32(a.res, job->out, a.m * n);
    aligned_free(job->ctx, &a);
    return LM_OK;
}

const lm_strategy_vtable lm__knots_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "knots",
    .description = "KnOTS: align (LoRA) updates by a joint SVD, merge the "
                   "aligned pieces with TIES or TA",
    .params = knots_params,
    .n_params = sizeof(knots_params) / sizeof(knots_params[0]),
    .init = knots_init,
    .merge_tensor = knots_merge,
    .fini = knots_fini,
    .prepare_tensor = knots_prepare,
    .prepared = knots_prepared,
    .prepare_passes = knots_passes,
};
