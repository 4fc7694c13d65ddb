/* A plan sink writing safetensors (optionally sharded, with a Hugging Face
 * index) or GGUF while tensors are merged: the header is laid out at
 * begin, each tensor is pwrite()n at its final offset from whichever worker
 * merged it, and nothing is visible under a final name before commit: one
 * file is renamed into place (atomic_file.h), a sharded output is a
 * directory committed in one step with its index (libmerge/output.h). */
#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/internal.h"
#include "io/atomic_file.h"
#include "io/gguf_format.h"
#include "io/gguf_write.h"
#include "libmerge/file_sink.h"
#include "libmerge/gguf.h"
#include "libmerge/output.h"

struct shard {
    char *final_path;
    char *write_path; /* where the bytes go until commit; NULL after */
    int fd;
};

struct lm_file_sink {
    lm_sink_vtable vt;
    lm_context *ctx;
    char *path;
    bool sharded;
    struct lm__atomic_file single; /* the file of a one-file output */
    lm_output_dir *out;            /* the directory of a sharded one */
    uint64_t max_shard_bytes;
    char **meta_keys, **meta_values;
    size_t n_meta;
    struct shard *shards;
    size_t n_shards;
    size_t n_tensors;
    size_t *tensor_shard;
    uint64_t *tensor_offset; /* absolute offset in its shard file */
    char **tensor_names;
    uint64_t total_bytes;
    bool committed;
    bool gguf;                /* GGUF instead of safetensors */
    const lm_model *kv_from;  /* GGUF key/values to carry over */
    uint32_t alignment;
};

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

static lm_status io_error(lm_file_sink *s, const char *what, const char *path)
{
    return lm_context_set_error(s->ctx, LM_ERR_IO, "%s '%s': %s", what, path,
                                strerror(errno));
}

/* Opens shard k's file: a temporary beside a one-file output, or its
 * final name inside the sharded output's staging directory. */
static lm_status open_shard(lm_file_sink *s, struct shard *sh)
{
    if (!s->sharded) {
        LM_TRY(lm__atomic_open(s->ctx, sh->final_path, &s->single));
        sh->fd = s->single.fd;
        sh->write_path = lm__strdup(s->ctx, s->single.tmp_path);
        return sh->write_path ? LM_OK : LM_ERR_OUT_OF_MEMORY;
    }
    const char *name = strrchr(sh->final_path, '/') + 1;
    sh->write_path = lm__path_join(s->ctx, lm_output_dir_path(s->out), name);
    if (!sh->write_path)
        return LM_ERR_OUT_OF_MEMORY;
    sh->fd = open(sh->write_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
                  0666);
    return sh->fd < 0 ? io_error(s, "cannot create", sh->write_path) : LM_OK;
}

static cJSON *raw_u64(uint64_t v)
{
    char buf[24];
    snprintf(buf, sizeof(buf), "%" PRIu64, v);
    return cJSON_CreateRaw(buf);
}

/* Header JSON of shard `k`, padded with spaces to a multiple of 8 bytes;
 * fills the tensors' absolute offsets. Returns NULL on allocation failure. */
