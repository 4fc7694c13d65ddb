/* The safetensors writer of the file sink (file_writer.h): each file's
 * header (u64 length, JSON padded with spaces so data starts at a multiple
 * of 8), shard names and the Hugging Face index of a sharded output. */
#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "io/atomic_file.h"
#include "io/file_writer.h"
#include "io/paths.h"
#include "libmerge/safetensors.h"

#define WHAT "safetensors sink"

static const char *st_dtype(lm_dtype d)
{
    switch (d) {
    case LM_F32: return "F32";
    case LM_F16: return "F16";
    case LM_BF16: return "BF16";
    case LM_F64: return "F64";
    default: return NULL;
    }
}

static lm_status check(lm_context *ctx, const lm_tensor_desc *outputs,
                       size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!st_dtype(outputs[i].dtype))
            return lm_context_set_error(ctx, LM_ERR_DTYPE,
                                        WHAT ": tensor '%s' has unknown "
                                        "dtype", outputs[i].name);
    return LM_OK;
}

/* An integer as raw JSON: cJSON numbers are doubles, exact only to 2^53. */
static cJSON *raw_u64(uint64_t v)
{
    char buf[24];
    snprintf(buf, sizeof(buf), "%" PRIu64, v);
    return cJSON_CreateRaw(buf);
}

/* Adds `item` under `key`, or deletes it: cJSON_AddItemToObject copies the
 * key, and when that allocation fails it neither adds nor frees the item. */
static bool add_or_delete(cJSON *object, const char *key, cJSON *item)
{
    if (item && object && cJSON_AddItemToObject(object, key, item))
        return true;
    cJSON_Delete(item);
    return false;
}

/* {"dtype": ..., "shape": [...], "data_offsets": [begin, end]} */
static bool add_tensor(cJSON *root, const lm_tensor_desc *d, uint64_t off)
{
    cJSON *t = cJSON_AddObjectToObject(root, d->name);
    if (!t || !cJSON_AddStringToObject(t, "dtype", st_dtype(d->dtype)))
        return false;
    cJSON *shape = cJSON_CreateArray();
    bool ok = shape != NULL;
    for (int j = 0; ok && j < d->ndim; j++) {
        cJSON *dim = raw_u64((uint64_t)d->shape[j]);
        ok = dim && cJSON_AddItemToArray(shape, dim);
    }
    if (!ok) {
        cJSON_Delete(shape);
        return false;
    }
    if (!add_or_delete(t, "shape", shape))
        return false;
    cJSON *offs = cJSON_CreateArray();
    cJSON *ends[2] = {raw_u64(off), raw_u64(off + d->nbytes)};
    ok = offs != NULL;
    for (int j = 0; j < 2; j++) {
        if (ok && ends[j] && cJSON_AddItemToArray(offs, ends[j]))
            continue;
        cJSON_Delete(ends[j]); /* not in the array */
        ok = false;
    }
    if (!ok) {
        cJSON_Delete(offs);
        return false;
    }
    return add_or_delete(t, "data_offsets", offs);
}

/* The header JSON of shard k (cJSON_free), offsets relative to the data. */
static char *header_json(const struct lm__sink_layout *l, size_t k)
{
    cJSON *root = cJSON_CreateObject();
    bool ok = root != NULL;
    if (ok && l->n_meta) {
        cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
        ok = meta != NULL;
        for (size_t i = 0; ok && i < l->n_meta; i++)
            ok = cJSON_AddStringToObject(meta, l->meta_keys[i],
                                         l->meta_values[i]) != NULL;
    }
    uint64_t off = 0;
    for (size_t i = 0; ok && i < l->n; i++) {
        if (l->shard[i] != k)
            continue;
        ok = add_tensor(root, &l->outputs[i], off);
        l->offset[i] = off;
        off += l->outputs[i].nbytes;
    }
    char *json = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return json;
}

static lm_status header(lm_context *ctx, const void *config,
                        struct lm__sink_layout *l, size_t k,
                        unsigned char **bytes, size_t *len,
                        uint64_t *file_len)
{
    (void)config;
    char *json = header_json(l, k);
    if (!json)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    WHAT ": out of memory building the "
                                    "header");
    size_t n = strlen(json), padded = (n + 7) / 8 * 8;
    unsigned char *out = lm_alloc(ctx, 8 + padded);
    if (!out) {
        cJSON_free(json);
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    WHAT ": out of memory building the "
                                    "header");
    }
    for (int b = 0; b < 8; b++)
        out[b] = (unsigned char)((uint64_t)padded >> (8 * b));
    memcpy(out + 8, json, n);
    memset(out + 8 + n, ' ', padded - n);
    cJSON_free(json);
    uint64_t data_start = 8 + padded, data_bytes = 0;
    for (size_t i = 0; i < l->n; i++)
        if (l->shard[i] == k) {
            l->offset[i] += data_start;
            data_bytes += l->outputs[i].nbytes;
        }
    *bytes = out;
    *len = 8 + padded;
    *file_len = data_start + data_bytes;
    return LM_OK;
}

