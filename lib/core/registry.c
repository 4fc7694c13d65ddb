/* The per-context registry of merge strategies. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/context_private.h"
#include "core/linear_rule.h"
#include "core/sparse_rule.h"
#include "core/sum_rule.h"

/* The registry's copy of a vtable, with what only the library's own
 * strategies declare (the vtable first: ctx->strategies points at it). */
struct registered {
    lm_strategy_vtable vt;
    lm__linear_rule_fn linear_rule;
    lm__sparse_rule_fn sparse_rule;
    const struct lm__sum_rule *sum_rule;
};

/* Sizes of the first published layouts: nothing smaller is accepted. */
#define VTABLE_V1_SIZE \
    (offsetof(lm_strategy_vtable, user) + sizeof(void *))
#define PARAM_DESC_V1_SIZE \
    (offsetof(lm_param_desc, help) + sizeof(const char *))

static bool valid_name(const char *name)
{
    if (!name || !*name || strlen(name) > 64)
        return false;
    for (const char *c = name; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
              *c == '_'))
            return false;
    return true;
}

/* Copy the caller's param table (whose element size is its first
 * element's struct_size) into the current layout, validating it. */
static lm_status copy_params(lm_context *ctx, const lm_strategy_vtable *vt,
                             lm_param_desc **out)
{
    size_t n = vt->n_params;
    *out = NULL;
    if (n == 0)
        return LM_OK;
    if (!vt->params)
        return lm_context_set_error(ctx, LM_ERR_INVALID_ARGUMENT,
                                    "strategy '%s': n_params is %zu but "
                                    "params is NULL", vt->name, n);
    size_t stride = vt->params[0].struct_size;
    if (stride < PARAM_DESC_V1_SIZE)
        return lm_context_set_error(ctx, LM_ERR_ABI,
                                    "strategy '%s': lm_param_desc struct_size "
                                    "%zu is smaller than any released "
                                    "layout (%zu)", vt->name, stride,
                                    (size_t)PARAM_DESC_V1_SIZE);
    lm_param_desc *p = lm__calloc(ctx, n, sizeof(*p));
    if (!p)
        return LM_ERR_OUT_OF_MEMORY;
    for (size_t i = 0; i < n; i++) {
        const lm_param_desc *src =
            (const lm_param_desc *)((const char *)vt->params + i * stride);
        memcpy(&p[i], src, stride < sizeof(*p) ? stride : sizeof(*p));
        p[i].struct_size = sizeof(*p);
        const char *why = NULL;
        if (src->struct_size != stride)
            why = "elements have different struct_size";
        else if (!valid_name(p[i].name))
            why = "name must be [a-z0-9_]+";
        else if (p[i].type > LM_PARAM_STRING)
            why = "unknown type";
        else if (p[i].flags & ~(LM_PARAM_PER_TENSOR | LM_PARAM_PER_MODEL))
            why = "unknown flags";
        else if (p[i].flags && (p[i].type == LM_PARAM_CHOICE ||
                                p[i].type == LM_PARAM_STRING))
            why = "per-tensor/per-model flags on a CHOICE/STRING";
        else if (p[i].type == LM_PARAM_CHOICE &&
                 (!p[i].choices || !*p[i].choices))
            why = "CHOICE without choices";
        else if (p[i].type != LM_PARAM_CHOICE &&
                 p[i].type != LM_PARAM_STRING &&
                 (isnan(p[i].min_value) || isnan(p[i].max_value) ||
                  !(p[i].default_value >= p[i].min_value &&
                    p[i].default_value <= p[i].max_value)))
            why = "default outside [min, max]";
        for (size_t j = 0; !why && j < i; j++)
            if (strcmp(p[j].name, p[i].name) == 0)
                why = "duplicate name";
        if (why) {
            lm_free(ctx, p);
            return lm_context_set_error(ctx, LM_ERR_INVALID_ARGUMENT,
                                        "strategy '%s': parameter %zu "
                                        "('%s'): %s", vt->name, i,
                                        src->name ? src->name : "(null)",
                                        why);
        }
    }
    *out = p;
    return LM_OK;
}

static const lm_strategy_vtable *find_registered(const lm_context *ctx,
                                                 const char *name)
{
    for (size_t i = 0; i < ctx->n_strategies; i++)
        if (strcmp(ctx->strategies[i]->name, name) == 0)
            return ctx->strategies[i];
    return NULL;
}

