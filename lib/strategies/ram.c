/* `ram`, `ramplus_tl` (Reinforced Agent Merging, arXiv:2601.13572): an
 * entry changed (|tau| > epsilon) by exactly one model keeps that model's
 * value, one changed by several gets their mean, an unchanged one stays
 * at the base. RAM+ (tensor-local, as mergekit implements it) scales each
 * model's unique entries by 1 + r * clip(shared/unique, 0, alpha), its
 * counts of shared and unique entries in this tensor. mergekit's
 * semantics and defaults (github.com/arcee-ai/mergekit,
 * mergekit/merge_methods/ram.py); docs/methods/mergekit_sparse.md.
 * Per-model weights are not used, as in mergekit. */
#include <math.h>

#include "strategies/sparsify.h"

static const lm_param_desc ram_params[] = {
    {sizeof(lm_param_desc), "epsilon", LM_PARAM_FLOAT, 1e-5, 0.0, HUGE_VAL,
     NULL, "entries with |tau| <= epsilon count as unchanged", LM__PER_TENSOR},
};

static const lm_param_desc ramplus_params[] = {
    {sizeof(lm_param_desc), "r", LM_PARAM_FLOAT, 0.1, -HUGE_VAL, HUGE_VAL,
     NULL, "rescaling strength of unique entries", LM__PER_TENSOR},
    {sizeof(lm_param_desc), "alpha", LM_PARAM_FLOAT, 0.2, 0.0, HUGE_VAL,
     NULL, "bound on the shared/unique ratio", LM__PER_TENSOR},
    {sizeof(lm_param_desc), "epsilon", LM_PARAM_FLOAT, 1e-5, 0.0, HUGE_VAL,
     NULL, "entries with |tau| <= epsilon count as unchanged", LM__PER_TENSOR},
};

struct ram_state {
    lm_context *ctx;
    const lm_params *params;
    bool plus;
};

static lm_status ram_init_common(const lm_strategy_init_info *info,
                                 void **state, bool plus)
{
    struct ram_state *s = lm__calloc(info->ctx, 1, sizeof(*s));
    if (!s)
        return LM_ERR_OUT_OF_MEMORY;
    s->ctx = info->ctx;
    s->params = info->params;
    s->plus = plus;
    *state = s;
    return LM_OK;
}

static lm_status ram_init(const lm_strategy_init_info *info, void **state,
                          void *user)
{
    (void)user;
    return ram_init_common(info, state, false);
}

static lm_status ramplus_init(const lm_strategy_init_info *info, void **state,
                              void *user)
{
    (void)user;
    return ram_init_common(info, state, true);
}

static lm_status ram_merge(void *state, const lm_tensor_job *job, void *user)
{
    (void)user;
    const struct ram_state *s = state;
    const lm_params *p = lm__job_params(job, s->params);
    double epsilon, r = 0.0, alpha = 0.0;
    LM_TRY(lm_params_get_float(p, "epsilon", &epsilon));
    if (s->plus) {
        LM_TRY(lm_params_get_float(p, "r", &r));
        LM_TRY(lm_params_get_float(p, "alpha", &alpha));
    }
    size_t n = job->numel, T = job->n_models;
    float eps = (float)epsilon; /* mergekit compares in f32 */
    float *lambda = lm__calloc(job->ctx, T + 1, sizeof(float));
    size_t *count = lm__calloc(job->ctx, n + 1, sizeof(size_t));
    if (!lambda || !count) {
        lm_free(job->ctx, lambda);
        lm_free(job->ctx, count);
        return lm_context_set_error(job->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory merging '%s' (ram)",
                                    job->name);
    }
    /* Models changing each entry. */
    for (size_t t = 0; t < T; t++)
        for (size_t i = 0; i < n; i++)
            count[i] += fabsf(job->deltas[t][i]) > eps;
    for (size_t t = 0; t < T; t++) {
        lambda[t] = 1.0f;
        if (!s->plus)
            continue;
        /* rho_t = shared_t / max(unique_t, epsilon), in f32 as mergekit. */
        size_t shared = 0, unique = 0;
        for (size_t i = 0; i < n; i++) {
            if (!(fabsf(job->deltas[t][i]) > eps))
                continue;
            shared += count[i] > 1;
            unique += count[i] == 1;
        }
        float rho = (float)shared / fmaxf((float)unique, eps);
        float clipped = fminf(fmaxf(rho, 0.0f), (float)alpha);
        lambda[t] = 1.0f + (float)r * clipped;
    }
    for (size_t i = 0; i < n; i++) {
        double acc = 0.0;
        for (size_t t = 0; t < T && count[i]; t++) {
            float v = job->deltas[t][i];
            if (!(fabsf(v) > eps))
                continue;
            acc += count[i] == 1 ? (double)v * lambda[t]
                                 : (double)v / (double)count[i];
        }
        job->out[i] = (float)acc;
    }
    lm_free(job->ctx, lambda);
    lm_free(job->ctx, count);
    return LM_OK;
}

static void ram_fini(void *state, void *user)
{
    (void)user;
    struct ram_state *s = state;
    if (s)
        lm_free(s->ctx, s);
}
const lm_strategy_vtable lm__ram_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "ram",
    .description = "RAM: unique changes kept, shared changes averaged",
    .params = ram_params,
    .n_params = sizeof(ram_params) / sizeof(ram_params[0]),
    .init = ram_init,
    .merge_tensor = ram_merge,
    .fini = ram_fini,
};

const lm_strategy_vtable lm__ramplus_tl_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "ramplus_tl",
    .description = "RAM+ (tensor-local): unique changes rescaled by their "
                   "shared/unique ratio",
    .params = ramplus_params,
    .n_params = sizeof(ramplus_params) / sizeof(ramplus_params[0]),
    .init = ramplus_init,
    .merge_tensor = ram_merge,
    .fini = ram_fini,
};
