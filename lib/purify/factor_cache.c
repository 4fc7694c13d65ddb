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

bool lm__factor_cache_begin(lm_plan *p)
{
    if (p->factor_cache)
        return false;
    p->factor_cache = lm__calloc(p->ctx, 1, sizeof(*p->factor_cache));
    if (!p->factor_cache)
        return false; /* no cache: every execution factors again */
    p->factor_cache->budget = LM__PURIFY_CACHE_BYTES;
    return true;
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

void lm__factor_cache_put(lm_plan *p, const char *name, size_t task,
                          struct lm__factored *f, size_t bytes)
{
    struct lm__factor_cache *c = p->factor_cache;
    if (!c || !f->u || f->borrowed)
        return;
    pthread_mutex_lock(&p->purify_lock);
    bool fits = bytes <= c->budget - c->used && !find(c, name, task);
    struct entry *room = fits ? lm__reserve(p->ctx, c->entries, &c->cap, c->n,
                                            sizeof(*c->entries), 64)
                              : NULL;
    char *copy = NULL;
    if (room) {
        c->entries = room;
        copy = lm__strdup(p->ctx, name);
    }
    /* Out of budget or memory: the caller keeps (and frees) its block. */
    if (copy) {
        f->borrowed = true;
        c->entries[c->n++] = (struct entry){copy, task, *f};
        c->used += bytes;
    }
    pthread_mutex_unlock(&p->purify_lock);
}
