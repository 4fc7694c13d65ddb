/* Per-model and per-tensor parameter values (lm_plan_set_float_for) and
 * the per-tensor views strategies read them through. mergekit configs
 * need them: a density per model, a `t` gradient over the layers, a
 * weight that differs for the attention and MLP tensors. */
#include <math.h>
#include <string.h>

#include "core/context_private.h"
#include "core/params_private.h"

static const char *tensor_name_at(const void *table, size_t i)
{
    return ((const struct lm__param_overrides *)table)->tensors[i];
}

/* The (param, model) entry of `list`, or NULL. */
static const struct lm__param_value *entry(const struct lm__param_values *list,
                                           int param, size_t model)
{
    if (!list)
        return NULL;
    for (size_t i = 0; i < list->n; i++)
        if (list->v[i].param == param && list->v[i].model == model)
            return &list->v[i];
    return NULL;
}

static lm_status put(lm_context *ctx, struct lm__param_values *list,
                     int param, size_t model, double value)
{
    struct lm__param_value *e =
        (struct lm__param_value *)entry(list, param, model);
    if (e) {
        e->value = value;
        return LM_OK;
    }
    struct lm__param_value *v =
        lm__reserve(ctx, list->v, &list->cap, list->n, sizeof(*v), 4);
    if (!v)
        return LM_ERR_OUT_OF_MEMORY;
    list->v = v;
    list->v[list->n++] = (struct lm__param_value){param, model, value};
    return LM_OK;
}

/* The override list of tensor `name`, created when `create`. */
static lm_status tensor_list(lm_params *p, const char *name, bool create,
                             struct lm__param_values **out)
{
    struct lm__param_overrides *o = p->overrides;
    size_t i = lm__name_set_find(&o->index, name, tensor_name_at, o);
    if (i != SIZE_MAX || !create) {
        *out = i == SIZE_MAX ? NULL : &o->by_tensor[i];
        return LM_OK;
    }
    /* Two arrays, one capacity: it is updated once both have grown. */
    size_t cap = o->cap_tensors, cap_lists = o->cap_tensors;
    char **names = lm__reserve(p->ctx, o->tensors, &cap, o->n_tensors,
                               sizeof(*names), 16);
    if (!names)
        return LM_ERR_OUT_OF_MEMORY;
    o->tensors = names;
    struct lm__param_values *lists =
        lm__reserve(p->ctx, o->by_tensor, &cap_lists, o->n_tensors,
                    sizeof(*lists), 16);
    if (!lists)
        return LM_ERR_OUT_OF_MEMORY;
    o->by_tensor = lists;
    o->cap_tensors = cap;
    char *copy = lm__strdup(p->ctx, name);
    if (!copy)
        return LM_ERR_OUT_OF_MEMORY;
    i = o->n_tensors;
    o->tensors[i] = copy;
    o->by_tensor[i] = (struct lm__param_values){0};
    if (lm__name_set_add(p->ctx, &o->index, i, tensor_name_at, o) != LM_OK) {
        lm_free(p->ctx, copy);
        return LM_ERR_OUT_OF_MEMORY;
    }
    o->n_tensors++;
    *out = &o->by_tensor[i];
    return LM_OK;
}

static lm_status out_of_memory(lm_params *p)
{
    return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                "%s: out of memory storing a per-tensor "
                                "parameter", p->vt->name);
}

lm_status lm__params_set_for(lm_params *p, const char *name, double value,
                             const char *tensor, size_t model)
{
    int param = LM__PARAM_WEIGHT;
    if (strcmp(name, "weight") == 0) {
        if (model == LM_ALL_MODELS)
            return lm_context_set_error(p->ctx, LM_ERR_INVALID_ARGUMENT,
                                        "%s: a 'weight' is set for one "
                                        "model, not LM_ALL_MODELS",
                                        p->vt->name);
        if (!isfinite(value))
            return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_RANGE,
                                        "%s: weight of model %zu is not "
                                        "finite", p->vt->name, model);
    } else {
        param = lm__params_index(p, name);
        if (param < 0)
            return lm__params_set_float(p, name, value); /* names the list */
        LM_TRY(lm__params_check_value(p, param, value));
        if (!tensor && model == LM_ALL_MODELS)
            return lm__params_set_float(p, name, value);
        uint32_t flags = p->vt->params[param].flags;
        if (tensor && !(flags & LM_PARAM_PER_TENSOR))
            return lm_context_set_error(
                p->ctx, LM_ERR_INVALID_ARGUMENT,
                "%s: parameter '%s' is read once per merge, so it cannot "
                "differ for tensor '%s'", p->vt->name, name, tensor);
        if (model != LM_ALL_MODELS && !(flags & LM_PARAM_PER_MODEL))
            return lm_context_set_error(
                p->ctx, LM_ERR_INVALID_ARGUMENT,
                "%s: parameter '%s' is one value for every model, so it "
                "cannot be set for model %zu", p->vt->name, name, model);
    }
    if (!p->overrides) {
        p->overrides = lm__calloc(p->ctx, 1, sizeof(*p->overrides));
        if (!p->overrides)
            return out_of_memory(p);
    }
    struct lm__param_values *list = &p->overrides->every_tensor;
    if (tensor && tensor_list(p, tensor, true, &list) != LM_OK)
        return out_of_memory(p);
    if (put(p->ctx, list, param, model, value) != LM_OK)
        return out_of_memory(p);
    return LM_OK;
}

