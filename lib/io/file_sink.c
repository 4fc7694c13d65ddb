/* A plan sink writing files while tensors are merged, whatever the format
 * (file_writer.h supplies the bytes around the data): the files are laid
 * out at begin, each tensor is pwrite()n at its final offset from
 * whichever worker merged it, and nothing is visible under a final name
 * before commit: one file is renamed into place (atomic_file.h), a
 * sharded output is a directory committed in one step with its index
 * (libmerge/output.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "io/atomic_file.h"
#include "io/file_writer.h"
#include "io/paths.h"
#include "libmerge/output.h"

struct shard {
    char *final_path;
    char *write_path; /* where the bytes go until commit; NULL after */
    int fd;
};

struct lm_file_sink {
    lm_sink_vtable vt;
    lm_context *ctx;
    const struct lm__file_writer *w;
    void *config; /* the writer's */
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
    uint64_t *tensor_stored; /* bytes in the file (the writer's encoding) */
    uint64_t *tensor_bytes;  /* output bytes (the plan's dtype) */
    char **tensor_names;
    uint64_t total_bytes;
    bool committed;
};

static lm_status io_error(lm_file_sink *s, const char *what, const char *path)
{
    return lm_context_set_error(s->ctx, LM_ERR_IO, "%s '%s': %s", what, path,
                                strerror(errno));
}

static struct lm__sink_layout layout_of(lm_file_sink *s,
                                        const lm_tensor_desc *outputs)
{
    return (struct lm__sink_layout){
        outputs, (const char *const *)s->tensor_names, s->n_tensors,
        s->tensor_shard, s->n_shards, s->total_bytes, s->tensor_offset,
        (const char *const *)s->meta_keys,
        (const char *const *)s->meta_values, s->n_meta};
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

/* Tensors go to shards in order, a new shard when the next tensor would
 * pass max_shard_bytes (a larger tensor gets a shard of its own). */
static lm_status assign_shards(lm_file_sink *s, size_t n)
{
    size_t count = 1;
    uint64_t in_shard = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t bytes = s->tensor_stored[i];
        if (s->sharded && in_shard > 0 &&
            in_shard + bytes > s->max_shard_bytes) {
            count++;
            in_shard = 0;
        }
        s->tensor_shard[i] = count - 1;
        in_shard += bytes;
        s->total_bytes += bytes;
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
            s->w->shard_name(k, count, name, sizeof(name));
            s->shards[k].final_path = lm__path_join(s->ctx, s->path, name);
        }
        if (!s->shards[k].final_path)
            return LM_ERR_OUT_OF_MEMORY;
    }
    return LM_OK;
}

/* Shard k: the writer's header at offset 0, the file at its full length
 * so that tensors can be written at their offsets in any order. */
static lm_status begin_shard(lm_file_sink *s, const lm_tensor_desc *outputs,
                             size_t k)
{
    struct lm__sink_layout l = layout_of(s, outputs);
    unsigned char *header = NULL;
    size_t hlen = 0;
    uint64_t file_len = 0;
    LM_TRY(s->w->header(s->ctx, s->config, &l, k, &header, &hlen,
                        &file_len));
    struct shard *sh = &s->shards[k];
    lm_status st = open_shard(s, sh);
    if (st == LM_OK && (lm__pwrite_all(sh->fd, header, hlen, 0) ||
                        ftruncate(sh->fd, (off_t)file_len)))
        st = io_error(s, "cannot write", sh->write_path);
    lm_free(s->ctx, header);
    return st;
}

/* Lays out every file for `outputs` (contiguous, in the library's own
 * descriptor layout). */
static lm_status begin_files(lm_file_sink *s, const lm_tensor_desc *outputs,
                             size_t n)
{
    if (s->shards)
        return lm_context_set_error(s->ctx, LM_ERR_STATE, "%s used twice",
                                    s->w->what);
    if (s->w->check)
        LM_TRY(s->w->check(s->ctx, outputs, n));
    s->n_tensors = n;
    s->tensor_shard = lm__calloc(s->ctx, n ? n : 1, sizeof(size_t));
    s->tensor_offset = lm__calloc(s->ctx, n ? n : 1, sizeof(uint64_t));
    s->tensor_names = lm__calloc(s->ctx, n ? n : 1, sizeof(char *));
    s->tensor_stored = lm__calloc(s->ctx, n ? n : 1, sizeof(uint64_t));
    s->tensor_bytes = lm__calloc(s->ctx, n ? n : 1, sizeof(uint64_t));
    if (!s->tensor_shard || !s->tensor_offset || !s->tensor_names ||
        !s->tensor_stored || !s->tensor_bytes)
        return LM_ERR_OUT_OF_MEMORY;
    for (size_t i = 0; i < n; i++) {
        if (!(s->tensor_names[i] = lm__strdup(s->ctx, outputs[i].name)))
            return LM_ERR_OUT_OF_MEMORY;
        s->tensor_stored[i] = s->tensor_bytes[i] = outputs[i].nbytes;
    }
    if (s->w->stored_sizes)
        LM_TRY(s->w->stored_sizes(s->ctx, s->config, outputs, n,
                                  s->tensor_stored));
    LM_TRY(assign_shards(s, n));
    for (size_t k = 0; k < s->n_shards; k++)
        LM_TRY(begin_shard(s, outputs, k));
    return LM_OK;
}