static char *shard_header(lm_file_sink *s, size_t k,
                          const lm_tensor_desc *outputs, size_t *len)
{
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return NULL;
    bool ok = true;
    if (s->n_meta) {
        cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
        for (size_t i = 0; ok && i < s->n_meta; i++)
            ok = meta && cJSON_AddStringToObject(meta, s->meta_keys[i],
                                                 s->meta_values[i]);
    }
    uint64_t off = 0;
    for (size_t i = 0; ok && i < s->n_tensors; i++) {
        if (s->tensor_shard[i] != k)
            continue;
        const lm_tensor_desc *d = &outputs[i];
        cJSON *t = cJSON_AddObjectToObject(root, d->name);
        cJSON *shape = cJSON_CreateArray();
        cJSON *offs = cJSON_CreateArray();
        ok = t && shape && offs &&
             cJSON_AddStringToObject(t, "dtype", st_dtype(d->dtype));
        for (int j = 0; ok && j < d->ndim; j++)
            ok = cJSON_AddItemToArray(shape, raw_u64((uint64_t)d->shape[j]));
        ok = ok && cJSON_AddItemToArray(offs, raw_u64(off)) &&
             cJSON_AddItemToArray(offs, raw_u64(off + d->nbytes));
        if (ok) {
            cJSON_AddItemToObject(t, "shape", shape);
            cJSON_AddItemToObject(t, "data_offsets", offs);
        } else {
            cJSON_Delete(shape);
            cJSON_Delete(offs);
        }
        s->tensor_offset[i] = off; /* relative for now */
        off += d->nbytes;
    }
    char *json = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!json)
        return NULL;
    size_t n = strlen(json), padded = (n + 7) / 8 * 8;
    char *out = lm_alloc(s->ctx, padded + 1);
    if (out) {
        memcpy(out, json, n);
        memset(out + n, ' ', padded - n);
        out[padded] = '\0';
        *len = padded;
    }
    cJSON_free(json);
    return out;
}

static lm_status assign_shards(lm_file_sink *s, const lm_tensor_desc *o,
                               size_t n)
{
    size_t count = 1;
    uint64_t in_shard = 0;
    for (size_t i = 0; i < n; i++) {
        if (s->sharded && in_shard > 0 &&
            in_shard + o[i].nbytes > s->max_shard_bytes) {
            count++;
            in_shard = 0;
        }
        s->tensor_shard[i] = count - 1;
        in_shard += o[i].nbytes;
        s->total_bytes += o[i].nbytes;
    }
    s->shards = lm__calloc(s->ctx, count, sizeof(*s->shards));
    if (!s->shards)
        return LM_ERR_OUT_OF_MEMORY;
    s->n_shards = count;
    for (size_t k = 0; k < count; k++) {
        s->shards[k].fd = -1;
        if (!s->sharded) {
            s->shards[k].final_path = lm__strdup(s->ctx, s->path);
        } else {
            char name[64];
            snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors",
                     k + 1, count);
            s->shards[k].final_path = lm__path_join(s->ctx, s->path, name);
        }
        if (!s->shards[k].final_path)
            return LM_ERR_OUT_OF_MEMORY;
    }
    return LM_OK;
}

static lm_status begin_gguf(lm_file_sink *s, const lm_tensor_desc *outputs,
                            size_t n)
{
    struct lm__gguf_layout_in in = {
        outputs, n, s->kv_from, (const char *const *)s->meta_keys,
        (const char *const *)s->meta_values, s->n_meta, s->alignment};
    unsigned char *header = NULL;
    size_t hlen = 0;
    uint64_t file_len = 0;
    LM_TRY(lm__gguf_layout(s->ctx, &in, &header, &hlen, s->tensor_offset,
                           &file_len));
    lm_status st = open_shard(s, &s->shards[0]);
    if (st == LM_OK && (lm__pwrite_all(s->shards[0].fd, header, hlen, 0) ||
                        ftruncate(s->shards[0].fd, (off_t)file_len)))
        st = io_error(s, "cannot write", s->shards[0].write_path);
    lm_free(s->ctx, header);
    return st;
}

