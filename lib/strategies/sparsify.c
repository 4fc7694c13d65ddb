/* mergekit's sparsifiers (magnitude_outliers, della_magprune), its L1
 * rescale and its task-arithmetic combination step. Semantics from
 * github.com/arcee-ai/mergekit, mergekit/sparsify.py and
 * mergekit/merge_methods/generalized_task_arithmetic.py; our own code. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/l1_norm.h"
#include "core/simd.h"
#include "strategies/sparsify.h"

const lm_params *lm__job_params(const lm_tensor_job *job,
                                const lm_params *plan)
{
    /* Built-ins always get a job with the per-tensor view. */
    return job->params ? job->params : plan;
}

lm_status lm__task_param(const lm_tensor_job *job, const lm_params *plan,
                         const char *name, size_t t, double *out)
{
    return lm_params_get_model_float(lm__job_params(job, plan), name, t, out);
}

void lm__rescale_l1(const float *orig, float *masked, size_t n)
{
    /* The fused path sums in the same order (core/l1_norm.h). */
    double scale = lm__l1_rescale_factor(lm__l1_norm(orig, n),
                                         lm__l1_norm(masked, n));
    if (scale == 1.0)
        return; /* x * 1.0 is x: nothing to do */
    for (size_t i = 0; i < n; i++)
        masked[i] = (float)(masked[i] * scale);
}

void lm__magnitude_outliers(float *x, size_t n, double density, double gamma,
                            float *scratch, float *tmp)
{
    if (density >= 1.0 || n == 0)
        return;
    /* Python's int() of a non-negative double: truncation. */
    size_t target = (size_t)(density * (double)n);
    size_t n_top = (size_t)(gamma * (double)n);
    if (n_top > n - target)
        n_top = n - target; /* fewer outliers so that `target` stay */
    size_t n_bot = n - target - n_top;
    /* Top-k sets are nested (equal magnitudes: lower index ranks higher),
     * so the band is top-(n - n_bot) minus top-(n_top). */
    memcpy(tmp, x, n * sizeof(float));
    lm__keep_top_k(tmp, n, n_top, scratch);
    lm__keep_top_k(x, n, n - n_bot, scratch);
    for (size_t i = 0; i < n; i++)
        if (tmp[i] != 0.0f)
            x[i] = 0.0f;
}

struct ranked {
    float mag;
    size_t index;
};

/* Ascending magnitude; among equal magnitudes the higher index first, so
 * the lower index ranks higher (the tie rule of lm__keep_top_k). */
static int by_rank(const void *pa, const void *pb)
{
    const struct ranked *a = pa, *b = pb;
    if (a->mag != b->mag)
        return a->mag < b->mag ? -1 : 1;
    return a->index > b->index ? -1 : a->index < b->index;
}

lm_status lm__della_probs(lm_context *ctx, const float *x, int ndim,
                          const int64_t *shape, size_t n, double density,
                          double epsilon, float *p)
{
    /* Rows run along dimension 1 as in mergekit (argsort(dim=1)); a 0-D or
     * 1-D tensor is one row. Row r = (o, k) holds x[o, :, k]. */
    size_t outer = 1, len = n, inner = 1;
    if (ndim >= 2) {
        outer = (size_t)shape[0];
        len = (size_t)shape[1];
        inner = (len && outer) ? n / (outer * len) : 0;
    }
    if (n == 0 || len == 0)
        return LM_OK;
    struct ranked *row = lm__calloc(ctx, len, sizeof(*row));
    if (!row)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory ranking a DELLA row");
    /* f32 arithmetic in mergekit's order: (d - e) + (rank_norm * 2) * e. */
    float lo = (float)(density - epsilon), eps = (float)epsilon;
    for (size_t o = 0; o < outer; o++) {
        for (size_t k = 0; k < inner; k++) {
            size_t first = o * len * inner + k;
            for (size_t j = 0; j < len; j++) {
                row[j].mag = fabsf(x[first + j * inner]);
                row[j].index = j;
            }
            qsort(row, len, sizeof(*row), by_rank);
            for (size_t r = 0; r < len; r++) {
                /* A row of one entry has no spread (mergekit divides 0 by
                 * 0 there); it gets the middle probability, density. */
                float norm = len > 1 ? (float)r / (float)(len - 1) : 0.5f;
                p[first + row[r].index * inner] = lo + norm * 2.0f * eps;
            }
        }
    }
    lm_free(ctx, row);
    return LM_OK;
}

