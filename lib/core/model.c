/* Named tensor sets with insertion order and hashed lookup. */
#include <string.h>

#include "core/model_private.h"

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
    lm__name_set_free(m->ctx, &m->names);
    lm__name_set_free(m->ctx, &m->meta_names);
    for (size_t i = 0; i < m->n_meta; i++) {
        lm_free(m->ctx, m->meta_keys[i]);
        lm_free(m->ctx, m->meta_values[i]);
    }
    lm_free(m->ctx, m->meta_keys);
    lm_free(m->ctx, m->meta_values);
    if (m->attachment_destroy)
        m->attachment_destroy(m->ctx, m->attachment);
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

lm_status lm__model_attach(lm_model *m, const void *tag, void *data,
                           void (*destroy)(lm_context *ctx, void *data))
{
    if (!m || !tag)
        return LM_ERR_INVALID_ARGUMENT;
    if (m->attachment_tag)
        return LM_ERR_STATE;
    m->attachment_tag = tag;
    m->attachment = data;
    m->attachment_destroy = destroy;
    return LM_OK;
}

void *lm__model_attachment(const lm_model *m, const void *tag)
{
    return m && tag && m->attachment_tag == tag ? m->attachment : NULL;
}

static const char *entry_name(const void *entries, size_t i)
{
    return ((const struct lm_model_entry *)entries)[i].name;
}

size_t lm__model_index(const lm_model *m, const char *name)
{
    return lm__name_set_find(&m->names, name, entry_name, m->entries);
}

lm_status lm_model_add(lm_model *m, const char *name, lm_tensor *tensor)
{
    if (!m || !tensor)
        return LM_ERR_INVALID_ARGUMENT;
    if (!name || !*name)
        return lm_context_set_error(m->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "model: tensor name is empty");
    if (lm__model_index(m, name) != SIZE_MAX)
        return lm_context_set_error(m->ctx, LM_ERR_EXISTS,
                                    "model: duplicate tensor name '%s'", name);
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
    if (lm__name_set_add(m->ctx, &m->names, m->count, entry_name,
                         m->entries) != LM_OK) {
        lm_free(m->ctx, copy);
        return lm_context_set_error(m->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "model: out of memory adding '%s'", name);
    }
    m->count++;
    return LM_OK;
}

size_t lm_model_count(const lm_model *m) { return m ? m->count : 0; }

const char *lm_model_name_at(const lm_model *m, size_t i)
{
    return m && i < m->count ? m->entries[i].name : NULL;
}

lm_tensor *lm_model_at(const lm_model *m, size_t i)
{
    return m && i < m->count ? m->entries[i].tensor : NULL;
}

lm_tensor *lm__model_lookup(const lm_model *m, const char *name)
{
    size_t e = lm__model_index(m, name);
    return e != SIZE_MAX ? m->entries[e].tensor : NULL;
}

lm_status lm_model_find(const lm_model *m, const char *name, lm_tensor **out)
{
    if (!m || !name || !out)
        return LM_ERR_INVALID_ARGUMENT;
    size_t e = lm__model_index(m, name);
    if (e != SIZE_MAX) {
        *out = m->entries[e].tensor;
        return LM_OK;
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
        return lm_context_set_error(m->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "model: out of memory for metadata '%s'",
                                    key);
    size_t i = lm__name_set_find(&m->meta_names, key, lm__name_of_strings,
                                 m->meta_keys);
    if (i != SIZE_MAX) {
        lm_free(m->ctx, m->meta_values[i]);
        m->meta_values[i] = v;
        return LM_OK;
    }
    /* Keys and values grow together (geometrically, so loading n keys
     * costs O(n)); values get the same capacity as keys. */
    size_t cap = m->meta_cap;
    char **keys = lm__reserve(m->ctx, m->meta_keys, &cap, m->n_meta,
                              sizeof(char *), 16);
    char *k = keys ? lm__strdup(m->ctx, key) : NULL;
    if (keys)
        m->meta_keys = keys;
    if (k && cap != m->meta_cap) {
        size_t vcap = m->meta_cap;
        char **values = lm__reserve(m->ctx, m->meta_values, &vcap, m->n_meta,
                                    sizeof(char *), 16);
        if (values) {
            m->meta_values = values;
            m->meta_cap = cap;
        } else {
            lm_free(m->ctx, k);
            k = NULL;
        }
    }
    if (k) {
        m->meta_keys[m->n_meta] = k;
        if (lm__name_set_add(m->ctx, &m->meta_names, m->n_meta,
                             lm__name_of_strings, m->meta_keys) != LM_OK) {
            lm_free(m->ctx, k);
            k = NULL;
        }
    }
    if (!k) {
        lm_free(m->ctx, v);
        return lm_context_set_error(m->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "model: out of memory for metadata '%s'",
                                    key);
    }
    m->meta_values[m->n_meta++] = v;
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

lm_status lm_model_metadata_find(const lm_model *m, const char *key,
                            const char **value)
{
    if (!m || !key)
        return LM_ERR_INVALID_ARGUMENT;
    size_t i = lm__name_set_find(&m->meta_names, key, lm__name_of_strings,
                                 m->meta_keys);
    if (i == SIZE_MAX)
        return LM_ERR_NOT_FOUND;
    if (value)
        *value = m->meta_values[i];
    return LM_OK;
}
