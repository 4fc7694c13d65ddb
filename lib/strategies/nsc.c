/* `nsc` (Lee, Jeong, Yoon, "Label-Free Cross-Task LoRA Merging with
 * Null-Space Compression", CVPR 2026; github.com/wonyoung01/nsc_merging):
 * the LoRA merge W_l = W0_l + sum_k lambda_{l,k} w_k s_k B_k A_k with one
 * coefficient per (module l, task k) chosen by the NSC optimiser.
 *
 * The optimisation needs the host's network (libmerge/experimental/nsc.h);
 * this strategy merges with its result, so the coefficients work in every
 * door a strategy has (plans, sinks, load-time mergers, `lmerge run`,
 * Python). They come from either
 *   - `coefficients`: a table file written by lm_nsc_save_coefficients or
 *     the Python drivers (nsc/coefficients.h), checked strictly: every
 *     module an adapter targets needs a row, with one value per task; or
 *   - `lambda` set per (tensor, model) with lm_plan_set_float_for, the
 *     core's per-tensor parameters, for hosts holding them in memory; or
 *   - the optimiser itself, run at init through the host's forward
 *     callback set with lm_plan_set_nsc_forward (lib/nsc/forward.c).
 * `alpha` multiplies every coefficient: one global scale a search can
 * choose on validation (libmerge.torch.nsc_scale_search), as the other
 * methods' scales are; 1 merges the coefficients as they are.
 * `alpha_rule = output_match` chooses a scale per module without labels
 * (docs/methods/nsc.md, "Label-free scale"): the least-squares factor f
 * that makes the merged delta's output on each task's calibration inputs
 * closest to that task's own adapter's output (nsc/output_match.h); the
 * merge is then alpha * f * sum_k lambda_k w_k s_k B_k A_k.
 * Every task must be a LoRA adapter (lm_plan_add_lora): the coefficients
 * are per LoRA module. */
#include <math.h>
#include <string.h>

#include "nsc/coefficients.h"
#include "nsc/forward.h"
#include "nsc/output_match.h"
#include "strategies/sparsify.h"

static const lm_param_desc nsc_params[] = {
    {sizeof(lm_param_desc), "coefficients", LM_PARAM_STRING, 0.0, 0.0, 0.0,
     NULL,
     "coefficient table (JSON) written by the NSC optimiser: "
     "lm_nsc_save_coefficients, libmerge.torch.nsc_merge(coefficients=...)",
     0},
    {sizeof(lm_param_desc), "lambda", LM_PARAM_FLOAT, 0.4, -1e3, 1e3, NULL,
     "coefficient per (tensor, model) when no table is given "
     "(lm_plan_set_float_for); unused with 'coefficients'",
     LM__PER_MODEL},
    {sizeof(lm_param_desc), "alpha", LM_PARAM_FLOAT, 1.0, 0.0, 1e3, NULL,
     "global scale of every coefficient (1: as optimised); "
     "libmerge.torch.nsc_scale_search chooses it on validation",
     0},
    {sizeof(lm_param_desc), "alpha_rule", LM_PARAM_CHOICE, 0, 0, 0,
     "fixed|output_match",
     "fixed: alpha as given; output_match: alpha times, per module, the "
     "least-squares factor matching the merged delta's output on each "
     "task's calibration inputs to its adapter's (needs stats; label-free)",
     0},
};

static lm_status both_set(lm_context *ctx)
{
    return lm_context_set_error(ctx, LM_ERR_INVALID_ARGUMENT,
                                "nsc: set either 'coefficients' (a table "
                                "file) or 'lambda', not both");
}

struct nsc_state {
    lm_context *ctx;
    const lm_params *params;
    struct lm__nsc_table *table; /* NULL: `lambda` per (tensor, model) */
    const struct lm_stats *stats; /* alpha_rule=output_match */
    bool output_match;
};

static lm_status nsc_init(const lm_strategy_init_info *info, void **state,
                          void *user)
{
    (void)user;
    const char *path = NULL;
    LM_TRY(lm_params_get_string(info->params, "coefficients", &path));
    /* Per-tensor `lambda` values are only visible per tensor: whether a
     * module has a coefficient is checked in merge_tensor. */
    if (*path && lm_params_is_set(info->params, "lambda"))
        return both_set(info->ctx);
    struct lm__nsc_forward *fw = lm__nsc_forward_of(info->params);
    if (fw && (*path || lm_params_is_set(info->params, "lambda")))
        return lm_context_set_error(info->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "nsc: the plan runs the optimiser "
                                    "(lm_plan_set_nsc_forward); do not set "
                                    "'coefficients' or 'lambda' too");
    struct nsc_state *s = lm__calloc(info->ctx, 1, sizeof(*s));
    if (!s)
        return lm_context_set_error(info->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "nsc: out of memory");
    s->ctx = info->ctx;
    s->params = info->params;
    s->stats = info->stats;
    const char *rule = NULL;
    lm_status rst = lm_params_get_choice(info->params, "alpha_rule", &rule);
    if (rst != LM_OK) {
        lm_free(info->ctx, s);
        return rst;
    }
    s->output_match = strcmp(rule, "output_match") == 0;
    if (s->output_match && !s->stats) {
        lm_free(info->ctx, s);
        return lm_context_set_error(info->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "nsc: alpha_rule=output_match needs "
                                    "activation statistics of every task "
                                    "(lm_plan_set_stats; Python stats=)");
    }
    if (fw) {
        lm_nsc *nsc = NULL;
        lm_status st = lm__nsc_forward_run(fw, info->n_models, &nsc);
        if (st == LM_OK)
            st = lm__nsc_table_from(nsc, &s->table);
        if (st != LM_OK) {
            lm_free(info->ctx, s);
            return st;
        }
    } else if (*path) {
        lm_status st = lm__nsc_table_read(info->ctx, path, &s->table);
        if (st == LM_OK && s->table->n_tasks != info->n_models)
            st = lm_context_set_error(info->ctx, LM_ERR_INVALID_ARGUMENT,
                                      "nsc coefficients '%s': key 'tasks' "
                                      "lists %zu tasks, the plan has %zu "
                                      "adapters", path, s->table->n_tasks,
                                      info->n_models);
        if (st != LM_OK) {
            lm__nsc_table_free(info->ctx, s->table);
            lm_free(info->ctx, s);
            return st;
        }
    }
    *state = s;
    return LM_OK;
}