/* The sink's begin: descriptors arrive as an array of pointers (each
 * versioned by its struct_size); the writers work on a contiguous copy.
 * A descriptor smaller than the first versioned layout is refused; a
 * larger one (from a newer header) is read as far as this library knows. */
static lm_status sink_begin(const lm_tensor_desc *const *outputs, size_t n,
                            void *user)
{
    lm_file_sink *s = user;
    lm_tensor_desc *copy = lm__calloc(s->ctx, n ? n : 1, sizeof(*copy));
    if (!copy)
        return LM_ERR_OUT_OF_MEMORY;
    lm_status st = LM_OK;
    for (size_t i = 0; i < n && st == LM_OK; i++) {
        size_t size = outputs[i] ? outputs[i]->struct_size : 0;
        if (size < sizeof(*copy))
            st = lm_context_set_error(s->ctx, LM_ERR_ABI,
                                      "%s: output %zu: descriptor of %zu "
                                      "bytes, expected %zu",
                                      s->w->what, i, size, sizeof(*copy));
        else
            memcpy(&copy[i], outputs[i], sizeof(*copy));
    }
    if (st == LM_OK)
        st = begin_files(s, copy, n);
    lm_free(s->ctx, copy);
    return st;
}

static lm_status sink_write(size_t index, const void *data, size_t nbytes,
                            void *user)
{
    lm_file_sink *s = user;
    struct shard *sh = &s->shards[s->tensor_shard[index]];
    void *encoded = NULL;
    if (s->w->encode) {
        size_t len = 0;
        LM_TRY(s->w->encode(s->ctx, s->config, index,
                            s->tensor_names[index], data, nbytes, &encoded,
                            &len));
        if (encoded) {
            data = encoded;
            nbytes = len;
        }
    }
    int failed = lm__pwrite_all(sh->fd, data, nbytes, s->tensor_offset[index]);
    int err = errno;
    lm_free(s->ctx, encoded);
    if (failed)
        return lm_context_set_error(s->ctx, LM_ERR_IO,
                                    "cannot write tensor '%s' to '%s': %s",
                                    s->tensor_names[index], sh->write_path,
                                    strerror(err));
    return LM_OK;
}

/* A range of tensor index's bytes, for writers that store output bytes as
 * they are (no encode hook). */
