/* The library's one hashed name lookup: an open-addressing index over a
 * table the caller owns (model tensors, metadata keys, LoRA targets,
 * statistics keys, a reader's names). Every name table that can come from
 * a file goes through it, so loading stays linear in the number of
 * names. */
#ifndef LM_CORE_NAME_SET_H
#define LM_CORE_NAME_SET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "libmerge/context.h"

struct lm__name_slot {
    size_t item; /* item index + 1; 0 marks an empty slot */
    uint64_t hash;
};

/* Zero-initialise; no allocation until the first add. The set must not
 * be moved (copied) once used: its address seeds its hash. */
struct lm__name_set {
    struct lm__name_slot *slots;
    size_t cap; /* power of two (0 before the first add) */
    size_t count;
};

/* The name of item `i` of the caller's table. */
typedef const char *(*lm__name_of_fn)(const void *table, size_t i);

/* Names as C strings. find: index of the item named `name` (the first
 * `len` bytes for find_n), or SIZE_MAX. add: index item `i`, whose name
 * must not be in the set yet; grows by doubling to keep the load at most
 * 1/2; LM_ERR_OUT_OF_MEMORY (no message, the set unchanged) on failure. */
size_t lm__name_set_find_n(const struct lm__name_set *set, const char *name,
                           size_t len, lm__name_of_fn name_of,
                           const void *table);
size_t lm__name_set_find(const struct lm__name_set *set, const char *name,
                         lm__name_of_fn name_of, const void *table);
lm_status lm__name_set_add(lm_context *ctx, struct lm__name_set *set,
                           size_t i, lm__name_of_fn name_of,
                           const void *table);

/* Composite keys (e.g. a model index and a name): the caller hashes with
 * lm__name_set_hash (mixing in whatever else the key holds) and says
 * whether item i matches `key`. */
uint64_t lm__name_set_hash(const struct lm__name_set *set, const char *name,
                           size_t len);
typedef bool (*lm__item_is_fn)(const void *table, size_t i, const void *key);
size_t lm__name_set_lookup(const struct lm__name_set *set, uint64_t hash,
                           lm__item_is_fn is, const void *table,
                           const void *key);
lm_status lm__name_set_insert(lm_context *ctx, struct lm__name_set *set,
                              uint64_t hash, size_t i);

void lm__name_set_free(lm_context *ctx, struct lm__name_set *set);

/* name_of for a plain array of C strings (const char *const *). */
const char *lm__name_of_strings(const void *table, size_t i);

#endif
