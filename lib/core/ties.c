/* Tied tensors: an output tensor that is the same parameter as another
 * (a language model's lm_head tied to its input embedding). Merging the
 * two separately unties them — DARE draws each tensor's mask from its own
 * name, ESM routes them differently — so a tie is merged once, as its
 * source: the alias's output is the merge of the source's inputs with the
 * source's name (seed, statistics, parameters), and the passes over every
 * tensor (measuring, prepare) skip it.
 *
 * Ties come from lm_plan_tie, or are found in memory: two base tensors
 * sharing storage (same data pointer, dtype and shape) where every model
 * shares it too (as a torch state dict with tied weights does). */
#include <stdlib.h>
#include <string.h>

#include "core/plan_private.h"

lm_status lm_plan_tie(lm_plan *p, const char *tensor, const char *same_as)
{
    if (!p || !tensor || !same_as)
        return LM_ERR_INVALID_ARGUMENT;
    if (strcmp(tensor, same_as) == 0)
        return lm_context_set_error(p->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "plan: tensor '%s' cannot be tied to "
                                    "itself", tensor);
    for (size_t i = 0; i < p->n_ties; i++)
        if (strcmp(p->ties[i].alias, tensor) == 0)
            return lm_context_set_error(p->ctx, LM_ERR_EXISTS,
                                        "plan: tensor '%s' is already tied "
                                        "to '%s'", tensor, p->ties[i].source);
    struct lm__tie *ties = lm__reserve(p->ctx, p->ties, &p->cap_ties,
                                       p->n_ties, sizeof(*ties), 4);
    if (!ties)
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "plan: out of memory");
    p->ties = ties;
    struct lm__tie *t = &p->ties[p->n_ties];
    t->alias = lm__strdup(p->ctx, tensor);
    t->source = lm__strdup(p->ctx, same_as);
    if (!t->alias || !t->source) {
        lm_free(p->ctx, t->alias);
        lm_free(p->ctx, t->source);
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "plan: out of memory");
    }
    p->n_ties++;
    return LM_OK;
}

void lm__ties_free(lm_plan *p)
{
    for (size_t i = 0; i < p->n_ties; i++) {
        lm_free(p->ctx, p->ties[i].alias);
        lm_free(p->ctx, p->ties[i].source);
    }
    lm_free(p->ctx, p->ties);
}

static const void *storage(const lm_tensor *t)
{
    return t && !t->lazy_read ? t->data : NULL;
}

/* Does every model hold `a` and `b` as one parameter too? */
static bool tied_in_every_model(const lm_plan *p, const char *a,
                                const char *b)
{
    for (size_t m = 0; m < p->n_models; m++) {
        const lm_model *holder = p->models[m] ? p->models[m]
                                 : p->tvs[m]  ? p->tvs[m]->deltas
                                              : NULL;
        if (!holder) { /* an adapter: neither may be a target */
            if (lm_lora_find(p->loras[m], a, NULL, NULL, NULL) == LM_OK ||
                lm_lora_find(p->loras[m], b, NULL, NULL, NULL) == LM_OK)
                return false;
            continue;
        }
        const lm_tensor *ta = lm__model_lookup(holder, a);
        const lm_tensor *tb = lm__model_lookup(holder, b);
        if (p->tvs[m] && !ta && !tb)
            continue;
        if (!storage(ta) || storage(ta) != storage(tb))
            return false;
    }
    return true;
}

struct by_storage {
    const void *data;
    size_t index;
};

static int cmp_storage(const void *x, const void *y)
{
    const struct by_storage *a = x, *b = y;
    if (a->data != b->data)
        return (uintptr_t)a->data < (uintptr_t)b->data ? -1 : 1;
    return a->index < b->index ? -1 : a->index > b->index;
}

static bool same_layout(const lm_tensor *a, const lm_tensor *b)
{
    return a->dtype == b->dtype && lm__same_shape(a, b);
}

/* Base tensors sharing storage in the base and in every model. */
static lm_status find_shared(const lm_plan *p, size_t *src)
{
    const lm_model *base = p->base;
    struct by_storage *v =
        lm__calloc(p->ctx, base->count ? base->count : 1, sizeof(*v));
    if (!v)
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "plan: out of memory");
    size_t n = 0;
    for (size_t i = 0; i < base->count; i++)
        if (storage(base->entries[i].tensor))
            v[n++] = (struct by_storage){storage(base->entries[i].tensor), i};
    qsort(v, n, sizeof(*v), cmp_storage);
    for (size_t k = 1; k < n; k++) {
        size_t first = k - 1;
        while (first > 0 && v[first - 1].data == v[k].data)
            first--;
        if (v[first].data != v[k].data)
            continue;
        const struct lm_model_entry *a = &base->entries[v[first].index];
        const struct lm_model_entry *b = &base->entries[v[k].index];
        if (src[v[k].index] == SIZE_MAX && same_layout(a->tensor, b->tensor) &&
            tied_in_every_model(p, a->name, b->name))
            src[v[k].index] = v[first].index;
    }
    lm_free(p->ctx, v);
    return LM_OK;
}