lm_status lm_register_strategy(lm_context *ctx, const lm_strategy_vtable *vt)
{
    if (!ctx || !vt)
        return LM_ERR_INVALID_ARGUMENT;
    if (vt->struct_size < VTABLE_V1_SIZE)
        return lm_context_set_error(ctx, LM_ERR_ABI,
                                    "register strategy: struct_size %u is "
                                    "smaller than any released vtable (%zu)",
                                    vt->struct_size, (size_t)VTABLE_V1_SIZE);
    if (vt->abi_version != LM_STRATEGY_ABI_VERSION)
        return lm_context_set_error(ctx, LM_ERR_ABI,
                                    "register strategy '%s': abi_version %u, "
                                    "this library speaks %d",
                                    vt->name ? vt->name : "(null)",
                                    vt->abi_version, LM_STRATEGY_ABI_VERSION);
    if (!valid_name(vt->name))
        return lm_context_set_error(ctx, LM_ERR_INVALID_ARGUMENT,
                                    "register strategy: name '%s' must be "
                                    "1-64 characters of [a-z0-9_]",
                                    vt->name ? vt->name : "(null)");
    if (!vt->merge_tensor)
        return lm_context_set_error(ctx, LM_ERR_INVALID_ARGUMENT,
                                    "register strategy '%s': merge_tensor is "
                                    "NULL", vt->name);
    if (find_registered(ctx, vt->name))
        return lm_context_set_error(ctx, LM_ERR_EXISTS,
                                    "register strategy: '%s' is already "
                                    "registered", vt->name);

    lm_param_desc *params;
    LM_TRY(copy_params(ctx, vt, &params));
    struct registered *reg = lm__calloc(ctx, 1, sizeof(*reg));
    lm_strategy_vtable *copy = reg ? &reg->vt : NULL;
    if (!copy) {
        lm_free(ctx, params);
        return LM_ERR_OUT_OF_MEMORY;
    }
    /* A newer plugin's extra fields are beyond what we can use. */
    memcpy(copy, vt,
           vt->struct_size < sizeof(*copy) ? vt->struct_size : sizeof(*copy));
    copy->struct_size = sizeof(*copy);
    copy->params = params;
    lm_strategy_vtable **room =
        lm__reserve(ctx, ctx->strategies, &ctx->cap_strategies,
                    ctx->n_strategies, sizeof(*ctx->strategies), 16);
    if (!room) {
        lm_free(ctx, params);
        lm_free(ctx, copy);
        return LM_ERR_OUT_OF_MEMORY;
    }
    ctx->strategies = room;
    ctx->strategies[ctx->n_strategies++] = copy;
    return LM_OK;
}

/* The registry's entry for `name` (to attach a library-internal rule),
 * or NULL with the context's error set. */
static struct registered *registered_named(lm_context *ctx, const char *name)
{
    struct registered *r = (struct registered *)find_registered(ctx, name);
    if (!r)
        lm_context_set_error(ctx, LM_ERR_NOT_FOUND, "no strategy named '%s'",
                             name);
    return r;
}

lm_status lm__strategy_set_linear_rule(lm_context *ctx, const char *name,
                                       lm__linear_rule_fn fn)
{
    struct registered *r = registered_named(ctx, name);
    if (!r)
        return LM_ERR_NOT_FOUND;
    r->linear_rule = fn;
    return LM_OK;
}

lm__linear_rule_fn lm__strategy_linear_rule(const lm_strategy_vtable *vt)
{
    return vt ? ((const struct registered *)vt)->linear_rule : NULL;
}

lm_status lm__strategy_set_sparse_rule(lm_context *ctx, const char *name,
                                       lm__sparse_rule_fn fn)
{
    struct registered *r = registered_named(ctx, name);
    if (!r)
        return LM_ERR_NOT_FOUND;
    r->sparse_rule = fn;
    return LM_OK;
}

lm__sparse_rule_fn lm__strategy_sparse_rule(const lm_strategy_vtable *vt)
{
    return vt ? ((const struct registered *)vt)->sparse_rule : NULL;
}

lm_status lm__strategy_set_sum_rule(lm_context *ctx, const char *name,
                                    const struct lm__sum_rule *rule)
{
    struct registered *r = registered_named(ctx, name);
    if (!r)
        return LM_ERR_NOT_FOUND;
    r->sum_rule = rule;
    return LM_OK;
}

const struct lm__sum_rule *lm__strategy_sum_rule(const lm_strategy_vtable *vt)
{
    return vt ? ((const struct registered *)vt)->sum_rule : NULL;
}

size_t lm_strategy_count(const lm_context *ctx)
{
    return ctx ? ctx->n_strategies : 0;
}

const lm_strategy_vtable *lm_strategy_at(const lm_context *ctx, size_t i)
{
    return ctx && i < ctx->n_strategies ? ctx->strategies[i] : NULL;
}

lm_status lm_strategy_find(const lm_context *ctx, const char *name,
                           const lm_strategy_vtable **out)
{
    if (!ctx || !name || !out)
        return LM_ERR_INVALID_ARGUMENT;
    const lm_strategy_vtable *vt = find_registered(ctx, name);
    if (vt) {
        *out = vt;
        return LM_OK;
    }
    char list[512] = "";
    for (size_t i = 0; i < ctx->n_strategies; i++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s",
                 i ? ", " : "", ctx->strategies[i]->name);
    return lm_context_set_error((lm_context *)ctx, LM_ERR_NOT_FOUND,
                                "no strategy named '%s' (registered: %s)",
                                name, list);
}
