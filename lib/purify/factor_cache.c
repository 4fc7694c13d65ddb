/* Factorisations of W C~ kept across the executions of one purify tuning:
 * they depend on the models, the base, the statistics and the ridge
 * options, not on the keep ratio being tuned, and each is an SVD per task
 * and layer, the bulk of a purified merge. */
#include <string.h>

#include "purify/factors.h"

struct entry {
    char *name;
    size_t task;
    struct lm__factored f;
};

struct lm__factor_cache {
    size_t budget, used;
    struct entry *entries;
    size_t n, cap;
};

lm_status lm__factor_cache_begin(lm_plan *p, bool *owned)
{
    *owned = false;
    if (p->factor_cache)
        return LM_OK;
    p->factor_cache = lm__calloc(p->ctx, 1, sizeof(*p->factor_cache));
    if (!p->factor_cache)
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "purify: out of memory");
    p->factor_cache->budget = LM__PURIFY_CACHE_BYTES;
    *owned = true;
    return LM_OK;
}

void lm__factor_cache_end(lm_plan *p)
{
    struct lm__factor_cache *c = p->factor_cache;
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++) {
        lm_free(p->ctx, c->entries[i].name);
        lm_free(p->ctx, c->entries[i].f.u);
    }
    lm_free(p->ctx, c->entries);
    lm_free(p->ctx, c);
    p->factor_cache = NULL;
}

static struct entry *find(struct lm__factor_cache *c, const char *name,
                          size_t task)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->entries[i].task == task &&
            strcmp(c->entries[i].name, name) == 0)
            return &c->entries[i];
    return NULL;
}

bool lm__factor_cache_get(lm_plan *p, const char *name, size_t task,
                          struct lm__factored *f)
{
    struct lm__factor_cache *c = p->factor_cache;
    if (!c)
        return false;
    pthread_mutex_lock(&p->purify_lock);
    struct entry *e = find(c, name, task);
    if (e)
        *f = e->f;
    pthread_mutex_unlock(&p->purify_lock);
    return e != NULL;
}

lm_status lm__factor_cache_put(lm_plan *p, const char *name, size_t task,
                               struct lm__factored *f, size_t bytes)
{
    struct lm__factor_cache *c = p->factor_cache;
    if (!c || !f->u || f->borrowed)
        return LM_OK;
    lm_status st = LM_OK;
    pthread_mutex_lock(&p->purify_lock);
    /* Out of budget: the caller keeps (and frees) its block. */
    if (bytes <= c->budget - c->used && !find(c, name, task)) {
        struct entry *room = lm__reserve(p->ctx, c->entries, &c->cap, c->n,
                                         sizeof(*c->entries), 64);
        char *copy = room ? lm__strdup(p->ctx, name) : NULL;
        if (room)
            c->entries = room;
        if (copy) {
            f->borrowed = true;
            c->entries[c->n++] = (struct entry){copy, task, *f};
            c->used += bytes;
        } else {
            st = LM_ERR_OUT_OF_MEMORY;
        }
    }
    pthread_mutex_unlock(&p->purify_lock);
    return st == LM_OK ? LM_OK
                       : lm_context_set_error(p->ctx, st,
                                              "purify: out of memory");
}
