/* Open addressing with linear probing. Slots hold the item's index and
 * its hash, so growing never needs the names again and most probes of
 * other names end at a hash comparison. */
#include <string.h>

#include "core/context_private.h"
#include "core/name_set.h"

uint64_t lm__name_set_hash(const struct lm__name_set *set, const char *name,
                           size_t len)
{
    /* FNV-1a started from a per-set seed (the set's address, which ASLR
     * varies between runs), so a hostile file cannot ship names chosen to
     * collide; then mixed for the low bits used as the slot. */
    uint64_t h = 0xcbf29ce484222325ULL ^ lm__mix64((uintptr_t)set);
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)name[i];
        h *= 0x100000001b3ULL;
    }
    return lm__mix64(h);
}

size_t lm__name_set_lookup(const struct lm__name_set *set, uint64_t hash,
                           lm__item_is_fn is, const void *table,
                           const void *key)
{
    if (!set->cap)
        return SIZE_MAX;
    size_t mask = set->cap - 1;
    for (size_t s = (size_t)hash & mask; set->slots[s].item;
         s = (s + 1) & mask)
        if (set->slots[s].hash == hash &&
            is(table, set->slots[s].item - 1, key))
            return set->slots[s].item - 1;
    return SIZE_MAX;
}

static void place(struct lm__name_slot *slots, size_t mask,
                  struct lm__name_slot slot)
{
    size_t s = (size_t)slot.hash & mask;
    while (slots[s].item)
        s = (s + 1) & mask;
    slots[s] = slot;
}

lm_status lm__name_set_insert(lm_context *ctx, struct lm__name_set *set,
                              uint64_t hash, size_t i)
{
    if ((set->count + 1) * 2 > set->cap) {
        size_t cap = set->cap ? set->cap * 2 : 16;
        if (cap < set->cap)
            return LM_ERR_OUT_OF_MEMORY;
        struct lm__name_slot *slots = lm__calloc(ctx, cap, sizeof(*slots));
        if (!slots)
            return LM_ERR_OUT_OF_MEMORY;
        for (size_t s = 0; s < set->cap; s++)
            if (set->slots[s].item)
                place(slots, cap - 1, set->slots[s]);
        lm_free(ctx, set->slots);
        set->slots = slots;
        set->cap = cap;
    }
    place(set->slots, set->cap - 1, (struct lm__name_slot){i + 1, hash});
    set->count++;
    return LM_OK;
}

/* A string key of known length, for the C-string wrappers. */
struct name_key {
    const char *name;
    size_t len;
    lm__name_of_fn name_of;
};

static bool name_is(const void *table, size_t i, const void *key)
{
    const struct name_key *k = key;
    const char *stored = k->name_of(table, i);
    return strncmp(stored, k->name, k->len) == 0 && stored[k->len] == '\0';
}

size_t lm__name_set_find_n(const struct lm__name_set *set, const char *name,
                           size_t len, lm__name_of_fn name_of,
                           const void *table)
{
    if (!set->cap)
        return SIZE_MAX;
    struct name_key key = {name, len, name_of};
    return lm__name_set_lookup(set, lm__name_set_hash(set, name, len),
                               name_is, table, &key);
}

size_t lm__name_set_find(const struct lm__name_set *set, const char *name,
                         lm__name_of_fn name_of, const void *table)
{
    return lm__name_set_find_n(set, name, strlen(name), name_of, table);
}

lm_status lm__name_set_add(lm_context *ctx, struct lm__name_set *set,
                           size_t i, lm__name_of_fn name_of,
                           const void *table)
{
    const char *name = name_of(table, i);
    return lm__name_set_insert(ctx, set,
                               lm__name_set_hash(set, name, strlen(name)), i);
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
