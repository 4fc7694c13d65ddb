/* Named tensor sets with insertion order and hashed lookup. */
#include <string.h>

#include "core/internal.h"

lm_status lm_model_create(lm_context *ctx, lm_model **out)
{
    if (!ctx || !out)
        return LM_ERR_INVALID_ARGUMENT;
    lm_model *m = lm__calloc(ctx, 1, sizeof(*m));
    if (!m)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "model: out of memory");
    m->ctx = ctx;
    *out = m;
    return LM_OK;
}

void lm_model_destroy(lm_model *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->count; i++) {
        lm_tensor_destroy(m->entries[i].tensor);
        lm_free(m->ctx, m->entries[i].name);
    }
    lm_free(m->ctx, m->entries);
    lm_free(m->ctx, m->index);
    for (size_t i = 0; i < m->n_meta; i++) {
        lm_free(m->ctx, m->meta_keys[i]);
        lm_free(m->ctx, m->meta_values[i]);
    }
    lm_free(m->ctx, m->meta_keys);
    lm_free(m->ctx, m->meta_values);
    if (m->release)
        m->release(m->resource);
    lm_free(m->ctx, m);
}

lm_status lm__model_attach_resource(lm_model *m, void (*release)(void *),
                                    void *resource)
{
    if (!m || !release)
        return LM_ERR_INVALID_ARGUMENT;
    if (m->release)
        return LM_ERR_STATE;
    m->release = release;
    m->resource = resource;
    return LM_OK;
}

/* Slot holding `name`, or the empty slot where it would go. */
static size_t probe(const lm_model *m, const char *name)
{
    size_t mask = m->index_cap - 1;
    size_t slot = (size_t)lm__hash_string(0, name) & mask;
    while (m->index[slot] &&
           strcmp(m->entries[m->index[slot] - 1].name, name) != 0)
        slot = (slot + 1) & mask;
    return slot;
}

static lm_status grow_index(lm_model *m)
{
    size_t cap = m->index_cap ? m->index_cap * 2 : 16;
    size_t *index = lm__calloc(m->ctx, cap, sizeof(*index));
    if (!index)
        return LM_ERR_OUT_OF_MEMORY;
    lm_free(m->ctx, m->index);
    m->index = index;
    m->index_cap = cap;
    for (size_t i = 0; i < m->count; i++)
        m->index[probe(m, m->entries[i].name)] = i + 1;
    return LM_OK;
}

lm_status lm_model_add(lm_model *m, const char *name, lm_tensor *tensor)
{
    if (!m || !tensor)
        return LM_ERR_INVALID_ARGUMENT;
    if (!name || !*name)
        return lm_context_set_error(m->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "model: tensor name is empty");
    if (m->index_cap && m->index[probe(m, name)])
        return lm_context_set_error(m->ctx, LM_ERR_EXISTS,
                                    "model: duplicate tensor name '%s'", name);
    if ((m->count + 1) * 2 > m->index_cap && grow_index(m) != LM_OK)
        return lm_context_set_error(m->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "model: out of memory adding '%s'", name);
    struct lm_model_entry *room = lm__reserve(m->ctx, m->entries, &m->cap,
                                              m->count, sizeof(*m->entries), 16);
    if (!room)
        return lm_context_set_error(m->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "model: out of memory adding '%s'", name);
    m->entries = room;
    char *copy = lm__strdup(m->ctx, name);
    if (!copy)
        return lm_context_set_error(m->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "model: out of memory adding '%s'", name);
    m->entries[m->count].name = copy;
    m->entries[m->count].tensor = tensor;
    m->count++;
    m->index[probe(m, name)] = m->count;
    return LM_OK;
}

size_t lm_model_count(const lm_model *m) { return m ? m->count : 0; }

const char *lm_model_name(const lm_model *m, size_t i)
{
    return m && i < m->count ? m->entries[i].name : NULL;
}

