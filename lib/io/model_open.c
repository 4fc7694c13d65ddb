/* Opening a model by path: a file, a sharded index, or a directory. */
#include <cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "io/gguf_format.h"
#include "io/mapping.h"
#include "libmerge/safetensors.h"

#define INDEX_NAME "model.safetensors.index.json"
#define SINGLE_NAME "model.safetensors"

/* Defined in npz_read.c. */
lm_status lm__npz_read_into(lm_context *ctx, const char *path,
                            lm_model *model);
/* Defined in safetensors_read.c. */
lm_status lm__safetensors_read_into(lm_context *ctx, const char *path,
                                    lm_model *model);

static char *read_text(lm_context *ctx, const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        lm_context_set_error(ctx, LM_ERR_IO, "cannot open '%s': %s", path,
                             strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && n < (1L << 30) && fseek(f, 0, SEEK_SET) == 0) {
            buf = lm_alloc(ctx, (size_t)n + 1);
            if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n) {
                buf[n] = '\0';
                *len = (size_t)n;
            } else {
                lm_free(ctx, buf);
                buf = NULL;
            }
        }
    }
    fclose(f);
    if (!buf)
        lm_context_set_error(ctx, LM_ERR_IO, "cannot read '%s'", path);
    return buf;
}

static void dir_of(const char *path, char *dir, size_t size)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, size, ".");
    else
        snprintf(dir, size, "%.*s", (int)(slash == path ? 1 : slash - path),
                 path);
}

static lm_status read_sharded(lm_context *ctx, const char *index_path,
                              lm_model *model)
{
    size_t len = 0;
    char *text = read_text(ctx, index_path, &len);
    if (!text)
        return LM_ERR_IO;
    cJSON *root = cJSON_ParseWithLength(text, len);
    lm_free(ctx, text);
    const cJSON *map = root ? cJSON_GetObjectItemCaseSensitive(root,
                                                               "weight_map")
                            : NULL;
    lm_status st = LM_OK;
    if (!cJSON_IsObject(map))
        st = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                  "%s: not a JSON object with a "
                                  "\"weight_map\" object", index_path);
    char dir[4096];
    dir_of(index_path, dir, sizeof(dir));
    size_t n_map = 0;
    for (const cJSON *e = map ? map->child : NULL; st == LM_OK && e;
         e = e->next) {
        n_map++;
        const char *file = cJSON_IsString(e) ? e->valuestring : NULL;
        if (!file || !*file || strchr(file, '/') || !strcmp(file, "..") ||
            !strcmp(file, "."))
            st = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                      "%s: weight_map entry '%s' must name a "
                                      "file in the same directory",
                                      index_path, e->string);
    }
    /* Read every shard once, in order of first mention, and check that
     * each tensor sits in the shard the map names. */
    for (const cJSON *e = map ? map->child : NULL; st == LM_OK && e;
         e = e->next) {
        bool first = true;
        for (const cJSON *p = map->child; p != e; p = p->next)
            if (!strcmp(p->valuestring, e->valuestring))
                first = false;
        if (!first)
            continue;
        char shard[8192];
        snprintf(shard, sizeof(shard), "%s/%s", dir, e->valuestring);
        size_t before = lm_model_count(model);
        st = lm__safetensors_read_into(ctx, shard, model);
        for (size_t i = before; st == LM_OK && i < lm_model_count(model);
             i++) {
            const char *name = lm_model_name(model, i);
            const cJSON *where = cJSON_GetObjectItemCaseSensitive(map, name);
            if (!cJSON_IsString(where))
                st = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                          "%s: tensor '%s' of shard '%s' is "
                                          "not in the weight_map", index_path,
                                          name, e->valuestring);
            else if (strcmp(where->valuestring, e->valuestring))
                st = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                          "%s: weight_map puts '%s' in '%s' "
                                          "but it is in '%s'", index_path,
                                          name, where->valuestring,
                                          e->valuestring);
        }
    }
    if (st == LM_OK && lm_model_count(model) != n_map) {
        for (const cJSON *e = map->child; e; e = e->next) {
            if (!lm__model_lookup(model, e->string)) {
                st = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                          "%s: weight_map lists '%s' but "
                                          "shard '%s' does not hold it",
                                          index_path, e->string,
                                          e->valuestring);
                break;
            }
        }
        if (st == LM_OK)
            st = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                      "%s: weight_map names a tensor twice",
                                      index_path);
    }
    cJSON_Delete(root);
    return st;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

static bool is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

lm_status lm_model_open(lm_context *ctx, const char *path, lm_model **out)
{
    if (!ctx || !path || !out)
        return LM_ERR_INVALID_ARGUMENT;
    struct stat st;
    if (stat(path, &st) != 0)
        return lm_context_set_error(ctx, LM_ERR_IO, "cannot open '%s': %s",
                                    path, strerror(errno));
    char found[8192];
    bool sharded;
    if (S_ISDIR(st.st_mode)) {
        snprintf(found, sizeof(found), "%s/%s", path, INDEX_NAME);
        sharded = is_file(found);
        if (!sharded) {
            snprintf(found, sizeof(found), "%s/%s", path, SINGLE_NAME);
            if (!is_file(found))
                return lm_context_set_error(ctx, LM_ERR_NOT_FOUND,
                                            "directory '%s' has neither %s "
                                            "nor %s", path, INDEX_NAME,
                                            SINGLE_NAME);
        }
    } else {
        snprintf(found, sizeof(found), "%s", path);
        sharded = ends_with(path, ".index.json");
    }
    lm_model *model;
    LM_TRY(lm_model_create(ctx, &model));
    lm_status s = sharded ? read_sharded(ctx, found, model)
                  : ends_with(found, ".npz")
                      ? lm__npz_read_into(ctx, found, model)
                  : ends_with(found, ".gguf")
                      ? lm__gguf_read_into(ctx, found, model)
                      : lm__safetensors_read_into(ctx, found, model);
    if (s != LM_OK) {
        lm_model_destroy(model);
        return s;
    }
    *out = model;
    return LM_OK;
}
