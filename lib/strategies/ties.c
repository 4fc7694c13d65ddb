/* `ties` (Yadav et al. 2023): trim each task vector to its top `density`
 * entries by magnitude, elect a sign per entry, average the entries that
 * agree with it, scale by `lambda`. The variant options reproduce the
 * paper, PEFT and mergekit (docs/methods/ties_dare.md). */
#include <string.h>

#include "strategies/sign_merge.h"

#define SIGN_MERGE_PARAMS                                                   \
    {sizeof(lm_param_desc), "consensus", LM_PARAM_CHOICE, 0, 0, 0,          \
     "sum|count", "elect the sign of the sum (paper) or the majority", 0},     \
    {sizeof(lm_param_desc), "divide", LM_PARAM_CHOICE, 0, 0, 0,             \
     "count|weights",                                                       \
     "disjoint mean over agreeing tasks (paper, PEFT) or divide by their "  \
     "weights (mergekit normalize)", 0},                                       \
    {sizeof(lm_param_desc), "weights_in_election", LM_PARAM_BOOL, 0.0, 0.0, \
     1.0, NULL, "weight task vectors before the sign election (mergekit)", 0}

static const lm_param_desc ties_params[] = {
    {sizeof(lm_param_desc), "density", LM_PARAM_FLOAT, 0.2, 1e-6, 1.0, NULL,
     "fraction of each task vector's entries kept, by magnitude", 0},
    {sizeof(lm_param_desc), "lambda", LM_PARAM_FLOAT, 1.0, -10.0, 10.0, NULL,
     "scale of the merged task vector", 0},
    SIGN_MERGE_PARAMS,
};

static const lm_param_desc dare_ties_params[] = {
    {sizeof(lm_param_desc), "density", LM_PARAM_FLOAT, 0.1, 1e-6, 1.0, NULL,
     "keep probability of each entry (1 - drop rate)", 0},
    {sizeof(lm_param_desc), "lambda", LM_PARAM_FLOAT, 1.0, -10.0, 10.0, NULL,
     "scale of the merged task vector", 0},
    {sizeof(lm_param_desc), "rescale", LM_PARAM_BOOL, 1.0, 0.0, 1.0, NULL,
     "divide kept entries by density", 0},
    SIGN_MERGE_PARAMS,
};

static const lm_param_desc dare_linear_params[] = {
    {sizeof(lm_param_desc), "density", LM_PARAM_FLOAT, 0.1, 1e-6, 1.0, NULL,
     "keep probability of each entry (1 - drop rate)", 0},
    {sizeof(lm_param_desc), "lambda", LM_PARAM_FLOAT, 1.0, -10.0, 10.0, NULL,
     "scale of the merged task vector", 0},
    {sizeof(lm_param_desc), "rescale", LM_PARAM_BOOL, 1.0, 0.0, 1.0, NULL,
     "divide kept entries by density", 0},
    {sizeof(lm_param_desc), "normalize", LM_PARAM_BOOL, 0.0, 0.0, 1.0, NULL,
     "divide the weighted sum by the sum of weights", 0},
};

enum sparsify { TRIM_MAGNITUDE, DROP_RANDOM };

struct sparse_state {
    lm_context *ctx;
    enum sparsify how;
    bool elect; /* sign election + disjoint merge, else weighted sum */
    double density, lambda, scale;
    bool rescale;
    struct lm__sign_merge_opts opts;
};

static lm_status init_common(const lm_strategy_init_info *info, void **state,
                             enum sparsify how, bool elect)
{
    struct sparse_state *s = lm__calloc(info->ctx, 1, sizeof(*s));
    if (!s)
        return LM_ERR_OUT_OF_MEMORY;
    s->ctx = info->ctx;
    s->how = how;
    s->elect = elect;
    s->scale = 1.0;
    lm_status st = lm_params_get_float(info->params, "density", &s->density);
    if (st == LM_OK)
        st = lm_params_get_float(info->params, "lambda", &s->lambda);
    if (st == LM_OK && how == DROP_RANDOM) {
        int rescale;
        st = lm_params_get_bool(info->params, "rescale", &rescale);
        s->rescale = rescale != 0;
    }
    if (st == LM_OK && elect)
        st = lm__sign_merge_params(info->params, &s->opts);
    if (st == LM_OK && !elect) {
        int normalize;
        st = lm_params_get_bool(info->params, "normalize", &normalize);
        double wsum = 0;
        for (size_t t = 0; t < info->n_models; t++)
            wsum += info->weights[t];
        if (st == LM_OK && normalize) {
            if (wsum == 0)
                st = lm_context_set_error(info->ctx, LM_ERR_OUT_OF_RANGE,
                                          "dare_linear: the weights sum to 0; "
                                          "cannot normalize");
            else
                s->scale = 1.0 / wsum;
        }
    }
    if (st != LM_OK) {
        lm_free(info->ctx, s);
        return st;
    }
    *state = s;
    return LM_OK;
}

