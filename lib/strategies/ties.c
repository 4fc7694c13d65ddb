/* `ties` (Yadav et al. 2023): trim each task vector to its top `density`
 * entries by magnitude, elect a sign per entry, average the entries that
 * agree with it, scale by `lambda`. The variant options reproduce the
 * paper, PEFT and mergekit (docs/methods/ties_dare.md). */
#include <string.h>

#include "core/simd.h"
#include "core/sparse_rule.h"

#include "strategies/global_topk.h"
#include "strategies/sparsify.h"

#define SIGN_MERGE_PARAMS                                                   \
    {sizeof(lm_param_desc), "consensus", LM_PARAM_CHOICE, 0, 0, 0,          \
     "sum|count", "elect the sign of the sum (paper) or the majority", 0},  \
    {sizeof(lm_param_desc), "divide", LM_PARAM_CHOICE, 0, 0, 0,             \
     "count|weights|none",                                                  \
     "disjoint mean over agreeing tasks (paper, PEFT), divide by their "    \
     "weights (mergekit normalize=true) or not at all (normalize=false)", 0}, \
    {sizeof(lm_param_desc), "weights_in_election", LM_PARAM_BOOL, 0.0, 0.0, \
     1.0, NULL, "weight task vectors before the sign election (mergekit)", \
     LM__PER_TENSOR}

static const lm_param_desc ties_params[] = {
    {sizeof(lm_param_desc), "density", LM_PARAM_FLOAT, 0.2, 1e-6, 1.0, NULL,
     "fraction of each task vector's entries kept, by magnitude",
     LM__PER_MODEL},
    {sizeof(lm_param_desc), "lambda", LM_PARAM_FLOAT, 1.0, -10.0, 10.0, NULL,
     "scale of the merged task vector", LM__PER_TENSOR},
    {sizeof(lm_param_desc), "rescale", LM_PARAM_BOOL, 0.0, 0.0, 1.0, NULL,
     "rescale each trimmed task vector to its L1 norm before (mergekit)",
     LM__PER_TENSOR},
    SIGN_MERGE_PARAMS,
    {sizeof(lm_param_desc), "scope", LM_PARAM_CHOICE, 0, 0, 0,
     "tensor|model",
     "trim each tensor to its top density (mergekit) or each task over the "
     "whole model flattened (the paper's code; two extra passes)", 0},
};

#define RESCALE_MODE_PARAM                                                  \
    {sizeof(lm_param_desc), "rescale_mode", LM_PARAM_CHOICE, 0, 0, 0,       \
     "density|l1",                                                          \
     "with rescale: divide kept entries by density (paper) or restore the " \
     "task vector's L1 norm (mergekit 0.1+)", 0}

static const lm_param_desc dare_ties_params[] = {
    {sizeof(lm_param_desc), "density", LM_PARAM_FLOAT, 0.1, 1e-6, 1.0, NULL,
     "keep probability of each entry (1 - drop rate)", LM__PER_MODEL},
    {sizeof(lm_param_desc), "lambda", LM_PARAM_FLOAT, 1.0, -10.0, 10.0, NULL,
     "scale of the merged task vector", LM__PER_TENSOR},
    {sizeof(lm_param_desc), "rescale", LM_PARAM_BOOL, 1.0, 0.0, 1.0, NULL,
     "rescale kept entries (how: rescale_mode)", LM__PER_TENSOR},
    RESCALE_MODE_PARAM,
    SIGN_MERGE_PARAMS,
};

static const lm_param_desc dare_linear_params[] = {
    {sizeof(lm_param_desc), "density", LM_PARAM_FLOAT, 0.1, 1e-6, 1.0, NULL,
     "keep probability of each entry (1 - drop rate)", LM__PER_MODEL},
    {sizeof(lm_param_desc), "lambda", LM_PARAM_FLOAT, 1.0, -10.0, 10.0, NULL,
     "scale of the merged task vector", LM__PER_TENSOR},
    {sizeof(lm_param_desc), "rescale", LM_PARAM_BOOL, 1.0, 0.0, 1.0, NULL,
     "rescale kept entries (how: rescale_mode)", LM__PER_TENSOR},
    RESCALE_MODE_PARAM,
    {sizeof(lm_param_desc), "normalize", LM_PARAM_BOOL, 0.0, 0.0, 1.0, NULL,
     "divide the weighted sum by the sum of weights (|sum| < 1e-8: by 1)",
     LM__PER_TENSOR},
};

enum sparsify { TRIM_MAGNITUDE, DROP_RANDOM };

/* Everything is read per tensor (per-tensor and per-model values). */
struct sparse_state {
    lm_context *ctx;
    const lm_params *params;
    enum sparsify how;
    bool elect; /* sign election + disjoint merge, else weighted sum */
    /* ties with scope=model: each task's density and whole-model
     * threshold (global_topk.h). */
    bool model_scope;
    double *density;
    struct lm__global_topk topk;
};

static void sparse_fini(void *state, void *user);