static void nsc_fini(void *state, void *user)
{
    (void)user;
    struct nsc_state *s = state;
    if (!s)
        return;
    lm_context *ctx = s->ctx;
    lm__nsc_table_free(ctx, s->table);
    lm_free(ctx, s);
}

/* The first task whose adapter targets this tensor, or n_models. */
static lm_status first_adapted(const lm_tensor_job *job, size_t *first)
{
    *first = job->n_models;
    for (size_t t = job->n_models; t-- > 0;) {
        if (!job->loras || !job->loras[t])
            return lm_context_set_error(job->ctx, LM_ERR_UNSUPPORTED,
                                        "nsc: task %zu is not a LoRA "
                                        "adapter (nsc merges adapters added "
                                        "with lm_plan_add_lora)", t);
        if (lm_lora_find(job->loras[t], job->name, NULL, NULL, NULL) == LM_OK)
            *first = t;
    }
    return LM_OK;
}

static lm_status nsc_merge(void *state, const lm_tensor_job *job, void *user)
{
    (void)user;
    const struct nsc_state *s = state;
    size_t first;
    LM_TRY(first_adapted(job, &first));
    if (first == job->n_models)
        return LM_OK; /* no adapter: the base tensor as it is */
    const lm_params *p = lm__job_params(job, s->params);
    bool lambda_set = lm_params_is_set(p, "lambda");
    if (s->table && lambda_set)
        return both_set(job->ctx);
    if (!s->table && !lambda_set)
        return lm_context_set_error(job->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "nsc: no coefficients for module '%s': "
                                    "set 'coefficients' to a table written "
                                    "by the NSC optimiser (docs/methods/"
                                    "nsc.md), or 'lambda' for it",
                                    job->name);
    double alpha;
    LM_TRY(lm_params_get_float(p, "alpha", &alpha));
    const double *row = NULL;
    if (s->table && !(row = lm__nsc_table_find(s->table, job->name)))
        return lm_context_set_error(job->ctx, LM_ERR_NOT_FOUND,
                                    "nsc coefficients '%s': no entry for "
                                    "module '%s' (targeted by task %zu's "
                                    "adapter) in 'modules'",
                                    s->table->path, job->name, first);
    double *lambda = lm__calloc(job->ctx, job->n_models, sizeof(double));
    if (!lambda)
        return lm_context_set_error(job->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "nsc: out of memory merging '%s'",
                                    job->name);
    for (size_t t = 0; t < job->n_models; t++) {
        lm_status st = LM_OK;
        if (row)
            lambda[t] = row[t];
        else
            st = lm_params_get_model_float(p, "lambda", t, &lambda[t]);
        if (st != LM_OK) {
            lm_free(job->ctx, lambda);
            return st;
        }
        lambda[t] *= job->weights[t];
    }
    double f = 1.0;
    if (s->output_match) {
        lm_status st = lm__nsc_output_match(job, s->stats, lambda, &f);
        if (st != LM_OK) {
            lm_free(job->ctx, lambda);
            return st;
        }
    }
    for (size_t t = 0; t < job->n_models; t++)
        lambda[t] *= alpha * f;
    /* deltas[t] is s_t B_t A_t (zero where the adapter has no factors);
     * the sum runs in f64 and is rounded once. */
    for (size_t i = 0; i < job->numel; i++) {
        double acc = 0.0;
        for (size_t t = 0; t < job->n_models; t++)
            acc += lambda[t] * (double)job->deltas[t][i];
        job->out[i] = (float)acc;
    }
    lm_free(job->ctx, lambda);
    return LM_OK;
}

const lm_strategy_vtable lm__nsc_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "nsc",
    .description = "LoRA merge with NSC coefficients per (module, task): "
                   "base + sum_k lambda_{l,k} s_k B_k A_k",
    .params = nsc_params,
    .n_params = sizeof(nsc_params) / sizeof(nsc_params[0]),
    .init = nsc_init,
    .merge_tensor = nsc_merge,
    .fini = nsc_fini,
};