static lm_status sink_write_range(size_t index, uint64_t offset,
                                  const void *data, size_t nbytes, void *user)
{
    lm_file_sink *s = user;
    struct shard *sh = &s->shards[s->tensor_shard[index]];
    if (offset > s->tensor_bytes[index] ||
        nbytes > s->tensor_bytes[index] - offset)
        return lm_context_set_error(s->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "range %llu+%zu is outside tensor '%s' "
                                    "(%llu bytes)",
                                    (unsigned long long)offset, nbytes,
                                    s->tensor_names[index],
                                    (unsigned long long)s->tensor_bytes[index]);
    if (lm__pwrite_all(sh->fd, data, nbytes, s->tensor_offset[index] + offset))
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

static lm_status commit_shards(lm_file_sink *s)
{
    const char **names = lm__calloc(s->ctx, s->n_shards, sizeof(*names));
    if (!names)
        return lm_context_set_error(s->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory committing '%s'",
                                    s->path);
    lm_status st = LM_OK;
    for (size_t k = 0; k < s->n_shards; k++) {
        struct shard *sh = &s->shards[k];
        int rc = close(sh->fd);
        sh->fd = -1;
        if (rc && st == LM_OK)
            st = io_error(s, "cannot write", sh->write_path);
        names[k] = strrchr(sh->final_path, '/') + 1;
    }
    /* The index is part of the same directory commit: shards never
     * appear without it. */
    struct lm__sink_layout l = layout_of(s, NULL);
    if (st == LM_OK)
        st = s->w->index(s->ctx, &l, names, lm_output_dir_path(s->out),
                         s->path);
    lm_free(s->ctx, names);
    return st == LM_OK ? lm_output_dir_commit(s->out) : st;
}

static lm_status sink_end(int commit, void *user)
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

static lm_status copy_metadata(lm_file_sink *s, const char *const *keys,
                               const char *const *values, size_t n)
{
    if (!n)
        return LM_OK;
    s->meta_keys = lm__calloc(s->ctx, n, sizeof(char *));
    s->meta_values = lm__calloc(s->ctx, n, sizeof(char *));
    if (!s->meta_keys || !s->meta_values)
        return LM_ERR_OUT_OF_MEMORY;
    for (size_t i = 0; i < n; i++) {
        s->meta_keys[i] = lm__strdup(s->ctx, keys[i]);
        s->meta_values[i] = lm__strdup(s->ctx, values[i]);
        s->n_meta = i + 1;
        if (!s->meta_keys[i] || !s->meta_values[i])
            return LM_ERR_OUT_OF_MEMORY;
    }
    return LM_OK;
}

lm_status lm__file_sink_create(lm_context *ctx, const char *path,
                               const struct lm__file_writer *w, void *config,
                               uint64_t max_shard_bytes,
                               const char *const *meta_keys,
                               const char *const *meta_values, size_t n_meta,
                               lm_file_sink **out)
{
    lm_file_sink *s = lm__calloc(ctx, 1, sizeof(*s));
    if (!s) {
        if (w->config_free)
            w->config_free(ctx, config);
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "%s: out of memory", w->what);
    }
    s->ctx = ctx;
    s->w = w;
    s->config = config;
    s->sharded = max_shard_bytes != 0;
    s->max_shard_bytes = max_shard_bytes;
    s->single = (struct lm__atomic_file){ctx, NULL, NULL, -1};
    s->path = lm__strdup(ctx, path);
    lm_status st = s->path ? LM_OK : LM_ERR_OUT_OF_MEMORY;
    if (st == LM_OK && s->sharded)
        st = lm_output_dir_begin(ctx, path, NULL, &s->out);
    if (st == LM_OK)
        st = copy_metadata(s, meta_keys, meta_values, n_meta);
    if (st != LM_OK) {
        lm_file_sink_destroy(s);
        return st == LM_ERR_OUT_OF_MEMORY
                   ? lm_context_set_error(ctx, st, "%s: out of memory",
                                          w->what)
                   : st;
    }
    s->vt.struct_size = sizeof(s->vt);
    s->vt.begin = sink_begin;
    s->vt.write = sink_write;
    s->vt.end = sink_end;
    s->vt.user = s;
    if (!w->encode)
        s->vt.write_range = sink_write_range;
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
    /* Bytes written from outside would skip the writer's encoding. */
    if (s->tensor_stored[index] != s->tensor_bytes[index])
        return lm_context_set_error(s->ctx, LM_ERR_UNSUPPORTED,
                                    "%s: tensor '%s' is re-encoded by the "
                                    "sink (e.g. GGUF F16 or Q8_0 storage), "
                                    "so its output bytes cannot be written "
                                    "into the file directly", s->w->what,
                                    s->tensor_names[index]);
    *path = sh->write_path;
    *offset = s->tensor_offset[index];
    return LM_OK;
}

size_t lm_file_sink_file_count(const lm_file_sink *s)
{
    return s && s->committed ? s->n_shards : 0;
}

const char *lm_file_sink_file_at(const lm_file_sink *s, size_t i)
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
    lm_free(s->ctx, s->tensor_stored);
    lm_free(s->ctx, s->tensor_bytes);
    for (size_t i = 0; i < s->n_meta; i++) {
        lm_free(s->ctx, s->meta_keys[i]);
        lm_free(s->ctx, s->meta_values[i]);
    }
    lm_free(s->ctx, s->meta_keys);
    lm_free(s->ctx, s->meta_values);
    if (s->w->config_free)
        s->w->config_free(s->ctx, s->config);
    lm_free(s->ctx, s->path);
    lm_free(s->ctx, s);
}

lm_status lm__file_sink_write_model(lm_context *ctx, const lm_model *model,
                                    lm_file_sink *sink)
{
    size_t n = lm_model_count(model);
    lm_tensor_desc *descs = lm__calloc(ctx, n ? n : 1, sizeof(*descs));
    if (!descs)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "%s: out of memory", sink->w->what);
    for (size_t i = 0; i < n; i++) {
        const lm_tensor *t = lm_model_at(model, i);
        if (t->lazy_read) {
            lm_free(ctx, descs);
            return lm_context_set_error(ctx, LM_ERR_UNSUPPORTED,
                                        "cannot write lazy "
                                        "tensor '%s'", lm_model_name_at(model, i));
        }
        descs[i].struct_size = sizeof(descs[i]);
        descs[i].name = lm_model_name_at(model, i);
        descs[i].dtype = t->dtype;
        descs[i].ndim = t->ndim;
        memcpy(descs[i].shape, t->shape, sizeof(descs[i].shape));
        descs[i].nbytes = lm_tensor_nbytes(t);
    }
    lm_status st = begin_files(sink, descs, n);
    for (size_t i = 0; st == LM_OK && i < n; i++)
        st = sink_write(i, lm_tensor_cdata(lm_model_at(model, i)),
                        descs[i].nbytes, sink);
    lm_status end = sink_end(st == LM_OK, sink);
    if (st == LM_OK)
        st = end;
    lm_free(ctx, descs);
    return st;
}
