/* `sce` (Wan et al., "FuseChat: Knowledge Fusion of Chat Models",
 * arXiv:2408.07990, the Select-Calculate-Erase merge): keep the positions
 * whose task-vector values vary most across the models (`select_topk`),
 * weight each task vector by its mean square (normalised over the
 * models), erase entries against the elected sign, and take the weighted
 * mean of the rest. mergekit's semantics and default
 * (github.com/arcee-ai/mergekit, mergekit/merge_methods/sce.py);
 * docs/methods/mergekit_sparse.md. Per-model weights are not used, as in
 * mergekit: the method computes its own. */
#include <math.h>
#include <string.h>

#include "strategies/sparsify.h"

static const lm_param_desc sce_params[] = {
    {sizeof(lm_param_desc), "select_topk", LM_PARAM_FLOAT, 1.0, 0.0, 1.0,
     NULL, "fraction of varying positions kept, by variance (1 keeps all)",
     LM__PER_TENSOR},
};

static lm_status sce_init(const lm_strategy_init_info *info, void **state,
                          void *user)
{
    (void)user;
    *state = (void *)info->params; /* read per tensor */
    return LM_OK;
}

/* Zero the positions outside the top int(f32(nonzero) * f32(topk)) by
 * population variance across the tasks (nonzero: positions whose variance
 * is not 0), as mergekit's sce_mask; `var` holds n floats of scratch. */
static void select_by_variance(float *const *tv, size_t T, size_t n,
                               double topk, float *var, float *scratch)
{
    size_t nonzero = 0;
    for (size_t i = 0; i < n; i++) {
        double mean = 0.0, v = 0.0;
        for (size_t t = 0; t < T; t++)
            mean += tv[t][i];
        mean /= (double)T;
        for (size_t t = 0; t < T; t++)
            v += (tv[t][i] - mean) * (tv[t][i] - mean);
        var[i] = (float)(v / (double)T);
        nonzero += var[i] != 0.0f;
    }
    /* mergekit multiplies a count tensor by the fraction: f32. */
    size_t k = topk <= 0.0 ? 0 : (size_t)((float)nonzero * (float)topk);
    lm__keep_top_k(var, n, k, scratch); /* ties: the lower index stays */
    for (size_t i = 0; i < n; i++)
        if (var[i] == 0.0f)
            for (size_t t = 0; t < T; t++)
                tv[t][i] = 0.0f;
}

static lm_status sce_merge(void *state, const lm_tensor_job *job, void *user)
{
    (void)user;
    double topk;
    LM_TRY(lm_params_get_float(lm__job_params(job, state), "select_topk",
                               &topk));
    size_t n = job->numel, T = job->n_models;
    if (T == 0)
        return LM_OK;
    float *buf = lm__calloc(job->ctx, n * (T + 2) + 1, sizeof(float));
    float **tv = lm__calloc(job->ctx, T, sizeof(*tv));
    double *w = lm__calloc(job->ctx, T, sizeof(double));
    if (!buf || !tv || !w) {
        lm_free(job->ctx, buf);
        lm_free(job->ctx, tv);
        lm_free(job->ctx, w);
        return lm_context_set_error(job->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory merging '%s' (sce)",
                                    job->name);
    }
    for (size_t t = 0; t < T; t++) {
        tv[t] = buf + n * t;
        memcpy(tv[t], job->deltas[t], n * sizeof(float));
    }
    if (topk < 1.0)
        select_by_variance(tv, T, n, topk, buf + n * T, buf + n * (T + 1));
    /* Calculate: w_t = mean(tv_t^2) / sum_s mean(tv_s^2); uniform when the
     * sum is below 1e-6 (mergekit's threshold). */
    double wsum = 0.0;
    for (size_t t = 0; t < T; t++) {
        double acc = 0.0;
        for (size_t i = 0; i < n; i++)
            acc += (double)tv[t][i] * tv[t][i];
        w[t] = n ? acc / (double)n : 0.0;
        wsum += w[t];
    }
    for (size_t t = 0; t < T; t++)
        w[t] = fabs(wsum) < 1e-6 ? 1.0 / (double)T : w[t] / wsum;
    /* Erase: the sign of the unweighted sum elects (0 elects +); entries
     * of the other sign or zero drop out of the weighted mean. */
    for (size_t i = 0; i < n; i++) {
        double vote = 0.0, num = 0.0, den = 0.0;
        for (size_t t = 0; t < T; t++)
            vote += tv[t][i];
        for (size_t t = 0; t < T; t++) {
            float v = tv[t][i];
            if (v == 0.0f || (v > 0.0f) != (vote >= 0.0))
                continue;
            num += w[t] * v;
            den += w[t];
        }
        job->out[i] = (float)(num / (den < 1e-6 ? 1e-6 : den));
    }
    lm_free(job->ctx, buf);
    lm_free(job->ctx, tv);
    lm_free(job->ctx, w);
    return LM_OK;
}

const lm_strategy_vtable lm__sce_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "sce",
    .description = "SCE: select by variance, weight by mean square, erase "
                   "against the elected sign",
    .params = sce_params,
    .n_params = sizeof(sce_params) / sizeof(sce_params[0]),
    .init = sce_init,
    .merge_tensor = sce_merge,
};
