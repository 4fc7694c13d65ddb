/* Token text -> id lookups for vocabularies of 10^5 tokens and more: open
 * addressing with FNV-1a, the table kept at most half full. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static size_t slot_of(const struct tok_map *m, const char *key)
{
    size_t i = (size_t)fnv1a(key) & (m->cap - 1);
    while (m->keys[i] && strcmp(m->keys[i], key) != 0)
        i = (i + 1) & (m->cap - 1);
    return i;
}

static int grow(struct tok_map *m)
{
    size_t cap = m->cap ? m->cap * 2 : 64;
    struct tok_map n = {calloc(cap, sizeof(char *)),
                        malloc(cap * sizeof(int64_t)), cap, 0};
    if (!n.keys || !n.ids) {
        free(n.keys);
        free(n.ids);
        return -1;
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->keys[i])
            continue;
        size_t s = slot_of(&n, m->keys[i]);
        n.keys[s] = m->keys[i];
        n.ids[s] = m->ids[i];
        n.n++;
    }
    tok_map_free(m);
    *m = n;
    return 0;
}

/* Inserts or replaces. Returns -1 when out of memory. */
int tok_map_put(struct tok_map *m, const char *key, int64_t id)
{
    if ((m->n + 1) * 2 > m->cap && grow(m))
        return -1;
    size_t s = slot_of(m, key);
    if (!m->keys[s]) {
        m->keys[s] = key;
        m->n++;
    }
    m->ids[s] = id;
    return 0;
}

int64_t tok_map_get(const struct tok_map *m, const char *key)
{
    if (!m->cap)
        return -1;
    size_t s = slot_of(m, key);
    return m->keys[s] ? m->ids[s] : -1;
}

void tok_map_free(struct tok_map *m)
{
    free(m->keys);
    free(m->ids);
    memset(m, 0, sizeof(*m));
}
