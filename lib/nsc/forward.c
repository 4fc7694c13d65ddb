/* lm_plan_set_nsc_forward: the NSC optimiser run inside a plan, through
 * the host's forward callback, once before any tensor is merged; the
 * `nsc` strategy (lib/strategies/nsc.c) calls lm__nsc_forward_run from its
 * init and merges with the result. */
#include <string.h>

#include "nsc/forward.h"

/* Its address tags the attachment. */
static const char forward_tag = 0;

static void forward_destroy(lm_context *ctx, void *data)
{
    struct lm__nsc_forward *fw = data;
    lm_nsc_destroy(fw->nsc);
    lm_free(ctx, (void *)fw->adapters);
    lm_free(ctx, fw);
}

struct lm__nsc_forward *lm__nsc_forward_of(const lm_params *params)
{
    return lm__params_attachment(params, &forward_tag);
}

lm_status lm_plan_set_nsc_forward(lm_plan *p, lm_nsc_eval_fn evaluate,
                                  void *user, const lm_nsc_options *options,
                                  const lm_nsc_spsa_options *spsa)
{
    if (!p)
        return LM_ERR_INVALID_ARGUMENT;
    if (strcmp(p->vt->name, "nsc") != 0)
        return lm_context_set_error(p->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "nsc forward: the plan's strategy is "
                                    "'%s'; create it with \"nsc\"",
                                    p->vt->name);
    if (!evaluate) /* detach */
        return lm__params_attach(p->params, &forward_tag, NULL, NULL);
    if ((options && options->struct_size < sizeof(*options)) ||
        (spsa && spsa->struct_size < sizeof(*spsa)))
        return lm_context_set_error(p->ctx, LM_ERR_ABI,
                                    "nsc forward: options struct_size too "
                                    "small");
    struct lm__nsc_forward *fw = lm__calloc(p->ctx, 1, sizeof(*fw));
    if (!fw)
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "nsc forward: out of memory");
    fw->plan = p;
    fw->evaluate = evaluate;
    fw->user = user;
    fw->options = (lm_nsc_options)LM_NSC_OPTIONS_INIT;
    fw->spsa = (lm_nsc_spsa_options)LM_NSC_SPSA_OPTIONS_INIT;
    if (options)
        fw->options = *options;
    if (spsa)
        fw->spsa = *spsa;
    fw->options.struct_size = sizeof(fw->options);
    fw->spsa.struct_size = sizeof(fw->spsa);
    lm_status st = lm__params_attach(p->params, &forward_tag, fw,
                                     forward_destroy);
    if (st != LM_OK)
        forward_destroy(p->ctx, fw);
    return st;
}

const lm_nsc *lm_plan_nsc(const lm_plan *p)
{
    const struct lm__nsc_forward *fw = p ? lm__nsc_forward_of(p->params)
                                         : NULL;
    return fw ? fw->nsc : NULL;
}

static bool same_adapters(const struct lm__nsc_forward *fw, size_t n)
{
    return fw->nsc && lm_nsc_task_count(fw->nsc) == n &&
           memcmp(fw->adapters, fw->plan->loras, n * sizeof(*fw->adapters)) ==
               0;
}

lm_status lm__nsc_forward_run(struct lm__nsc_forward *fw, size_t n,
                              lm_nsc **out)
{
    lm_plan *p = fw->plan;
    for (size_t t = 0; t < n; t++)
        if (!p->loras[t])
            return lm_context_set_error(p->ctx, LM_ERR_UNSUPPORTED,
                                        "nsc: task %zu is not a LoRA adapter "
                                        "(nsc merges adapters added with "
                                        "lm_plan_add_lora)", t);
    /* Once per plan: executions, searches and mergers of the same plan
     * merge with the same coefficients, without running the host's
     * network again. */
    if (same_adapters(fw, n)) {
        *out = fw->nsc;
        return LM_OK;
    }
    lm_nsc_destroy(fw->nsc);
    fw->nsc = NULL;
    lm_free(p->ctx, (void *)fw->adapters);
    fw->adapters = lm__calloc(p->ctx, n, sizeof(*fw->adapters));
    if (!fw->adapters)
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "nsc: out of memory");
    memcpy(fw->adapters, p->loras, n * sizeof(*fw->adapters));
    lm_nsc *nsc = NULL;
    LM_TRY(lm_nsc_create(p->ctx, (const lm_lora *const *)fw->adapters, n,
                         &fw->options, &nsc));
    lm_status st = lm_nsc_spsa(nsc, &fw->spsa, fw->evaluate, fw->user, NULL,
                               NULL, NULL);
    if (st != LM_OK) {
        lm_nsc_destroy(nsc);
        return st;
    }
    fw->nsc = *out = nsc;
    return LM_OK;
}
