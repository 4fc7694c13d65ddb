/* Merge plans: strategy, parameters and inputs. */
#include <stddef.h>
#include <math.h>
#include <string.h>

#include "core/plan_private.h"

lm_status lm_plan_create(lm_context *ctx, const char *strategy, lm_plan **out)
{
    if (!ctx || !strategy || !out)
        return LM_ERR_INVALID_ARGUMENT;
    const lm_strategy_vtable *vt;
    LM_TRY(lm_strategy_find(ctx, strategy, &vt));
    lm_plan *p = lm__calloc(ctx, 1, sizeof(*p));
    if (!p)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "plan: out of memory");
    p->ctx = ctx;
    p->vt = vt;
    if (lm__params_create(ctx, vt, &p->params) != LM_OK) {
        lm_free(ctx, p);
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "plan: out of memory");
    }
    p->params->plan = p;
    *out = p;
    return LM_OK;
}

void lm_plan_destroy(lm_plan *p)
{
    if (!p)
        return;
    lm__params_destroy(p->params);
    lm__stages_destroy(p);
    lm__ties_free(p);
    lm__layout_free(p);
    lm_free(p->ctx, (void *)p->models);
    lm_free(p->ctx, (void *)p->loras);
    lm_free(p->ctx, (void *)p->tvs);
    lm_free(p->ctx, p->weights);
    lm_free(p->ctx, p);
}

const char *lm_plan_strategy(const lm_plan *p) { return p ? p->vt->name : NULL; }

lm_status lm_plan_set_float(lm_plan *p, const char *name, double value)
{
    if (!p || !name)
        return LM_ERR_INVALID_ARGUMENT;
    return lm__params_set_float(p->params, name, value);
}

lm_status lm_plan_set_float_for(lm_plan *p, const char *name, double value,
                                const char *tensor, size_t model)
{
    if (!p || !name)
        return LM_ERR_INVALID_ARGUMENT;
    if (model != LM_ALL_MODELS && model >= p->n_models)
        return lm_context_set_error(p->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "%s: parameter '%s' set for model %zu "
                                    "but the plan has %zu models (add them "
                                    "first)", p->vt->name, name, model,
                                    p->n_models);
    /* A weight for every tensor is simply the model's weight, so that a
     * strategy's init sees it too. */
    if (!tensor && model != LM_ALL_MODELS && strcmp(name, "weight") == 0) {
        if (!isfinite(value))
            return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_RANGE,
                                        "plan: weight of model %zu is not "
                                        "finite", model);
        p->weights[model] = value;
        return LM_OK;
    }
    return lm__params_set_for(p->params, name, value, tensor, model);
}

lm_status lm_plan_set_string(lm_plan *p, const char *name, const char *value)
{
    if (!p || !name || !value)
        return LM_ERR_INVALID_ARGUMENT;
    return lm__params_set_string(p->params, name, value);
}

lm_status lm_plan_set_base(lm_plan *p, const lm_model *base)
{
    if (!p || !base)
        return LM_ERR_INVALID_ARGUMENT;
    p->base = base;
    return LM_OK;
}

static lm_status add_task(lm_plan *p, const lm_model *model,
                          const lm_lora *lora, const lm_task_vector *tv,
                          double weight)
{
    if (!isfinite(weight))
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_RANGE,
                                    "plan: weight of model %zu is not finite",
                                    p->n_models);
    if (p->n_models == p->cap_models) {
        size_t cap = p->cap_models ? p->cap_models * 2 : 8;
        const lm_model **models = lm__calloc(p->ctx, cap, sizeof(*models));
        const lm_lora **loras = lm__calloc(p->ctx, cap, sizeof(*loras));
        const lm_task_vector **tvs = lm__calloc(p->ctx, cap, sizeof(*tvs));
        double *weights = lm__calloc(p->ctx, cap, sizeof(*weights));
        if (!models || !loras || !tvs || !weights) {
            lm_free(p->ctx, (void *)models);
            lm_free(p->ctx, (void *)loras);
            lm_free(p->ctx, (void *)tvs);
            lm_free(p->ctx, weights);
            return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                        "plan: out of memory");
        }
        if (p->n_models) {
            memcpy((void *)models, p->models, p->n_models * sizeof(*models));
            memcpy((void *)loras, p->loras, p->n_models * sizeof(*loras));
            memcpy((void *)tvs, p->tvs, p->n_models * sizeof(*tvs));
            memcpy(weights, p->weights, p->n_models * sizeof(*weights));
        }
        lm_free(p->ctx, (void *)p->models);
        lm_free(p->ctx, (void *)p->loras);
        lm_free(p->ctx, (void *)p->tvs);
        lm_free(p->ctx, p->weights);
        p->models = models;
        p->loras = loras;
        p->tvs = tvs;
        p->weights = weights;
        p->cap_models = cap;
    }
    p->models[p->n_models] = model;
    p->loras[p->n_models] = lora;
    p->tvs[p->n_models] = tv;
    p->weights[p->n_models] = weight;
    p->n_models++;
    return LM_OK;
}

