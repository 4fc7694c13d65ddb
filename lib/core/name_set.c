/* Open addressing with linear probing over item indices: the names stay
 * in the caller's table, the set only stores where they are. */
#include <string.h>

#include "core/internal.h"
#include "core/name_set.h"

/* FNV-1a started from the set's seed (a fixed start would let a hostile
 * file pick names that all collide), then mixed. */
static uint64_t hash(uint64_t seed, const char *s, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ULL ^ seed;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    return lm__mix64(h);
}

static bool same(const char *stored, const char *name, size_t len)
{
    return strncmp(stored, name, len) == 0 && stored[len] == '\0';
}

size_t lm__name_set_find_n(const struct lm__name_set *set, const char *name,
                           size_t len, lm__name_of_fn name_of,
                           const void *table)
{
    if (!set->cap)
        return SIZE_MAX;
    size_t mask = set->cap - 1;
    for (size_t slot = (size_t)hash(set->seed, name, len) & mask;
         set->slots[slot]; slot = (slot + 1) & mask)
        if (same(name_of(table, set->slots[slot] - 1), name, len))
            return set->slots[slot] - 1;
    return SIZE_MAX;
}

size_t lm__name_set_find(const struct lm__name_set *set, const char *name,
                         lm__name_of_fn name_of, const void *table)
{
    return lm__name_set_find_n(set, name, strlen(name), name_of, table);
}

static void place(size_t *slots, size_t mask, uint64_t seed, const char *name,
                  size_t item)
{
    size_t slot = (size_t)hash(seed, name, strlen(name)) & mask;
    while (slots[slot])
        slot = (slot + 1) & mask;
    slots[slot] = item + 1;
}

lm_status lm__name_set_add(lm_context *ctx, struct lm__name_set *set,
                           size_t i, lm__name_of_fn name_of,
                           const void *table)
{
    if ((set->count + 1) * 2 > set->cap) {
        size_t cap = set->cap ? set->cap * 2 : 16;
        if (cap < set->cap)
            return LM_ERR_OUT_OF_MEMORY;
        size_t *slots = lm__calloc(ctx, cap, sizeof(*slots));
        if (!slots)
            return LM_ERR_OUT_OF_MEMORY;
        if (!set->cap) /* the set's address differs between runs (ASLR) */
            set->seed = lm__mix64((uint64_t)(uintptr_t)set ^
                                  (uint64_t)(uintptr_t)slots);
        for (size_t s = 0; s < set->cap; s++)
            if (set->slots[s])
                place(slots, cap - 1, set->seed,
                      name_of(table, set->slots[s] - 1), set->slots[s] - 1);
        lm_free(ctx, set->slots);
        set->slots = slots;
        set->cap = cap;
    }
    place(set->slots, set->cap - 1, set->seed, name_of(table, i), i);
    set->count++;
    return LM_OK;
}

void lm__name_set_free(lm_context *ctx, struct lm__name_set *set)
{
    lm_free(ctx, set->slots);
    memset(set, 0, sizeof(*set));
}

const char *lm__name_of_strings(const void *table, size_t i)
{
    return ((const char *const *)table)[i];
}