/* scope=model: one density per task for the whole model. */
static lm_status init_model_scope(const lm_strategy_init_info *info,
                                  struct sparse_state *s)
{
    const char *scope;
    LM_TRY(lm_params_get_choice(info->params, "scope", &scope));
    if (strcmp(scope, "model") != 0)
        return LM_OK;
    s->model_scope = true;
    s->density = lm__calloc(info->ctx, info->n_models ? info->n_models : 1,
                            sizeof(double));
    if (!s->density)
        return LM_ERR_OUT_OF_MEMORY;
    for (size_t t = 0; t < info->n_models; t++)
        LM_TRY(lm_params_get_model_float(info->params, "density", t,
                                         &s->density[t]));
    return lm__global_topk_init(info->ctx, &s->topk, info->n_models);
}

static lm_status init_common(const lm_strategy_init_info *info, void **state,
                             enum sparsify how, bool elect)
{
    struct sparse_state *s = lm__calloc(info->ctx, 1, sizeof(*s));
    if (!s)
        return LM_ERR_OUT_OF_MEMORY;
    s->ctx = info->ctx;
    s->params = info->params;
    s->how = how;
    s->elect = elect;
    *state = s;
    return LM_OK;
}

static lm_status ties_init(const lm_strategy_init_info *i, void **s, void *u)
{
    LM_TRY(init_common(i, s, TRIM_MAGNITUDE, true));
    lm_status st = init_model_scope(i, *s);
    if (st != LM_OK) {
        sparse_fini(*s, u);
        *s = NULL;
    }
    return st;
}

static unsigned ties_passes(void *state, void *user)
{
    (void)user;
    const struct sparse_state *s = state;
    return s->model_scope ? LM__GLOBAL_TOPK_PASSES : 0;
}

/* Count every task's entries of this tensor towards its whole-model
 * threshold. A density set for this tensor alone cannot apply to a
 * whole-model trim: refused rather than ignored. */
static lm_status ties_prepare(void *state, const lm_tensor_job *job,
                              void *user)
{
    (void)user;
    struct sparse_state *s = state;
    for (size_t t = 0; t < job->n_models; t++) {
        double density;
        LM_TRY(lm__task_param(job, s->params, "density", t, &density));
        if (density != s->density[t])
            return lm_context_set_error(
                job->ctx, LM_ERR_INVALID_ARGUMENT,
                "ties: scope=model trims each task with one density over the "
                "whole model, but tensor '%s' sets model %zu's density to %g "
                "(model-wide %g); use scope=tensor for per-tensor densities",
                job->name, t, density, s->density[t]);
        LM_TRY(lm__global_topk_add(job->ctx, &s->topk, t, job->deltas[t],
                                   job->numel));
    }
    return LM_OK;
}

