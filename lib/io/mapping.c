/* File mappings and the page release that bounds resident memory. */
/* madvise(MADV_DONTNEED) is a Linux/BSD extension beyond POSIX. */
#define _DEFAULT_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/input_file.h"
#include "io/mapping.h"

lm_status lm__map_file(lm_context *ctx, const char *path,
                       struct lm_mapping *out)
{
    memset(out, 0, sizeof(*out));
    int fd;
    struct stat st;
    LM_TRY(lm__open_input(ctx, NULL, path, &fd, &st));
    if (st.st_size > 0) {
        void *addr = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE,
                          fd, 0);
        if (addr == MAP_FAILED) {
            int e = errno;
            close(fd);
            return lm_context_set_error(ctx, LM_ERR_IO,
                                        "cannot map '%s': %s", path,
                                        strerror(e));
        }
        out->addr = addr;
        out->len = (size_t)st.st_size;
        out->dev = (uint64_t)st.st_dev;
        out->ino = (uint64_t)st.st_ino;
        out->path = lm__strdup(ctx, path);
        if (!out->path) {
            munmap(addr, out->len);
            memset(out, 0, sizeof(*out));
            close(fd);
            return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                        "out of memory mapping '%s'", path);
        }
    }
    close(fd);
    return LM_OK;
}

void lm__unmap(lm_context *ctx, struct lm_mapping *m)
{
    if (m->addr)
        munmap(m->addr, m->len);
    lm_free(ctx, m->path);
    memset(m, 0, sizeof(*m));
}

static void release_mappings(void *resource)
{
    struct lm_mappings *set = resource;
    for (size_t i = 0; i < set->count; i++)
        lm__unmap(set->ctx, &set->maps[i]);
    lm_free(set->ctx, set->maps);
    lm_free(set->ctx, set);
}

/* A merged tensor's pages are dropped from this process (the kernel can
 * read them again from the file if needed), so resident memory follows the
 * tensors in flight, not the model size. Only pages entirely inside the
 * tensor are released, so neighbours being merged are unaffected. */
static void drop_pages(void *resource, const lm_tensor *t)
{
    struct lm_mappings *set = resource;
    const char *p = t->data;
    size_t n = t->numel * lm_dtype_size(t->dtype);
    for (size_t i = 0; i < set->count; i++) {
        const char *a = set->maps[i].addr;
        if (!a || p < a || p >= a + set->maps[i].len)
            continue;
        uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
        uintptr_t start = ((uintptr_t)p + page - 1) / page * page;
        uintptr_t end = ((uintptr_t)p + n) / page * page;
        if (end > start)
            madvise((void *)start, end - start, MADV_DONTNEED);
        return;
    }
}

/* The mapping t's bytes lie in, or NULL (bytes decoded elsewhere). */
static const struct lm_mapping *mapping_of(const struct lm_mappings *set,
                                           const lm_tensor *t)
{
    const char *p = t->data;
    size_t n = t->numel * lm_dtype_size(t->dtype);
    for (size_t i = 0; i < set->count; i++) {
        const char *a = set->maps[i].addr;
        if (a && p >= a && n <= set->maps[i].len &&
            (size_t)(p - a) <= set->maps[i].len - n)
            return &set->maps[i];
    }
    return NULL;
}

static bool file_range(void *resource, const lm_tensor *t,
                       struct lm__file_range *out)
{
    const struct lm_mapping *m = t->data ? mapping_of(resource, t) : NULL;
    if (!m || !m->path)
        return false;
    *out = (struct lm__file_range){m->path, m->dev, m->ino, m->len,
                                   (uint64_t)((const char *)t->data -
                                              (const char *)m->addr)};
    return true;
}

lm_status lm__model_mappings(lm_model *model, struct lm_mappings **out)
{
    if (model->resource) {
        *out = model->resource;
        return LM_OK;
    }
    struct lm_mappings *set = lm__calloc(model->ctx, 1, sizeof(*set));
    if (!set)
        return LM_ERR_OUT_OF_MEMORY;
    set->ctx = model->ctx;
    lm_status st = lm__model_attach_resource(model, release_mappings, set);
    if (st != LM_OK) {
        lm_free(model->ctx, set);
        return st;
    }
    model->done_with = drop_pages;
    model->file_range = file_range;
    *out = set;
    return LM_OK;
}

lm_status lm__mappings_add(struct lm_mappings *set, struct lm_mapping map)
{
    struct lm_mapping *room = lm__reserve(set->ctx, set->maps, &set->cap,
                                          set->count, sizeof(*set->maps), 4);
    if (!room)
        return LM_ERR_OUT_OF_MEMORY;
    set->maps = room;
    set->maps[set->count++] = map;
    return LM_OK;
}

lm_status lm__map_and_parse(lm_context *ctx, const char *path,
                            lm_model *model, lm__parse_fn parse)
{
    struct lm_mappings *set;
    LM_TRY(lm__model_mappings(model, &set));
    struct lm_mapping map;
    LM_TRY(lm__map_file(ctx, path, &map));
    if (lm__mappings_add(set, map) != LM_OK) {
        lm__unmap(ctx, &map);
        return LM_ERR_OUT_OF_MEMORY;
    }
    return parse(ctx, path, &map, model);
}

lm_status lm__read_model(lm_context *ctx, const char *path, lm_model **out,
                         lm__parse_fn parse)
{
    if (!ctx || !path || !out)
        return LM_ERR_INVALID_ARGUMENT;
    lm_model *model;
    LM_TRY(lm_model_create(ctx, &model));
    lm_status st = lm__map_and_parse(ctx, path, model, parse);
    if (st != LM_OK) {
        lm_model_destroy(model);
        return st;
    }
    *out = model;
    return LM_OK;
}
