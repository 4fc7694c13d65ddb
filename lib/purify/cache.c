/* Purified task vectors kept across the passes of one execution and the
 * evaluations of one search: purification depends on the models, the base,
 * the statistics and the purify options, none of which a search or a
 * strategy's second pass changes, and it costs an SVD per task and layer. */
#include <string.h>

#include "core/name_set.h"
#include "purify/state.h"

struct entry {
    char *name;
    float *deltas; /* n_models x numel */
    size_t numel;
};

struct lm__purify_cache {
    size_t budget, used;
    struct entry *entries;
    size_t n, cap;
    struct lm__name_set names; /* entries by name */
};

static const char *entry_name(const void *table, size_t i)
{
    return ((const struct entry *)table)[i].name;
}

lm_status lm__purify_cache_begin(struct lm__purify *pu)
{
    if (pu->cache)
        return LM_OK;
    pu->cache = lm__calloc(pu->ctx, 1, sizeof(*pu->cache));
    if (!pu->cache)
        return lm_context_set_error(pu->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "purify: out of memory");
    pu->cache->budget = LM__PURIFY_CACHE_BYTES;
    return LM_OK;
}

void lm__purify_cache_end(struct lm__purify *pu)
{
    struct lm__purify_cache *c = pu->cache;
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++) {
        lm_free(pu->ctx, c->entries[i].name);
        lm_free(pu->ctx, c->entries[i].deltas);
    }
    lm__name_set_free(pu->ctx, &c->names);
    lm_free(pu->ctx, c->entries);
    lm_free(pu->ctx, c);
    pu->cache = NULL;
}

static struct entry *find(struct lm__purify_cache *c, const char *name)
{
    size_t i = lm__name_set_find(&c->names, name, entry_name, c->entries);
    return i == SIZE_MAX ? NULL : &c->entries[i];
}

bool lm__purify_cache_get(struct lm__purify *pu, const char *name,
                          size_t n_models, size_t numel, float *const *deltas)
{
    struct lm__purify_cache *c = pu->cache;
    if (!c)
        return false;
    pthread_mutex_lock(&pu->lock);
    struct entry *e = find(c, name);
    bool hit = e && e->numel == numel;
    for (size_t t = 0; hit && t < n_models; t++)
        memcpy(deltas[t], e->deltas + t * numel, numel * sizeof(float));
    pthread_mutex_unlock(&pu->lock);
    return hit;
}

lm_status lm__purify_cache_put(struct lm__purify *pu, const char *name,
                               size_t n_models, size_t numel,
                               float *const *deltas)
{
    struct lm__purify_cache *c = pu->cache;
    if (!c)
        return LM_OK;
    size_t k = n_models, bytes = numel * k * sizeof(float);
    pthread_mutex_lock(&pu->lock);
    bool fits = numel && bytes / numel / k == sizeof(float) &&
                bytes <= c->budget - c->used && !find(c, name);
    struct entry *room = fits ? lm__reserve(pu->ctx, c->entries, &c->cap,
                                            c->n, sizeof(*c->entries), 64)
                              : NULL;
    struct entry e = {NULL, NULL, numel};
    if (room) {
        c->entries = room;
        e.name = lm__strdup(pu->ctx, name);
        e.deltas = lm__calloc(pu->ctx, numel * k, sizeof(float));
    }
    /* Out of budget: this tensor is purified again; out of memory is an
     * error, as everywhere else. */
    bool stored = false;
    if (e.name && e.deltas) {
        c->entries[c->n] = e;
        stored = lm__name_set_add(pu->ctx, &c->names, c->n, entry_name,
                                  c->entries) == LM_OK;
    }
    if (stored) {
        for (size_t t = 0; t < k; t++)
            memcpy(e.deltas + t * numel, deltas[t], numel * sizeof(float));
        c->n++;
        c->used += bytes;
    } else {
        lm_free(pu->ctx, e.name);
        lm_free(pu->ctx, e.deltas);
    }
    pthread_mutex_unlock(&pu->lock);
    return fits && !stored ? lm_context_set_error(pu->ctx,
                                                  LM_ERR_OUT_OF_MEMORY,
                                                  "purify: out of memory "
                                                  "caching '%s'", name)
                           : LM_OK;
}
