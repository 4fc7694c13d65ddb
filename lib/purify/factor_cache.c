/* Factorisations of W C~ kept across the executions of one purify tuning:
 * they depend on the models, the base, the statistics and the ridge
 * options, not on the keep ratio being tuned, and each is an SVD per task
 * and layer, the bulk of a purified merge. */
#include <string.h>

#include "core/name_set.h"
#include "purify/state.h"

struct entry {
    char *name;
    size_t task;
    struct lm__factored f;
};

struct lm__factor_cache {
    size_t budget, used;
    struct entry *entries;
    size_t n, cap;
    struct lm__name_set keys; /* entries by (name, task) */
};

struct key {
    const char *name;
    size_t task;
};

static bool entry_is(const void *table, size_t i, const void *key)
{
    const struct entry *e = &((const struct entry *)table)[i];
    const struct key *k = key;
    return e->task == k->task && strcmp(e->name, k->name) == 0;
}

static uint64_t key_hash(const struct lm__factor_cache *c, const char *name,
                         size_t task)
{
    return lm__mix64(lm__name_set_hash(&c->keys, name, strlen(name)) ^
                     (uint64_t)task);
}

lm_status lm__factor_cache_begin(struct lm__purify *pu, bool *owned)
{
    *owned = false;
    if (pu->factors)
        return LM_OK;
    pu->factors = lm__calloc(pu->ctx, 1, sizeof(*pu->factors));
    if (!pu->factors)
        return lm_context_set_error(pu->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "purify: out of memory");
    pu->factors->budget = LM__PURIFY_CACHE_BYTES;
    *owned = true;
    return LM_OK;
}

void lm__factor_cache_end(struct lm__purify *pu)
{
    struct lm__factor_cache *c = pu->factors;
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++) {
        lm_free(pu->ctx, c->entries[i].name);
        lm_free(pu->ctx, c->entries[i].f.u);
    }
    lm__name_set_free(pu->ctx, &c->keys);
    lm_free(pu->ctx, c->entries);
    lm_free(pu->ctx, c);
    pu->factors = NULL;
}

static struct entry *find(struct lm__factor_cache *c, const char *name,
                          size_t task)
{
    struct key k = {name, task};
    size_t i = lm__name_set_lookup(&c->keys, key_hash(c, name, task),
                                   entry_is, c->entries, &k);
    return i == SIZE_MAX ? NULL : &c->entries[i];
}

bool lm__factor_cache_get(struct lm__purify *pu, const char *name,
                          size_t task, struct lm__factored *f)
{
    struct lm__factor_cache *c = pu->factors;
    if (!c)
        return false;
    pthread_mutex_lock(&pu->lock);
    struct entry *e = find(c, name, task);
    if (e)
        *f = e->f;
    pthread_mutex_unlock(&pu->lock);
    return e != NULL;
}

lm_status lm__factor_cache_put(struct lm__purify *pu, const char *name,
                               size_t task, struct lm__factored *f,
                               size_t bytes)
{
    struct lm__factor_cache *c = pu->factors;
    if (!c || !f->u || f->borrowed)
        return LM_OK;
    lm_status st = LM_OK;
    pthread_mutex_lock(&pu->lock);
    /* Out of budget: the caller keeps (and frees) its block. */
    if (bytes <= c->budget - c->used && !find(c, name, task)) {
        struct entry *room = lm__reserve(pu->ctx, c->entries, &c->cap, c->n,
                                         sizeof(*c->entries), 64);
        char *copy = room ? lm__strdup(pu->ctx, name) : NULL;
        if (room)
            c->entries = room;
        if (copy) {
            c->entries[c->n] = (struct entry){copy, task, *f};
            c->entries[c->n].f.borrowed = true;
            st = lm__name_set_insert(pu->ctx, &c->keys,
                                     key_hash(c, name, task), c->n);
        } else {
            st = LM_ERR_OUT_OF_MEMORY;
        }
        if (st == LM_OK) {
            f->borrowed = true;
            c->n++;
            c->used += bytes;
        } else {
            lm_free(pu->ctx, copy);
        }
    }
    pthread_mutex_unlock(&pu->lock);
    return st == LM_OK ? LM_OK
                       : lm_context_set_error(pu->ctx, st,
                                              "purify: out of memory "
                                              "caching '%s'", name);
}