static lm_status ties_init(const lm_strategy_init_info *i, void **s, void *u)
{
    (void)u;
    return init_common(i, s, TRIM_MAGNITUDE, true);
}

static lm_status dare_ties_init(const lm_strategy_init_info *i, void **s,
                                void *u)
{
    (void)u;
    return init_common(i, s, DROP_RANDOM, true);
}

static lm_status dare_linear_init(const lm_strategy_init_info *i, void **s,
                                  void *u)
{
    (void)u;
    return init_common(i, s, DROP_RANDOM, false);
}

static lm_status sparse_merge(void *state, const lm_tensor_job *job,
                              void *user)
{
    (void)user;
    const struct sparse_state *s = state;
    size_t n = job->numel, k = job->n_models;
    /* Sparsified copies of every task vector, then one scratch row. */
    float *buf = lm__calloc(job->ctx, n * (k + 1) + 1, sizeof(float));
    const float **rows = lm__calloc(job->ctx, k ? k : 1, sizeof(*rows));
    if (!buf || !rows) {
        lm_free(job->ctx, buf);
        lm_free(job->ctx, (void *)rows);
        return lm_context_set_error(job->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory sparsifying '%s'",
                                    job->name);
    }
    float *scratch = buf + n * k;
    size_t keep = lm__density_count(s->density, n);
    for (size_t t = 0; t < k; t++) {
        float *x = buf + n * t;
        memcpy(x, job->deltas[t], n * sizeof(float));
        if (s->how == TRIM_MAGNITUDE)
            lm__keep_top_k(x, n, keep, scratch);
        else
            lm__dare_mask(x, n, s->density, s->rescale, job->seed, t);
        rows[t] = x;
    }
    if (s->elect) {
        lm__sign_merge(rows, job->weights, k, n, &s->opts, job->out);
        for (size_t i = 0; i < n; i++)
            job->out[i] = (float)(s->lambda * job->out[i]);
    } else {
        for (size_t i = 0; i < n; i++) {
            double acc = 0;
            for (size_t t = 0; t < k; t++)
                acc += job->weights[t] * (double)rows[t][i];
            job->out[i] = (float)(s->lambda * s->scale * acc);
        }
    }
    lm_free(job->ctx, buf);
    lm_free(job->ctx, (void *)rows);
    return LM_OK;
}

static void sparse_fini(void *state, void *user)
{
    (void)user;
    struct sparse_state *s = state;
    if (s)
        lm_free(s->ctx, s);
}

#define VTABLE(var, nm, desc, tbl, initfn)                                  \
    const lm_strategy_vtable var = {                                        \
        .struct_size = sizeof(lm_strategy_vtable),                          \
        .abi_version = LM_STRATEGY_ABI_VERSION,                             \
        .name = nm,                                                         \
        .description = desc,                                                \
        .params = tbl,                                                      \
        .n_params = sizeof(tbl) / sizeof(tbl[0]),                           \
        .init = initfn,                                                     \
        .merge_tensor = sparse_merge,                                       \
        .fini = sparse_fini,                                                \
    }

VTABLE(lm__ties_strategy, "ties",
       "TIES: trim by magnitude, elect signs, disjoint mean", ties_params,
       ties_init);
VTABLE(lm__dare_ties_strategy, "dare_ties",
       "DARE random drop and rescale, then TIES sign election",
       dare_ties_params, dare_ties_init);
VTABLE(lm__dare_linear_strategy, "dare_linear",
       "DARE random drop and rescale, then a weighted sum",
       dare_linear_params, dare_linear_init);