static lm_status sink_begin(void *user, const lm_tensor_desc *outputs,
                            size_t n)
{
    lm_file_sink *s = user;
    if (s->shards)
        return lm_context_set_error(s->ctx, LM_ERR_STATE,
                                    "safetensors sink used twice");
    for (size_t i = 0; i < n; i++)
        if (!st_dtype(outputs[i].dtype))
            return lm_context_set_error(s->ctx, LM_ERR_DTYPE,
                                        "safetensors sink: tensor '%s' has "
                                        "unknown dtype", outputs[i].name);
    s->n_tensors = n;
    s->tensor_shard = lm__calloc(s->ctx, n ? n : 1, sizeof(size_t));
    s->tensor_offset = lm__calloc(s->ctx, n ? n : 1, sizeof(uint64_t));
    s->tensor_names = lm__calloc(s->ctx, n ? n : 1, sizeof(char *));
    if (!s->tensor_shard || !s->tensor_offset || !s->tensor_names)
        return LM_ERR_OUT_OF_MEMORY;
    for (size_t i = 0; i < n; i++)
        if (!(s->tensor_names[i] = lm__strdup(s->ctx, outputs[i].name)))
            return LM_ERR_OUT_OF_MEMORY;
    LM_TRY(assign_shards(s, outputs, n));
    if (s->gguf)
        return begin_gguf(s, outputs, n);
    for (size_t k = 0; k < s->n_shards; k++) {
        size_t hlen = 0;
        char *header = shard_header(s, k, outputs, &hlen);
        if (!header)
            return lm_context_set_error(s->ctx, LM_ERR_OUT_OF_MEMORY,
                                        "safetensors sink: out of memory "
                                        "building the header");
        lm_status st = open_shard(s, &s->shards[k]);
        unsigned char len8[8];
        for (int b = 0; b < 8; b++)
            len8[b] = (unsigned char)((uint64_t)hlen >> (8 * b));
        uint64_t data_start = 8 + hlen, data_bytes = 0;
        for (size_t i = 0; i < n; i++)
            if (s->tensor_shard[i] == k) {
                s->tensor_offset[i] += data_start;
                data_bytes += outputs[i].nbytes;
            }
        if (st == LM_OK &&
            (lm__pwrite_all(s->shards[k].fd, len8, 8, 0) ||
             lm__pwrite_all(s->shards[k].fd, header, hlen, 8) ||
             ftruncate(s->shards[k].fd, (off_t)(data_start + data_bytes))))
            st = io_error(s, "cannot write", s->shards[k].write_path);
        lm_free(s->ctx, header);
        LM_TRY(st);
    }
    return LM_OK;
}

static lm_status sink_write(void *user, size_t index, const void *data,
                            size_t nbytes)
{
    lm_file_sink *s = user;
    struct shard *sh = &s->shards[s->tensor_shard[index]];
    if (lm__pwrite_all(sh->fd, data, nbytes, s->tensor_offset[index]))
        return lm_context_set_error(s->ctx, LM_ERR_IO,
                                    "cannot write tensor '%s' to '%s': %s",
                                    s->tensor_names[index], sh->write_path,
                                    strerror(errno));
    return LM_OK;
}

/* Forgets the files being written; a one-file output's temporary is
 * removed here, a sharded output's staging directory by lm_output_dir. */
static void discard_temps(lm_file_sink *s)
{
    for (size_t k = 0; k < s->n_shards; k++) {
        struct shard *sh = &s->shards[k];
        if (sh->fd >= 0 && s->sharded)
            close(sh->fd);
        sh->fd = -1;
        lm_free(s->ctx, sh->write_path);
        sh->write_path = NULL;
    }
    lm__atomic_discard(&s->single);
    lm_output_dir_destroy(s->out);
    s->out = NULL;
}

