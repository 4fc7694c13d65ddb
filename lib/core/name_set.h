/* The library's one hashed name lookup: an open-addressing index over a
 * table the caller owns (model tensors, metadata keys, a reader's names).
 * Every name table that can come from a file goes through it, so loading
 * stays linear in the number of names. */
#ifndef LM_CORE_NAME_SET_H
#define LM_CORE_NAME_SET_H

#include <stddef.h>
#include <stdint.h>

#include "libmerge.h"

/* Zero-initialise; no allocation until the first add. */
struct lm__name_set {
    size_t *slots; /* item index + 1; 0 marks an empty slot */
    size_t cap;    /* power of two (0 before the first add) */
    size_t count;
    uint64_t seed; /* per set, so colliding names cannot be precomputed */
};

/* The name of item `i` of the caller's table. */
typedef const char *(*lm__name_of_fn)(const void *table, size_t i);

/* Index of the item named `name` (the first `len` bytes, compared as a
 * string of exactly that length), or SIZE_MAX. */
size_t lm__name_set_find_n(const struct lm__name_set *set, const char *name,
                           size_t len, lm__name_of_fn name_of,
                           const void *table);
size_t lm__name_set_find(const struct lm__name_set *set, const char *name,
                         lm__name_of_fn name_of, const void *table);

/* Index item `i`, whose name must not be in the set yet. Grows by
 * doubling (rehashing through name_of) to keep the load at most 1/2.
 * LM_ERR_OUT_OF_MEMORY (no message, the set unchanged) on failure. */
lm_status lm__name_set_add(lm_context *ctx, struct lm__name_set *set,
                           size_t i, lm__name_of_fn name_of,
                           const void *table);

void lm__name_set_free(lm_context *ctx, struct lm__name_set *set);

/* name_of for a plain array of C strings (const char *const *). */
const char *lm__name_of_strings(const void *table, size_t i);

#endif
