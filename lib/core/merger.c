/* Load-time mergers: one prepared strategy state, tensors merged on demand
 * by the host's loader threads. */
#include <string.h>

#include "core/plan_private.h"
#include "libmerge/merger.h"

struct lm_merger {
    lm_plan *plan;
    void *state;
    bool reusing; /* the stages keep their first-pass results */
    size_t *tie_src; /* per base entry (ties.c), when the plan has a base */
};

/* Strategies with a prepare pass and stages with a measuring pass need
 * every tensor before the first merge: a merger runs those passes over
 * the plan's base at creation, so it needs one. Whether the strategy has
 * a pass depends on its parameters, so this runs after its init. */
static lm_status first_pass_needs_base(const lm_plan *p, void *state)
{
    if (p->base)
        return LM_OK;
    if (lm__prepare_passes(p, state) > 0)
        return lm_context_set_error(p->ctx, LM_ERR_STATE,
                                    "merger: strategy '%s' needs every "
                                    "tensor before merging any: set the "
                                    "plan's base (lm_plan_set_base) so the "
                                    "merger can run that pass at creation",
                                    p->vt->name);
    return lm__stages_check(p, true);
}

lm_status lm_merger_create(lm_plan *p, lm_merger **out)
{
    if (!p || !out)
        return LM_ERR_INVALID_ARGUMENT;
    if (!p->n_models)
        return lm_context_set_error(p->ctx, LM_ERR_STATE,
                                    "merger: the plan has no models or "
                                    "adapters");
    LM_TRY(lm__stages_check(p, false));
    lm_merger *m = lm__calloc(p->ctx, 1, sizeof(*m));
    if (!m)
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "merger: out of memory");
    m->plan = p;
    if (p->vt->init) {
        lm_strategy_init_info info = {
            .struct_size = sizeof(info),
            .ctx = p->ctx,
            .params = p->params,
            .n_models = p->n_models,
            .weights = p->weights,
            .stats = p->stats,
        };
        lm_status st = p->vt->init(&info, &m->state, p->vt->user);
        if (st != LM_OK) {
            lm_free(p->ctx, m);
            return st;
        }
    }
    lm_status need = first_pass_needs_base(p, m->state);
    if (need != LM_OK) {
        lm_merger_destroy(m);
        return need;
    }
    if (p->base) {
        /* Measuring and prepare passes now; their results (and what the
         * stages cache) serve every later apply. */
        lm_status st = lm__ties_resolve(p, &m->tie_src);
        if (st != LM_OK) {
            lm_merger_destroy(m);
            return st;
        }
        st = lm__stages_reuse_begin(p);
        m->reusing = st == LM_OK;
        if (st == LM_OK)
            st = lm__first_passes(p, m->state);
        if (st != LM_OK) {
            lm_merger_destroy(m);
            return st;
        }
    }
    *out = m;
    return LM_OK;
}

void lm_merger_destroy(lm_merger *m)
{
    if (!m)
        return;
    if (m->plan->vt->fini)
        m->plan->vt->fini(m->state, m->plan->vt->user);
    if (m->reusing)
        lm__stages_reuse_end(m->plan);
    lm_free(m->plan->ctx, m->tie_src);
    lm_free(m->plan->ctx, m);
}

int lm_merger_touches(const lm_merger *m, const char *name)
{
    if (!m || !name)
        return 0;
    const lm_plan *p = m->plan;
    for (size_t t = 0; t < p->n_models; t++) {
        const lm_model *holder = p->tvs[t]  ? p->tvs[t]->deltas
                                 : p->loras[t] ? NULL
                                               : p->models[t];
        if (holder ? lm__model_lookup(holder, name) != NULL
                   : lm_lora_find(p->loras[t], name, NULL, NULL, NULL) ==
                         LM_OK)
            return 1;
    }
    return 0;
}

/* The name tensor `name` is merged as: its tie's root (ties.c), found in
 * the base's resolution or, without a base, by following lm_plan_tie. */
static const char *merged_as(const lm_merger *m, const char *name)
{
    const lm_plan *p = m->plan;
    if (m->tie_src) {
        size_t i = lm__model_index(p->base, name);
        return i != SIZE_MAX && m->tie_src[i] != SIZE_MAX
                   ? p->base->entries[m->tie_src[i]].name
                   : name;
    }
    return lm__ties_declared_root(p, name);
}

lm_status lm_merger_apply_to(lm_merger *m, const char *name,
                             const lm_tensor *base, lm_tensor *out)
{
    if (!m || !name || !base || !out)
        return LM_ERR_INVALID_ARGUMENT;
    lm_context *ctx = m->plan->ctx;
    if (base->lazy_read || out->lazy_read)
        return lm_context_set_error(ctx, LM_ERR_STATE,
                                    "merger: '%s' must be a tensor with "
                                    "storage, not a lazy one", name);
    bool same = base->ndim == out->ndim;
    for (int d = 0; same && d < base->ndim; d++)
        same = base->shape[d] == out->shape[d];
    if (!same)
        return lm_context_set_error(ctx, LM_ERR_SHAPE,
                                    "merger: output for '%s' has another "
                                    "shape than the base", name);
    if (!lm_merger_touches(m, name)) {
        if (out != base)
            lm_convert(base->data, base->dtype, out->data, out->dtype,
                       base->numel);
        return LM_OK;
    }
    struct lm__merged merged;
    bool done;
    lm__threads_hold(ctx, 1);
    lm_status st = lm__fused_merge_into(m->plan, m->state,
                                        merged_as(m, name), base, out, &done);
    if (st == LM_OK && !done)
        st = lm__merge_tensor(m->plan, m->state, merged_as(m, name), base,
                              false, LM__PASS_MERGE, &merged);
    lm__threads_release(ctx, 1);
    LM_TRY(st);
    if (done)
        return LM_OK;
    lm__merged_write(&merged, base->numel, out->data, out->dtype);
    lm__merged_free(ctx, &merged);
    return LM_OK;
}

lm_status lm_merger_apply(lm_merger *m, const char *name, lm_tensor *tensor)
{
    return lm_merger_apply_to(m, name, tensor, tensor);
}