/* model.safetensors.index.json inside the staging directory. */
static lm_status write_index(lm_file_sink *s)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *meta = root ? cJSON_AddObjectToObject(root, "metadata") : NULL;
    cJSON *map = root ? cJSON_AddObjectToObject(root, "weight_map") : NULL;
    bool ok = meta && map && cJSON_AddItemToObject(meta, "total_size",
                                                   raw_u64(s->total_bytes));
    for (size_t i = 0; ok && i < s->n_meta; i++)
        ok = cJSON_AddStringToObject(meta, s->meta_keys[i],
                                     s->meta_values[i]) != NULL;
    for (size_t i = 0; ok && i < s->n_tensors; i++) {
        const char *file = strrchr(s->shards[s->tensor_shard[i]].final_path,
                                   '/') + 1;
        ok = cJSON_AddStringToObject(map, s->tensor_names[i], file) != NULL;
    }
    char *json = ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!json)
        return lm_context_set_error(s->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory building the index of "
                                    "'%s'", s->path);
    struct shard idx = {NULL, lm__path_join(s->ctx, lm_output_dir_path(s->out),
                                            "model.safetensors.index.json"),
                        -1};
    lm_status st = LM_OK;
    if (!idx.write_path)
        st = LM_ERR_OUT_OF_MEMORY;
    else if ((idx.fd = open(idx.write_path,
                            O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666)) < 0 ||
             lm__pwrite_all(idx.fd, json, strlen(json), 0) ||
             lm__pwrite_all(idx.fd, "\n", 1, strlen(json)))
        st = io_error(s, "cannot write", idx.write_path);
    if (idx.fd >= 0 && close(idx.fd) && st == LM_OK)
        st = io_error(s, "cannot write", idx.write_path);
    lm_free(s->ctx, idx.write_path);
    cJSON_free(json);
    return st;
}

static lm_status commit_shards(lm_file_sink *s)
{
    for (size_t k = 0; k < s->n_shards; k++) {
        struct shard *sh = &s->shards[k];
        int rc = close(sh->fd);
        sh->fd = -1;
        if (rc)
            return io_error(s, "cannot write", sh->write_path);
    }
    /* The index is part of the same directory commit: shards never
     * appear without it. */
    LM_TRY(write_index(s));
    return lm_output_dir_commit(s->out);
}

static lm_status sink_end(void *user, int commit)
{
    lm_file_sink *s = user;
    lm_status st = LM_OK;
    if (commit && s->shards) {
        if (s->sharded) {
            st = commit_shards(s);
        } else {
            s->shards[0].fd = -1; /* the atomic file closes it */
            st = lm__atomic_commit(&s->single);
        }
    }
    s->committed = commit && s->shards && st == LM_OK;
    discard_temps(s);
    return st;
}

static lm_status create_sink(lm_context *ctx, const char *path,
                             const lm_safetensors_sink_options *opts,
                             lm_file_sink **out);

lm_status lm_safetensors_sink_create(lm_context *ctx, const char *path,
                                     const lm_safetensors_sink_options *opts,
                                     lm_file_sink **out)
{
    return create_sink(ctx, path, opts, out);
}

/* The alignment a GGUF source declares, or 0. */
static uint32_t source_alignment(const lm_model *m)
{
    const char *v = NULL;
    if (!lm__gguf_kv_of(m))
        return 0;
    for (size_t i = 0; i < m->n_meta; i++)
        if (!strcmp(m->meta_keys[i], "general.alignment"))
            v = m->meta_values[i];
    return v ? (uint32_t)strtoul(v, NULL, 10) : 0;
}

lm_status lm_gguf_sink_create(lm_context *ctx, const char *path,
                              const lm_gguf_options *opts, lm_file_sink **out)
{
    if (!ctx || !path || !*path || !out)
        return LM_ERR_INVALID_ARGUMENT;
    lm_gguf_options o = LM_GGUF_OPTIONS_INIT;
    if (opts) {
        if (opts->struct_size < sizeof(o))
            return lm_context_set_error(ctx, LM_ERR_ABI,
                                        "GGUF sink: options struct_size %u "
                                        "too small", opts->struct_size);
        memcpy(&o, opts, sizeof(o));
    }
    uint32_t align = o.alignment ? o.alignment : source_alignment(o.kv_from);
    if (align && (align % 8 || (align & (align - 1))))
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_RANGE,
                                    "GGUF sink: alignment %u is not a power "
                                    "of two >= 8", align);
    lm_safetensors_sink_options st = LM_SAFETENSORS_SINK_OPTIONS_INIT;
    st.metadata_keys = o.metadata_keys;
    st.metadata_values = o.metadata_values;
    st.n_metadata = o.n_metadata;
    LM_TRY(create_sink(ctx, path, &st, out));
    (*out)->gguf = true;
    (*out)->kv_from = o.kv_from;
    (*out)->alignment = align;
    return LM_OK;
}

