/* Reading a sharded safetensors checkpoint through its Hugging Face index
 * (model.safetensors.index.json): every shard named in the weight_map is
 * read once, and the map is checked against the shards. */
#include <cJSON.h>
#include <stdio.h>
#include <string.h>

#include "io/formats_read.h"
#include "io/input_file.h"
#include "io/json_check.h"
#include "io/json_oom.h"

/* The largest index file read (real ones are a few hundred KB). */
#define MAX_INDEX ((size_t)1 << 30)

/* "dir/name" in a new string (lm_free), or NULL when out of memory. */
static char *join(lm_context *ctx, const char *dir, size_t dir_len,
                  const char *name)
{
    size_t n = dir_len + 1 + strlen(name) + 1;
    char *p = lm_alloc(ctx, n);
    if (p)
        snprintf(p, n, "%.*s/%s", (int)dir_len, dir, name);
    return p;
}

/* The directory part of `path`: its length (".": *dir replaced). */
static size_t dir_of(const char **dir)
{
    const char *slash = strrchr(*dir, '/');
    if (!slash) {
        *dir = ".";
        return 1;
    }
    return slash == *dir ? 1 : (size_t)(slash - *dir);
}

/* The weight_map as parallel arrays, with hashed lookup of tensor names
 * and of distinct shard file names (an index may list 10^5 tensors). */
struct weight_map {
    const char **names, **files;
    size_t n;
    struct lm__name_set by_name;
    const char **shards; /* distinct files, first mention first */
    size_t n_shards;
    struct lm__name_set by_shard;
};

static void weight_map_free(lm_context *ctx, struct weight_map *w)
{
    lm_free(ctx, w->names);
    lm_free(ctx, w->files);
    lm_free(ctx, w->shards);
    lm__name_set_free(ctx, &w->by_name);
    lm__name_set_free(ctx, &w->by_shard);
}

static lm_status weight_map_load(lm_context *ctx, const char *index_path,
                                 const cJSON *map, struct weight_map *w)
{
    for (const cJSON *e = map->child; e; e = e->next)
        w->n++;
    if (!w->n)
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: the weight_map is empty (a model "
                                    "needs at least one tensor)", index_path);
    w->names = lm__calloc(ctx, w->n, sizeof(*w->names));
    w->files = lm__calloc(ctx, w->n, sizeof(*w->files));
    w->shards = lm__calloc(ctx, w->n, sizeof(*w->shards));
    if (!w->names || !w->files || !w->shards)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "%s: out of memory reading the "
                                    "weight_map of %zu tensors", index_path,
                                    w->n);
    size_t i = 0;
    for (const cJSON *e = map->child; e; e = e->next, i++) {
        const char *file = cJSON_IsString(e) ? e->valuestring : NULL;
        if (!file || !*file || strchr(file, '/') || !strcmp(file, "..") ||
            !strcmp(file, "."))
            return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                        "%s: weight_map entry '%s' must name "
                                        "a file in the same directory",
                                        index_path, e->string);
        w->names[i] = e->string;
        w->files[i] = file;
        if (lm__name_set_find(&w->by_name, e->string, lm__name_of_strings,
                              w->names) != SIZE_MAX)
            return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                        "%s: weight_map names tensor '%s' "
                                        "twice", index_path, e->string);
        lm_status st = lm__name_set_add(ctx, &w->by_name, i,
                                        lm__name_of_strings, w->names);
        if (st == LM_OK &&
            lm__name_set_find(&w->by_shard, file, lm__name_of_strings,
                              w->shards) == SIZE_MAX) {
            w->shards[w->n_shards] = file;
            st = lm__name_set_add(ctx, &w->by_shard, w->n_shards,
                                  lm__name_of_strings, w->shards);
            w->n_shards += st == LM_OK;
        }
        if (st != LM_OK)
            return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                        "%s: out of memory reading the "
                                        "weight_map at '%s'", index_path,
                                        e->string);
    }
    return LM_OK;
}

/* Read every shard once, in order of first mention, and check that each
 * tensor sits in the shard the map names. */
static lm_status read_shards(lm_context *ctx, const char *index_path,
                             const struct weight_map *w, lm_model *model)
{
    const char *dir = index_path;
    size_t dir_len = dir_of(&dir);
    for (size_t s = 0; s < w->n_shards; s++) {
        const char *file = w->shards[s];
        char *shard = join(ctx, dir, dir_len, file);
        if (!shard)
            return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                        "%s: out of memory opening shard "
                                        "'%s'", index_path, file);
        size_t before = lm_model_count(model);
        lm_status st = lm__safetensors_read_into(ctx, shard, model);
        lm_free(ctx, shard);
        for (size_t i = before; st == LM_OK && i < lm_model_count(model);
             i++) {
            const char *name = lm_model_name_at(model, i);
            size_t at = lm__name_set_find(&w->by_name, name,
                                          lm__name_of_strings, w->names);
            if (at == SIZE_MAX)
                st = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                          "%s: tensor '%s' of shard '%s' is "
                                          "not in the weight_map", index_path,
                                          name, file);
            else if (strcmp(w->files[at], file))
                st = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                          "%s: weight_map puts '%s' in '%s' "
                                          "but it is in '%s'", index_path,
                                          name, w->files[at], file);
        }
        LM_TRY(st);
    }
    for (size_t i = 0; lm_model_count(model) != w->n && i < w->n; i++)
        if (!lm__model_lookup(model, w->names[i]))
            return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                        "%s: weight_map lists '%s' but "
                                        "shard '%s' does not hold it",
                                        index_path, w->names[i], w->files[i]);
    return LM_OK;
}

lm_status lm__safetensors_index_read_into(lm_context *ctx,
                                          const char *index_path,
                                          lm_model *model)
{
    size_t len = 0;
    char *text = NULL;
    LM_TRY(lm__read_input(ctx, NULL, index_path, MAX_INDEX, &text, &len));
    lm_status st = lm__json_check(ctx, index_path, text, len, "");
    cJSON *root = st == LM_OK ? cJSON_ParseWithLength(text, len) : NULL;
    if (st == LM_OK && !root && lm__json_parse_ran_out_of_memory(text, len))
        st = lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                  "%s: out of memory parsing %zu bytes of "
                                  "JSON", index_path, len);
    lm_free(ctx, text);
    LM_TRY(st);
    const cJSON *map = root ? cJSON_GetObjectItemCaseSensitive(root,
                                                               "weight_map")
                            : NULL;
    struct weight_map w;
    memset(&w, 0, sizeof(w));
    if (!cJSON_IsObject(map))
        st = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                  "%s: not a JSON object with a "
                                  "\"weight_map\" object", index_path);
    if (st == LM_OK)
        st = weight_map_load(ctx, index_path, map, &w);
    if (st == LM_OK)
        st = read_shards(ctx, index_path, &w, model);
    weight_map_free(ctx, &w);
    cJSON_Delete(root);
    return st;
}