lm_status lm__della_mask(lm_context *ctx, float *x, int ndim,
                         const int64_t *shape, size_t n, double density,
                         double epsilon, uint64_t seed, size_t task)
{
    float *p = lm__calloc(ctx, n ? n : 1, sizeof(float));
    if (!p)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory for DELLA probabilities");
    lm_status st = lm__della_probs(ctx, x, ndim, shape, n, density, epsilon, p);
    if (st == LM_OK) {
        uint64_t stream = lm__mix64(seed ^ lm__mix64(0xde11a000ULL + task));
        for (size_t i = 0; i < n; i++) {
            double u = (double)(lm__mix64(stream ^ lm__mix64(i)) >> 11) /
                       9007199254740992.0;
            if (!(u < (double)p[i]))
                x[i] = 0.0f;
        }
    }
    lm_free(ctx, p);
    return st;
}

void lm__gta_combine(const struct lm__simd *simd, const float *const *rows,
                     const double *weights, size_t n_tasks, size_t n,
                     bool elect, bool normalize, double lambda, float *out)
{
    if (elect) {
        struct lm__sign_merge_opts o = {
            .consensus = LM_CONSENSUS_SUM,
            .divide = normalize ? LM_DIVIDE_WEIGHTS : LM_DIVIDE_NONE,
            .weights_in_election = true,
        };
        simd->sign_merge(rows, weights, n_tasks, n, &o, out);
        for (size_t i = 0; i < n; i++)
            out[i] = (float)(lambda * out[i]);
        return;
    }
    double div = 1.0;
    if (normalize) {
        double wsum = 0.0;
        for (size_t t = 0; t < n_tasks; t++)
            wsum += weights[t];
        if (fabs(wsum) >= 1e-8)
            div = wsum;
    }
    simd->weighted_sum(rows, weights, n_tasks, n, lambda, div, out);
}

lm_status lm__gta_init(const lm_strategy_init_info *info, void **state,
                       bool elect, lm__sparsify_fn sparsify)
{
    struct lm__gta_state *s = lm__calloc(info->ctx, 1, sizeof(*s));
    if (!s)
        return LM_ERR_OUT_OF_MEMORY;
    s->ctx = info->ctx;
    s->params = info->params;
    s->elect = elect;
    s->sparsify = sparsify;
    *state = s;
    return LM_OK;
}

lm_status lm__gta_merge(void *state, const lm_tensor_job *job, void *user)
{
    (void)user;
    const struct lm__gta_state *s = state;
    const lm_params *p = lm__job_params(job, s->params);
    double lambda;
    int normalize, rescale;
    LM_TRY(lm_params_get_float(p, "lambda", &lambda));
    LM_TRY(lm_params_get_bool(p, "normalize", &normalize));
    LM_TRY(lm_params_get_bool(p, "rescale", &rescale));
    size_t n = job->numel, k = job->n_models;
    /* k sparsified copies, then two scratch rows. */
    float *buf = lm__calloc(job->ctx, n * (k + 2) + 1, sizeof(float));
    const float **rows = lm__calloc(job->ctx, k ? k : 1, sizeof(*rows));
    lm_status st = LM_OK;
    if (!buf || !rows)
        st = lm_context_set_error(job->ctx, LM_ERR_OUT_OF_MEMORY,
                                  "out of memory sparsifying '%s'", job->name);
    for (size_t t = 0; t < k && st == LM_OK; t++) {
        float *x = buf + n * t;
        memcpy(x, job->deltas[t], n * sizeof(float));
        st = s->sparsify(job, s->params, t, rescale != 0, x, buf + n * k,
                         buf + n * (k + 1));
        rows[t] = x;
    }
    if (st == LM_OK)
        lm__gta_combine(lm__simd_pick(), rows, job->weights, k, n, s->elect,
                        normalize != 0, lambda, job->out);
    lm_free(job->ctx, buf);
    lm_free(job->ctx, (void *)rows);
    return st;
}

void lm__gta_fini(void *state, void *user)
{
    (void)user;
    struct lm__gta_state *s = state;
    if (s)
        lm_free(s->ctx, s);
}