void lm__params_overrides_free(lm_params *p)
{
    struct lm__param_overrides *o = p->overrides;
    if (!o)
        return;
    for (size_t i = 0; i < o->n_tensors; i++) {
        lm_free(p->ctx, o->tensors[i]);
        lm_free(p->ctx, o->by_tensor[i].v);
    }
    lm_free(p->ctx, o->tensors);
    lm_free(p->ctx, o->by_tensor);
    lm_free(p->ctx, o->every_tensor.v);
    lm__name_set_free(p->ctx, &o->index);
    lm_free(p->ctx, o);
    p->overrides = NULL;
}

void lm__params_view(const lm_params *p, const char *name, lm_params *view)
{
    *view = *p;
    view->tensor = NULL;
    if (p->overrides)
        (void)tensor_list((lm_params *)p, name, false,
                          (struct lm__param_values **)&view->tensor);
}

/* Most specific first: (tensor, model), (tensor, all), (every tensor,
 * model), the plan-wide value. */
static const struct lm__param_value *resolve(const lm_params *v, int param,
                                             size_t model)
{
    const struct lm__param_value *e = NULL;
    if (model != LM_ALL_MODELS)
        e = entry(v->tensor, param, model);
    if (!e)
        e = entry(v->tensor, param, LM_ALL_MODELS);
    if (!e && model != LM_ALL_MODELS && v->overrides)
        e = entry(&v->overrides->every_tensor, param, model);
    return e;
}

double lm__params_value(const lm_params *v, int i, size_t model)
{
    const struct lm__param_value *e = resolve(v, i, model);
    return e ? e->value : v->values[i];
}

bool lm__params_overridden(const lm_params *v, int i)
{
    if (v->set[i] || entry(v->tensor, i, LM_ALL_MODELS))
        return true;
    /* A per-model value counts as set: the user chose it. */
    const struct lm__param_values *lists[2] = {
        v->tensor, v->overrides ? &v->overrides->every_tensor : NULL};
    for (size_t l = 0; l < 2; l++)
        for (size_t k = 0; lists[l] && k < lists[l]->n; k++)
            if (lists[l]->v[k].param == i)
                return true;
    return false;
}

double lm__params_weight(const lm_params *v, size_t m, double plan_weight)
{
    const struct lm__param_value *e = resolve(v, LM__PARAM_WEIGHT, m);
    return e ? e->value : plan_weight;
}

bool lm__params_has_weights(const lm_params *p)
{
    const struct lm__param_overrides *o = p->overrides;
    if (!o)
        return false;
    for (size_t k = 0; k < o->every_tensor.n; k++)
        if (o->every_tensor.v[k].param == LM__PARAM_WEIGHT)
            return true;
    for (size_t i = 0; i < o->n_tensors; i++)
        for (size_t k = 0; k < o->by_tensor[i].n; k++)
            if (o->by_tensor[i].v[k].param == LM__PARAM_WEIGHT)
                return true;
    return false;
}

lm_status lm__params_check_tensors(const lm_params *p,
                                   bool (*has)(const void *table,
                                               const char *name),
                                   const void *table)
{
    const struct lm__param_overrides *o = p->overrides;
    for (size_t i = 0; o && i < o->n_tensors; i++)
        if (o->by_tensor[i].n && !has(table, o->tensors[i]))
            return lm_context_set_error(
                p->ctx, LM_ERR_NOT_FOUND,
                "%s: a parameter was set for tensor '%s', which the base "
                "model does not have", p->vt->name, o->tensors[i]);
    return LM_OK;
}
