/* Per-layer keep ratios of purification (lm_plan_tune_purify_layers):
 * the table the stage consults for each tensor. */
#include <string.h>

#include "libmerge/experimental/purify_tune.h"
#include "purify/state.h"

/* The keep ratio set for tensor `name`, or NULL. */
static const double *layer_keep(const struct lm__purify *pu, const char *name)
{
    for (size_t i = 0; i < pu->n_layer_keeps; i++)
        if (!strcmp(pu->layer_names[i], name))
            return &pu->layer_keeps[i];
    return NULL;
}

lm_purify_options lm__purify_options_for(const struct lm__purify *pu,
                                         const char *name)
{
    lm_purify_options o = pu->opts;
    const double *keep = layer_keep(pu, name);
    if (keep)
        o.keep = *keep;
    return o;
}

void lm__purify_layer_keeps_clear(struct lm__purify *pu)
{
    for (size_t i = 0; i < pu->n_layer_keeps; i++)
        lm_free(pu->ctx, pu->layer_names[i]);
    lm_free(pu->ctx, pu->layer_names);
    lm_free(pu->ctx, pu->layer_keeps);
    pu->layer_names = NULL;
    pu->layer_keeps = NULL;
    pu->n_layer_keeps = 0;
}

lm_status lm__purify_layer_keeps_set(struct lm__purify *pu,
                                     const char *const *names,
                                     const double *keeps, size_t n)
{
    lm__purify_layer_keeps_clear(pu);
    pu->layer_names = lm__calloc(pu->ctx, n ? n : 1, sizeof(char *));
    pu->layer_keeps = lm__calloc(pu->ctx, n ? n : 1, sizeof(double));
    if (!pu->layer_names || !pu->layer_keeps) {
        lm__purify_layer_keeps_clear(pu);
        return lm_context_set_error(pu->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "purify: out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        pu->layer_names[i] = lm__strdup(pu->ctx, names[i]);
        if (!pu->layer_names[i]) {
            pu->n_layer_keeps = i;
            lm__purify_layer_keeps_clear(pu);
            return lm_context_set_error(pu->ctx, LM_ERR_OUT_OF_MEMORY,
                                        "purify: out of memory");
        }
        pu->layer_keeps[i] = keeps[i];
        pu->n_layer_keeps = i + 1;
    }
    return LM_OK;
}

lm_status lm_plan_purify_layer_keep(const lm_plan *p, const char *name,
                                    double *keep)
{
    if (!p || !name || !keep)
        return LM_ERR_INVALID_ARGUMENT;
    const struct lm__purify *pu = lm__purify_of(p);
    if (!pu)
        return LM_ERR_STATE;
    const double *k = layer_keep(pu, name);
    if (!k)
        return LM_ERR_NOT_FOUND;
    *keep = *k;
    return LM_OK;
}