lm_status lm_plan_add_model(lm_plan *p, const lm_model *model, double weight)
{
    if (!p || !model)
        return LM_ERR_INVALID_ARGUMENT;
    return add_task(p, model, NULL, NULL, weight);
}

lm_status lm_plan_add_lora(lm_plan *p, const lm_lora *lora, double weight)
{
    if (!p || !lora)
        return LM_ERR_INVALID_ARGUMENT;
    return add_task(p, NULL, lora, NULL, weight);
}

lm_status lm_plan_add_task_vector(lm_plan *p, const lm_task_vector *tv,
                                  double weight)
{
    if (!p || !tv)
        return LM_ERR_INVALID_ARGUMENT;
    return add_task(p, NULL, NULL, tv, weight);
}

size_t lm_plan_model_count(const lm_plan *p) { return p ? p->n_models : 0; }

lm_status lm_plan_set_stats(lm_plan *p, const struct lm_stats *stats)
{
    if (!p)
        return LM_ERR_INVALID_ARGUMENT;
    p->stats = stats;
    return LM_OK;
}

lm_status lm_plan_set_nonfinite(lm_plan *p, lm_nonfinite_policy policy)
{
    if (!p)
        return LM_ERR_INVALID_ARGUMENT;
    if (policy != LM_NONFINITE_ERROR && policy != LM_NONFINITE_ALLOW)
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_RANGE,
                                    "plan: unknown non-finite policy %d",
                                    (int)policy);
    p->allow_nonfinite = policy == LM_NONFINITE_ALLOW;
    return LM_OK;
}

lm_status lm_plan_set_rows_policy(lm_plan *p, lm_rows_policy policy)
{
    if (!p)
        return LM_ERR_INVALID_ARGUMENT;
    if ((unsigned)policy > LM_ROWS_MEAN)
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_RANGE,
                                    "plan: unknown rows policy %d",
                                    (int)policy);
    p->rows = policy;
    return LM_OK;
}

lm_status lm_plan_set_output_dtype(lm_plan *p, lm_dtype dtype)
{
    if (!p)
        return LM_ERR_INVALID_ARGUMENT;
    if (!lm_dtype_size(dtype))
        return lm_context_set_error(p->ctx, LM_ERR_DTYPE,
                                    "plan: unknown output dtype %d",
                                    (int)dtype);
    p->has_output_dtype = true;
    p->output_dtype = dtype;
    return LM_OK;
}

lm_status lm_plan_set_progress(lm_plan *p, lm_progress_fn fn, void *user)
{
    if (!p)
        return LM_ERR_INVALID_ARGUMENT;
    p->progress = fn;
    p->progress_user = user;
    return LM_OK;
}

static lm_status check_ready(lm_plan *p)
{
    LM_TRY(lm__stages_check(p, false));
    if (!p->base)
        return lm_context_set_error(p->ctx, LM_ERR_STATE,
                                    "plan: no base model (lm_plan_set_base)");
    if (!p->n_models)
        return lm_context_set_error(p->ctx, LM_ERR_STATE,
                                    "plan: no models to merge "
                                    "(lm_plan_add_model)");
    return LM_OK;
}

lm_status lm_plan_execute_to(lm_plan *p, const lm_sink_vtable *sink)
{
    if (!p || !sink)
        return LM_ERR_INVALID_ARGUMENT;
    /* write_range was appended in 0.2: sinks built before end at user. */
    size_t least = offsetof(lm_sink_vtable, user) + sizeof(sink->user);
    if (sink->struct_size < least || !sink->begin || !sink->write ||
        !sink->end)
        return lm_context_set_error(p->ctx, sink->struct_size < least
                                                ? LM_ERR_ABI
                                                : LM_ERR_INVALID_ARGUMENT,
                                    "plan: sink needs struct_size >= %zu and "
                                    "begin, write and end callbacks",
                                    least);
    LM_TRY(check_ready(p));
    return lm__execute(p, sink);
}

lm_status lm_plan_execute(lm_plan *p, lm_model **out)
{
    if (!p || !out)
        return LM_ERR_INVALID_ARGUMENT;
    LM_TRY(check_ready(p));
    struct lm__memory_sink sink;
    lm__memory_sink_init(&sink, p->ctx);
    LM_TRY(lm__execute(p, &sink.vtable));
    *out = sink.model;
    return LM_OK;
}