static lm_status create_sink(lm_context *ctx, const char *path,
                             const lm_safetensors_sink_options *opts,
                             lm_file_sink **out)
{
    if (!ctx || !path || !*path || !out)
        return LM_ERR_INVALID_ARGUMENT;
    lm_safetensors_sink_options o = LM_SAFETENSORS_SINK_OPTIONS_INIT;
    if (opts) {
        if (opts->struct_size < sizeof(o))
            return lm_context_set_error(ctx, LM_ERR_ABI,
                                        "safetensors sink: options "
                                        "struct_size %u too small",
                                        opts->struct_size);
        memcpy(&o, opts, sizeof(o));
    }
    if (o.n_metadata && (!o.metadata_keys || !o.metadata_values))
        return lm_context_set_error(ctx, LM_ERR_INVALID_ARGUMENT,
                                    "safetensors sink: n_metadata without "
                                    "keys/values");
    lm_file_sink *s = lm__calloc(ctx, 1, sizeof(*s));
    if (!s)
        return LM_ERR_OUT_OF_MEMORY;
    s->ctx = ctx;
    s->sharded = o.max_shard_bytes != 0;
    s->max_shard_bytes = o.max_shard_bytes;
    s->path = lm__strdup(ctx, path);
    lm_status st = s->path ? LM_OK : LM_ERR_OUT_OF_MEMORY;
    s->single = (struct lm__atomic_file){ctx, NULL, NULL, -1};
    if (st == LM_OK && s->sharded)
        st = lm_output_dir_begin(ctx, path, NULL, &s->out);
    if (st == LM_OK && o.n_metadata) {
        s->meta_keys = lm__calloc(ctx, o.n_metadata, sizeof(char *));
        s->meta_values = lm__calloc(ctx, o.n_metadata, sizeof(char *));
        st = s->meta_keys && s->meta_values ? LM_OK : LM_ERR_OUT_OF_MEMORY;
        for (size_t i = 0; st == LM_OK && i < o.n_metadata; i++) {
            s->meta_keys[i] = lm__strdup(ctx, o.metadata_keys[i]);
            s->meta_values[i] = lm__strdup(ctx, o.metadata_values[i]);
            s->n_meta = i + 1;
            if (!s->meta_keys[i] || !s->meta_values[i])
                st = LM_ERR_OUT_OF_MEMORY;
        }
    }
    if (st != LM_OK) {
        lm_file_sink_destroy(s);
        return st == LM_ERR_OUT_OF_MEMORY
                   ? lm_context_set_error(ctx, st, "safetensors sink: out of "
                                                   "memory")
                   : st;
    }
    s->vt.struct_size = sizeof(s->vt);
    s->vt.begin = sink_begin;
    s->vt.write = sink_write;
    s->vt.end = sink_end;
    s->vt.user = s;
    *out = s;
    return LM_OK;
}

const lm_sink_vtable *lm_file_sink_vtable(lm_file_sink *s)
{
    return s ? &s->vt : NULL;
}

lm_status lm_file_sink_layout(const lm_file_sink *s, size_t index,
                              const char **path, uint64_t *offset)
{
    if (!s || !path || !offset)
        return LM_ERR_INVALID_ARGUMENT;
    if (!s->shards || s->committed)
        return lm_context_set_error(s->ctx, LM_ERR_STATE,
                                    "file sink: the layout exists between "
                                    "begin and end only");
    if (index >= s->n_tensors)
        return lm_context_set_error(s->ctx, LM_ERR_OUT_OF_RANGE,
                                    "file sink: tensor %zu of %zu", index,
                                    s->n_tensors);
    const struct shard *sh = &s->shards[s->tensor_shard[index]];
    if (!sh->write_path)
        return lm_context_set_error(s->ctx, LM_ERR_STATE,
                                    "file sink: the output was discarded");
    *path = sh->write_path;
    *offset = s->tensor_offset[index];
    return LM_OK;
}