static void shard_name(size_t k, size_t n, char *buf, size_t size)
{
    snprintf(buf, size, "model-%05zu-of-%05zu.safetensors", k + 1, n);
}

/* The index JSON (cJSON_free): metadata with total_size, weight_map. */
static char *index_json(const struct lm__sink_layout *l,
                        const char *const *shard_names)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *meta = root ? cJSON_AddObjectToObject(root, "metadata") : NULL;
    cJSON *map = root ? cJSON_AddObjectToObject(root, "weight_map") : NULL;
    bool ok = meta && map &&
              add_or_delete(meta, "total_size", raw_u64(l->total_bytes));
    for (size_t i = 0; ok && i < l->n_meta; i++)
        ok = cJSON_AddStringToObject(meta, l->meta_keys[i],
                                     l->meta_values[i]) != NULL;
    for (size_t i = 0; ok && i < l->n; i++)
        ok = cJSON_AddStringToObject(map, l->names[i],
                                     shard_names[l->shard[i]]) != NULL;
    char *json = ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    return json;
}

/* model.safetensors.index.json inside the staging directory. */
static lm_status write_index(lm_context *ctx, const struct lm__sink_layout *l,
                             const char *const *shard_names, const char *dir,
                             const char *dest)
{
    char *json = index_json(l, shard_names);
    if (!json)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory building the index of "
                                    "'%s'", dest);
    char *path = lm__path_join(ctx, dir, "model.safetensors.index.json");
    lm_status st = LM_OK;
    int fd = -1;
    size_t n = strlen(json);
    if (!path)
        st = lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                  "out of memory writing the index of '%s'",
                                  dest);
    else if ((fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
                        0666)) < 0 ||
             lm__pwrite_all(fd, json, n, 0) ||
             lm__pwrite_all(fd, "\n", 1, n))
        st = lm_context_set_error(ctx, LM_ERR_IO, "cannot write '%s': %s",
                                  path, strerror(errno));
    if (fd >= 0 && close(fd) && st == LM_OK)
        st = lm_context_set_error(ctx, LM_ERR_IO, "cannot write '%s': %s",
                                  path, strerror(errno));
    lm_free(ctx, path);
    cJSON_free(json);
    return st;
}

static const struct lm__file_writer safetensors_writer = {
    WHAT, check, header, shard_name, write_index, NULL, NULL, NULL};

lm_status lm_safetensors_sink_create(lm_context *ctx, const char *path,
                                     const lm_safetensors_sink_options *opts,
                                     lm_file_sink **out)
{
    if (!ctx || !path || !*path || !out)
        return LM_ERR_INVALID_ARGUMENT;
    lm_safetensors_sink_options o = LM_SAFETENSORS_SINK_OPTIONS_INIT;
    if (opts) {
        if (opts->struct_size < sizeof(o))
            return lm_context_set_error(ctx, LM_ERR_ABI,
                                        WHAT ": options struct_size %u too "
                                        "small", opts->struct_size);
        memcpy(&o, opts, sizeof(o));
    }
    if (o.n_metadata && (!o.metadata_keys || !o.metadata_values))
        return lm_context_set_error(ctx, LM_ERR_INVALID_ARGUMENT,
                                    WHAT ": n_metadata without keys/values");
    return lm__file_sink_create(ctx, path, &safetensors_writer, NULL,
                                o.max_shard_bytes, o.metadata_keys,
                                o.metadata_values, o.n_metadata, out);
}

lm_status lm_safetensors_write(lm_context *ctx, const lm_model *model,
                               const char *path,
                               const lm_safetensors_sink_options *options)
{
    if (!ctx || !model || !path)
        return LM_ERR_INVALID_ARGUMENT;
    lm_file_sink *sink;
    LM_TRY(lm_safetensors_sink_create(ctx, path, options, &sink));
    lm_status st = lm__file_sink_write_model(ctx, model, sink);
    lm_file_sink_destroy(sink);
    return st;
}
