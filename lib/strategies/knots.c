/* `knots` (Stoica et al. 2025): align task updates (typically LoRA) in the
 * SVD basis of their concatenation, [dW_1 | ... | dW_T] = U S [V_1^T ...
 * V_T^T], merge the aligned blocks S V_t^T elementwise with TIES or task
 * arithmetic, and map back: dW = lambda * U merged. Non-matrix tensors get
 * lambda * the weighted sum of task vectors. */
#include <string.h>

#include "linalg/linalg.h"
#include "strategies/sign_merge.h"

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
};

struct knots_state {
    lm_context *ctx;
    bool ties;
    double density, lambda;
    struct lm__sign_merge_opts opts;
};

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
    *state = s;
    return LM_OK;
}

static void knots_fini(void *state, void *user)
{
    (void)user;
    struct knots_state *s = state;
    if (s)
        lm_free(s->ctx, s);
}

static lm_status knots_merge(void *state, const lm_tensor_job *job,
                             void *user)
{
    (void)user;
    const struct knots_state *s = state;
    size_t T = job->n_models;
    if (job->ndim != 2 || job->shape[0] < 2 || job->shape[1] < 2) {
        lm__weighted_sum(job, s->lambda);
        return LM_OK;
    }
    size_t m = (size_t)job->shape[0], n = (size_t)job->shape[1];
    size_t cols = n * T, k = m < cols ? m : cols;
    lm_context *ctx = job->ctx;
    /* X (m x Tn), U (m x k), S (k), Vt (k x Tn), blocks (T x k x n), the
     * merged block (k x n) and an f64 result (m x n). */
    double *buf = lm__calloc(ctx, m * cols + m * k + k + k * cols + k * n +
                                      m * n,
                             sizeof(double));
    float *blocks = lm__calloc(ctx, T * k * n + k * n + 1, sizeof(float));
    const float **rows = lm__calloc(ctx, T, sizeof(*rows));
    if (!buf || !blocks || !rows) {
        lm_free(ctx, buf);
        lm_free(ctx, blocks);
        lm_free(ctx, (void *)rows);
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "knots: out of memory for '%s' (%zu x "
                                    "%zu, %zu tasks)", job->name, m, n, T);
    }
    double *x = buf, *u = x + m * cols, *sv = u + m * k, *vt = sv + k,
           *merged = vt + k * cols, *res = merged + k * n;
    for (size_t i = 0; i < m; i++)
        for (size_t t = 0; t < T; t++)
            for (size_t j = 0; j < n; j++)
                x[i * cols + t * n + j] = job->deltas[t][i * n + j];
    lm_status st = lm__svd(ctx, x, m, cols, u, sv, vt);
    if (st == LM_OK) {
        float *scratch = blocks + T * k * n;
        size_t keep = lm__density_count(s->density, k * n);
        for (size_t t = 0; t < T; t++) {
            float *b = blocks + t * k * n;
            for (size_t r = 0; r < k; r++)
                for (size_t j = 0; j < n; j++)
                    b[r * n + j] = (float)(sv[r] * vt[r * cols + t * n + j]);
            if (s->ties)
                lm__keep_top_k(b, k * n, keep, scratch);
            rows[t] = b;
        }
        float *mb = scratch; /* reuse: trimming is done */
        if (s->ties) {
            lm__sign_merge(rows, job->weights, T, k * n, &s->opts, mb);
        } else {
            for (size_t i = 0; i < k * n; i++) {
                double acc = 0;
                for (size_t t = 0; t < T; t++)
                    acc += job->weights[t] * (double)rows[t][i];
                mb[i] = (float)acc;
            }
        }
        lm__f32_to_f64(mb, merged, k * n);
        lm__gemm(false, false, m, n, k, s->lambda, u, merged, 0.0, res);
        lm__f64_to_f32(res, job->out, m * n);
    } else if (!strstr(lm_context_error(ctx), job->name)) {
        char msg[LM_ERROR_CAPACITY];
        lm_context_copy_error(ctx, msg, sizeof(msg));
        lm_context_set_error(ctx, st, "tensor '%s': %s", job->name, msg);
    }
    lm_free(ctx, buf);
    lm_free(ctx, blocks);
    lm_free(ctx, (void *)rows);
    return st;
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
};