static lm_status base_index(const lm_plan *p, const char *name,
                            const char *role, size_t *out)
{
    *out = lm__model_index(p->base, name);
    if (*out != SIZE_MAX)
        return LM_OK;
    return lm_context_set_error(p->ctx, LM_ERR_NOT_FOUND,
                                "plan: tied tensor '%s' (%s) is not in the "
                                "base model", name, role);
}

lm_status lm__ties_resolve(const lm_plan *p, size_t **out)
{
    size_t n = p->base->count;
    size_t *src = lm__calloc(p->ctx, n ? n : 1, sizeof(*src));
    if (!src)
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "plan: out of memory");
    for (size_t i = 0; i < n; i++)
        src[i] = SIZE_MAX;
    lm_status st = LM_OK;
    for (size_t t = 0; t < p->n_ties && st == LM_OK; t++) {
        size_t a = 0, s = 0; /* set by base_index on success */
        st = base_index(p, p->ties[t].alias, "tied", &a);
        if (st == LM_OK)
            st = base_index(p, p->ties[t].source, "its source", &s);
        if (st != LM_OK)
            break;
        const lm_tensor *ta = p->base->entries[a].tensor;
        const lm_tensor *ts = p->base->entries[s].tensor;
        bool shape = ta->ndim == ts->ndim;
        for (int d = 0; shape && d < ta->ndim; d++)
            shape = ta->shape[d] == ts->shape[d];
        if (!shape)
            st = lm_context_set_error(p->ctx, LM_ERR_SHAPE,
                                      "plan: '%s' is tied to '%s' but their "
                                      "shapes differ", p->ties[t].alias,
                                      p->ties[t].source);
        src[a] = s;
    }
    if (st == LM_OK)
        st = find_shared(p, src);
    /* Follow chains to their root; a cycle has none. */
    for (size_t i = 0; st == LM_OK && i < n; i++) {
        size_t r = i, steps = 0;
        while (src[r] != SIZE_MAX && steps++ <= n)
            r = src[r];
        if (steps > n)
            st = lm_context_set_error(p->ctx, LM_ERR_INVALID_ARGUMENT,
                                      "plan: the ties through '%s' form a "
                                      "cycle", p->base->entries[i].name);
        else if (r != i)
            src[i] = r;
    }
    if (st != LM_OK) {
        lm_free(p->ctx, src);
        return st;
    }
    *out = src;
    return LM_OK;
}

const char *lm__ties_declared_root(const lm_plan *p, const char *name)
{
    for (size_t steps = 0; steps <= p->n_ties; steps++) {
        size_t t = 0;
        while (t < p->n_ties && strcmp(p->ties[t].alias, name) != 0)
            t++;
        if (t == p->n_ties)
            break;
        name = p->ties[t].source;
    }
    return name;
}

/* Without a base, shared storage is looked for in the models: a pair
 * shared in every one is what find_shared ties when the base shares it
 * too (as a tied model's base does). */
const char *lm__ties_shared_in_models(const lm_plan *p, const char *name)
{
    const lm_model *holder = NULL;
    for (size_t m = 0; m < p->n_models && !holder; m++) {
        const lm_model *h = p->models[m] ? p->models[m]
                            : p->tvs[m]  ? p->tvs[m]->deltas
                                         : NULL;
        if (h && lm__model_lookup(h, name))
            holder = h;
    }
    if (!holder)
        return NULL;
    const lm_tensor *t = lm__model_lookup(holder, name);
    const char *root = lm__ties_declared_root(p, name);
    for (size_t i = 0; storage(t) && i < holder->count; i++) {
        const struct lm_model_entry *e = &holder->entries[i];
        if (storage(e->tensor) == storage(t) && strcmp(e->name, name) != 0 &&
            same_layout(e->tensor, t) &&
            strcmp(lm__ties_declared_root(p, e->name), root) != 0 &&
            tied_in_every_model(p, name, e->name))
            return e->name;
    }
    return NULL;
}