lm_tensor *lm_model_tensor(const lm_model *m, size_t i)
{
    return m && i < m->count ? m->entries[i].tensor : NULL;
}

lm_tensor *lm__model_lookup(const lm_model *m, const char *name)
{
    if (!m->index_cap)
        return NULL;
    size_t e = m->index[probe(m, name)];
    return e ? m->entries[e - 1].tensor : NULL;
}

lm_status lm_model_find(const lm_model *m, const char *name, lm_tensor **out)
{
    if (!m || !name || !out)
        return LM_ERR_INVALID_ARGUMENT;
    if (m->index_cap) {
        size_t e = m->index[probe(m, name)];
        if (e) {
            *out = m->entries[e - 1].tensor;
            return LM_OK;
        }
    }
    return lm_context_set_error(m->ctx, LM_ERR_NOT_FOUND,
                                "model: no tensor named '%s'", name);
}

lm_status lm_model_add_lazy(lm_model *m, const char *name, lm_dtype dtype,
                            int ndim, const int64_t *shape,
                            lm_tensor_read_fn read, void *user)
{
    if (!m || !read)
        return LM_ERR_INVALID_ARGUMENT;
    lm_tensor *t;
    LM_TRY(lm__tensor_create_lazy(m->ctx, dtype, ndim, shape, read, user, &t));
    lm_status st = lm_model_add(m, name, t);
    if (st != LM_OK) {
        lm_tensor_destroy(t);
        return st;
    }
    t->lazy_name = m->entries[m->count - 1].name;
    return LM_OK;
}

lm_status lm_model_set_metadata(lm_model *m, const char *key,
                                const char *value)
{
    if (!m || !key || !value)
        return LM_ERR_INVALID_ARGUMENT;
    char *v = lm__strdup(m->ctx, value);
    if (!v)
        return LM_ERR_OUT_OF_MEMORY;
    for (size_t i = 0; i < m->n_meta; i++) {
        if (strcmp(m->meta_keys[i], key) == 0) {
            lm_free(m->ctx, m->meta_values[i]);
            m->meta_values[i] = v;
            return LM_OK;
        }
    }
    char *k = lm__strdup(m->ctx, key);
    char **keys = lm__calloc(m->ctx, m->n_meta + 1, sizeof(char *));
    char **values = lm__calloc(m->ctx, m->n_meta + 1, sizeof(char *));
    if (!k || !keys || !values) {
        lm_free(m->ctx, k);
        lm_free(m->ctx, v);
        lm_free(m->ctx, keys);
        lm_free(m->ctx, values);
        return lm_context_set_error(m->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "model: out of memory for metadata");
    }
    if (m->n_meta) {
        memcpy(keys, m->meta_keys, m->n_meta * sizeof(char *));
        memcpy(values, m->meta_values, m->n_meta * sizeof(char *));
    }
    keys[m->n_meta] = k;
    values[m->n_meta] = v;
    lm_free(m->ctx, m->meta_keys);
    lm_free(m->ctx, m->meta_values);
    m->meta_keys = keys;
    m->meta_values = values;
    m->n_meta++;
    return LM_OK;
}

size_t lm_model_metadata_count(const lm_model *m) { return m ? m->n_meta : 0; }

lm_status lm_model_metadata_at(const lm_model *m, size_t i, const char **key,
                               const char **value)
{
    if (!m || i >= m->n_meta)
        return LM_ERR_OUT_OF_RANGE;
    if (key)
        *key = m->meta_keys[i];
    if (value)
        *value = m->meta_values[i];
    return LM_OK;
}

lm_status lm_model_metadata(const lm_model *m, const char *key,
                            const char **value)
{
    if (!m || !key)
        return LM_ERR_INVALID_ARGUMENT;
    for (size_t i = 0; i < m->n_meta; i++) {
        if (strcmp(m->meta_keys[i], key) == 0) {
            if (value)
                *value = m->meta_values[i];
            return LM_OK;
        }
    }
    return LM_ERR_NOT_FOUND;
}
