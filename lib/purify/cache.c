/* Purified task vectors kept across the passes of one execution and the
 * evaluations of one search: purification depends on the models, the base,
 * the statistics and the purify options, none of which a search or a
 * strategy's second pass changes, and it costs an SVD per task and layer. */
#include <string.h>

#include "core/internal.h"

struct entry {
    char *name;
    float *deltas; /* n_models x numel */
    size_t numel;
};

struct lm__purify_cache {
    size_t budget, used;
    struct entry *entries;
    size_t n, cap;
    /* LM_PURIFY_MODEL: the plan's purify_kept/full are measured. */
    bool measured;
};

lm_status lm__purify_cache_begin(lm_plan *p, bool *owned)
{
    *owned = false;
    if (p->purify_cache)
        return LM_OK;
    p->purify_cache = lm__calloc(p->ctx, 1, sizeof(*p->purify_cache));
    if (!p->purify_cache)
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "purify: out of memory");
    p->purify_cache->budget = LM__PURIFY_CACHE_BYTES;
    *owned = true;
    return LM_OK;
}

void lm__purify_cache_end(lm_plan *p)
{
    struct lm__purify_cache *c = p->purify_cache;
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++) {
        lm_free(p->ctx, c->entries[i].name);
        lm_free(p->ctx, c->entries[i].deltas);
    }
    lm_free(p->ctx, c->entries);
    lm_free(p->ctx, c);
    p->purify_cache = NULL;
}

bool lm__purify_cache_measured(const lm_plan *p)
{
    return p->purify_cache && p->purify_cache->measured;
}

void lm__purify_cache_set_measured(lm_plan *p)
{
    if (p->purify_cache)
        p->purify_cache->measured = true;
}

static struct entry *find(struct lm__purify_cache *c, const char *name)
{
    for (size_t i = 0; i < c->n; i++)
        if (strcmp(c->entries[i].name, name) == 0)
            return &c->entries[i];
    return NULL;
}

bool lm__purify_cache_get(lm_plan *p, const char *name, size_t numel,
                          float *const *deltas)
{
    struct lm__purify_cache *c = p->purify_cache;
    if (!c)
        return false;
    pthread_mutex_lock(&p->purify_lock);
    struct entry *e = find(c, name);
    bool hit = e && e->numel == numel;
    for (size_t t = 0; hit && t < p->n_models; t++)
        memcpy(deltas[t], e->deltas + t * numel, numel * sizeof(float));
    pthread_mutex_unlock(&p->purify_lock);
    return hit;
}

lm_status lm__purify_cache_put(lm_plan *p, const char *name, size_t numel,
                               float *const *deltas)
{
    struct lm__purify_cache *c = p->purify_cache;
    if (!c)
        return LM_OK;
    size_t k = p->n_models, bytes = numel * k * sizeof(float);
    pthread_mutex_lock(&p->purify_lock);
    bool fits = numel && bytes / numel / k == sizeof(float) &&
                bytes <= c->budget - c->used && !find(c, name);
    struct entry *room = fits ? lm__reserve(p->ctx, c->entries, &c->cap, c->n,
                                            sizeof(*c->entries), 64)
                              : NULL;
    struct entry e = {NULL, NULL, numel};
    if (room) {
        c->entries = room;
        e.name = lm__strdup(p->ctx, name);
        e.deltas = lm__calloc(p->ctx, numel * k, sizeof(float));
    }
    /* Out of budget: this tensor is purified again; out of memory is an
     * error, as everywhere else. */
    bool oom = fits && !(e.name && e.deltas);
    if (e.name && e.deltas) {
        for (size_t t = 0; t < k; t++)
            memcpy(e.deltas + t * numel, deltas[t], numel * sizeof(float));
        c->entries[c->n++] = e;
        c->used += bytes;
    } else {
        lm_free(p->ctx, e.name);
        lm_free(p->ctx, e.deltas);
    }
    pthread_mutex_unlock(&p->purify_lock);
    return oom ? lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                      "purify: out of memory")
               : LM_OK;
}