static lm_status ties_prepared(void *state, void *user)
{
    (void)user;
    struct sparse_state *s = state;
    lm__global_topk_pass_done(&s->topk, s->density);
    return LM_OK;
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

struct tensor_opts {
    double lambda;
    bool rescale, l1, normalize;
    struct lm__sign_merge_opts sign;
};

static lm_status read_opts(const struct sparse_state *s, const lm_params *p,
                           struct tensor_opts *o)
{
    int flag;
    memset(o, 0, sizeof(*o));
    LM_TRY(lm_params_get_float(p, "lambda", &o->lambda));
    LM_TRY(lm_params_get_bool(p, "rescale", &flag));
    o->rescale = flag != 0;
    o->l1 = s->how == TRIM_MAGNITUDE; /* ties' rescale is mergekit's */
    if (s->how == DROP_RANDOM) {
        const char *mode;
        LM_TRY(lm_params_get_choice(p, "rescale_mode", &mode));
        o->l1 = strcmp(mode, "l1") == 0;
    }
    if (s->elect)
        return lm__sign_merge_params(p, &o->sign);
    LM_TRY(lm_params_get_bool(p, "normalize", &flag));
    o->normalize = flag != 0;
    return LM_OK;
}

static lm_status sparse_merge(void *state, const lm_tensor_job *job,
                              void *user)
{
    (void)user;
    const struct sparse_state *s = state;
    const lm_params *p = lm__job_params(job, s->params);
    struct tensor_opts o;
    LM_TRY(read_opts(s, p, &o));
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
    lm_status st = LM_OK;
    for (size_t t = 0; t < k && st == LM_OK; t++) {
        float *x = buf + n * t;
        double density;
        st = lm__task_param(job, s->params, "density", t, &density);
        if (st != LM_OK)
            break;
        memcpy(x, job->deltas[t], n * sizeof(float));
        /* density 1 keeps everything untouched (no rescale either). */
        if (s->model_scope) {
            lm__global_topk_trim(&s->topk, t, x, n);
            if (o.rescale && density < 1.0)
                lm__rescale_l1(job->deltas[t], x, n);
        } else if (s->how == TRIM_MAGNITUDE && density < 1.0) {
            lm__keep_top_k(x, n, lm__density_count(density, n), scratch);
            if (o.rescale)
                lm__rescale_l1(job->deltas[t], x, n);
        } else if (s->how == DROP_RANDOM && density < 1.0) {
            lm__dare_mask(x, n, density, o.rescale && !o.l1, job->seed, t);
            if (o.rescale && o.l1)
                lm__rescale_l1(job->deltas[t], x, n);
        }
        rows[t] = x;
    }
    if (st == LM_OK && s->elect) {
        lm__sign_merge(rows, job->weights, k, n, &o.sign, job->out);
        for (size_t i = 0; i < n; i++)
            job->out[i] = (float)(o.lambda * job->out[i]);
    } else if (st == LM_OK) {
        lm__gta_combine(lm__simd_pick(), rows, job->weights, k, n, false,
                        o.normalize, o.lambda, job->out);
    }
    lm_free(job->ctx, buf);
    lm_free(job->ctx, (void *)rows);
    return st;
}

/* The fused path's rule (core/sparse_rule.h): the same per-task choices
 * as sparse_merge, and its mask and combination applied to blocks. */
static void rule_mask(const struct lm__sparse_rule *r, size_t t, float *x,
                      size_t len, size_t offset)
{
    r->simd->dare_mask_at(x, len, offset, r->task[t].density,
                          r->task[t].rescale, r->seed, t);
}

static void rule_combine(const struct lm__sparse_rule *r,
                         const float *const *rows, const double *weights,
                         size_t k, size_t len, float *out)
{
    if (!r->elect) {
        lm__gta_combine(r->simd, rows, weights, k, len, false, r->normalize,
                        r->lambda, out);
        return;
    }
    struct lm__sign_merge_opts o = {
        .consensus = (enum lm__consensus)r->consensus,
        .divide = (enum lm__divide)r->divide,
        .weights_in_election = r->weights_in_election,
    };
    r->simd->sign_merge(rows, weights, k, len, &o, out);
    for (size_t i = 0; i < len; i++)
        out[i] = (float)(r->lambda * out[i]);
}

static lm_status sparse_rule(void *state, const lm_tensor_job *job,
                             struct lm__sparse_rule *r)
{
    const struct sparse_state *s = state;
    const lm_params *p = lm__job_params(job, s->params);
    struct tensor_opts o;
    LM_TRY(read_opts(s, p, &o));
    memset(r, 0, sizeof(*r));
    /* A whole-model threshold, or ties' L1 rescale (its trimmed norm
     * needs the threshold first: one more pass), stay with the plain
     * path. */
    r->fusable = !s->model_scope && job->n_models <= LM__SPARSE_MAX_TASKS;
    r->seed = job->seed;
    r->mask = rule_mask;
    r->combine = rule_combine;
    r->lambda = o.lambda;
    r->elect = s->elect;
    r->normalize = o.normalize;
    r->weights_in_election = o.sign.weights_in_election;
    r->consensus = (int)o.sign.consensus;
    r->divide = (int)o.sign.divide;
    size_t n = job->numel;
    for (size_t t = 0; t < job->n_models && r->fusable; t++) {
        double density;
        LM_TRY(lm__task_param(job, s->params, "density", t, &density));
        struct lm__sparse_task *task = &r->task[t];
        task->how = LM__SPARSE_ALL;
        if (density >= 1.0)
            continue;
        if (s->how == TRIM_MAGNITUDE) {
            task->keep = lm__density_count(density, n);
            if (task->keep < n)
                task->how = LM__SPARSE_TOP;
            r->fusable = !o.rescale;
        } else {
            task->how = LM__SPARSE_MASK;
            task->density = density;
            task->rescale = o.rescale && !o.l1;
            task->l1 = o.rescale && o.l1;
        }
    }
    return LM_OK;
}

lm_status lm__sparse_rules_register(lm_context *ctx)
{
    static const char *const names[] = {"ties", "dare_ties", "dare_linear"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        LM_TRY(lm__strategy_set_sparse_rule(ctx, names[i], sparse_rule));
    return LM_OK;
}

static void sparse_fini(void *state, void *user)
{
    (void)user;
    struct sparse_state *s = state;
    if (!s)
        return;
    lm__global_topk_free(s->ctx, &s->topk);
    lm_free(s->ctx, s->density);
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

const lm_strategy_vtable lm__ties_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "ties",
    .description = "TIES: trim by magnitude, elect signs, disjoint mean",
    .params = ties_params,
    .n_params = sizeof(ties_params) / sizeof(ties_params[0]),
    .init = ties_init,
    .merge_tensor = sparse_merge,
    .fini = sparse_fini,
    .prepare_tensor = ties_prepare,
    .prepared = ties_prepared,
    .prepare_passes = ties_passes,
};
VTABLE(lm__dare_ties_strategy, "dare_ties",
       "DARE random drop and rescale, then TIES sign election",
       dare_ties_params, dare_ties_init);
VTABLE(lm__dare_linear_strategy, "dare_linear",
       "DARE random drop and rescale, then a weighted sum",
       dare_linear_params, dare_linear_init);