size_t lm_file_sink_file_count(const lm_file_sink *s)
{
    return s && s->committed ? s->n_shards : 0;
}

const char *lm_file_sink_file(const lm_file_sink *s, size_t i)
{
    return s && s->committed && i < s->n_shards ? s->shards[i].final_path
                                                : NULL;
}

void lm_file_sink_destroy(lm_file_sink *s)
{
    if (!s)
        return;
    discard_temps(s);
    for (size_t k = 0; k < s->n_shards; k++)
        lm_free(s->ctx, s->shards[k].final_path);
    lm_free(s->ctx, s->shards);
    for (size_t i = 0; i < s->n_tensors && s->tensor_names; i++)
        lm_free(s->ctx, s->tensor_names[i]);
    lm_free(s->ctx, s->tensor_names);
    lm_free(s->ctx, s->tensor_shard);
    lm_free(s->ctx, s->tensor_offset);
    for (size_t i = 0; i < s->n_meta; i++) {
        lm_free(s->ctx, s->meta_keys[i]);
        lm_free(s->ctx, s->meta_values[i]);
    }
    lm_free(s->ctx, s->meta_keys);
    lm_free(s->ctx, s->meta_values);
    lm_free(s->ctx, s->path);
    lm_free(s->ctx, s);
}

static lm_status write_model(lm_context *ctx, const lm_model *model,
                             lm_file_sink *sink);

lm_status lm_safetensors_write(lm_context *ctx, const lm_model *model,
                               const char *path,
                               const lm_safetensors_sink_options *options)
{
    if (!ctx || !model || !path)
        return LM_ERR_INVALID_ARGUMENT;
    lm_file_sink *sink;
    LM_TRY(lm_safetensors_sink_create(ctx, path, options, &sink));
    lm_status st = write_model(ctx, model, sink);
    lm_file_sink_destroy(sink);
    return st;
}

lm_status lm_gguf_write(lm_context *ctx, const lm_model *model,
                        const char *path, const lm_gguf_options *options)
{
    if (!ctx || !model || !path)
        return LM_ERR_INVALID_ARGUMENT;
    lm_file_sink *sink;
    LM_TRY(lm_gguf_sink_create(ctx, path, options, &sink));
    lm_status st = write_model(ctx, model, sink);
    lm_file_sink_destroy(sink);
    return st;
}

/* Every tensor of an in-memory model through a sink, in model order. */
static lm_status write_model(lm_context *ctx, const lm_model *model,
                             lm_file_sink *sink)
{
    size_t n = lm_model_count(model);
    lm_tensor_desc *descs = lm__calloc(ctx, n ? n : 1, sizeof(*descs));
    if (!descs)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "safetensors: out of memory");
    for (size_t i = 0; i < n; i++) {
        const lm_tensor *t = lm_model_tensor(model, i);
        if (t->lazy_read) {
            lm_free(ctx, descs);
            return lm_context_set_error(ctx, LM_ERR_UNSUPPORTED,
                                        "cannot write lazy "
                                        "tensor '%s'", lm_model_name(model, i));
        }
        descs[i].name = lm_model_name(model, i);
        descs[i].dtype = t->dtype;
        descs[i].ndim = t->ndim;
        memcpy(descs[i].shape, t->shape, sizeof(descs[i].shape));
        descs[i].nbytes = lm_tensor_nbytes(t);
    }
    lm_status st = sink_begin(sink, descs, n);
    for (size_t i = 0; st == LM_OK && i < n; i++)
        st = sink_write(sink, i, lm_tensor_cdata(lm_model_tensor(model, i)),
                        descs[i].nbytes);
    lm_status end = sink_end(sink, st == LM_OK);
    if (st == LM_OK)
        st = end;
    lm_free(ctx, descs);
    return st;
}
