/* The merged tokenizer's files in the output's staging directory, as
 * mergekit's tokenizer.save_pretrained leaves them (mergekit/merge.py):
 * tokenizer.json (the source tokenizer, stripped, with the appended
 * added tokens), tokenizer_config.json (the source's, its
 * added_tokens_decoder rebuilt and chat_template set),
 * special_tokens_map.json (the source's) and config.json's vocab_size (the
 * padded row count). Slow-tokenizer files copied from the base (vocab.json,
 * merges.txt, tokenizer.model, ...) are removed when the vocabulary is no
 * longer the base's: they would describe another one. Every file is
 * written in the staging directory, so a failure leaves no output. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tokenizer_internal.h"

static int write_text(const char *dir, const char *name, const char *text,
                      char *err, size_t err_size)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    /* A copied side file may be a hard link's twin: replace, never write
     * through. */
    if (unlink(path) && errno != ENOENT) {
        snprintf(err, err_size, "cannot replace '%s': %s", path,
                 strerror(errno));
        return -1;
    }
    FILE *f = fopen(path, "wbx");
    size_t n = strlen(text);
    bool ok = f && fwrite(text, 1, n, f) == n && fputc('\n', f) != EOF;
    if (f && fclose(f))
        ok = false;
    if (!ok) {
        snprintf(err, err_size, "cannot write '%s': %s", path,
                 strerror(errno));
        return -1;
    }
    return 0;
}

static int write_json(const char *dir, const char *name, const cJSON *json,
                      char *err, size_t err_size)
{
    char *text = cJSON_Print(json);
    if (!text) {
        snprintf(err, err_size, "out of memory writing %s", name);
        return -1;
    }
    int rc = write_text(dir, name, text, err, err_size);
    cJSON_free(text);
    return rc;
}

static void remove_file(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    unlink(path);
}

static int by_id(const void *a, const void *b)
{
    double x = cJSON_GetObjectItemCaseSensitive(*(cJSON *const *)a, "id")
                   ->valuedouble,
           y = cJSON_GetObjectItemCaseSensitive(*(cJSON *const *)b, "id")
                   ->valuedouble;
    return (x > y) - (x < y);
}

/* tokenizer.json's added_tokens with the new entries, sorted by id as the
 * tokenizers library writes them. */
static int merge_added(const lmerge_tok_plan *p, char *err, size_t err_size)
{
    cJSON *list = cJSON_GetObjectItemCaseSensitive(p->out_json,
                                                   "added_tokens");
    if (!cJSON_IsArray(list)) {
        cJSON_DeleteItemFromObjectCaseSensitive(p->out_json, "added_tokens");
        list = cJSON_AddArrayToObject(p->out_json, "added_tokens");
    }
    size_t n = (size_t)cJSON_GetArraySize(list) +
               (size_t)cJSON_GetArraySize(p->new_added);
    cJSON **items = calloc(n + 1, sizeof(*items));
    if (!list || !items) {
        free(items);
        return snprintf(err, err_size, "out of memory"), -1;
    }
    size_t k = 0;
    while (list->child)
        items[k++] = cJSON_DetachItemViaPointer(list, list->child);
    const cJSON *it;
    int rc = 0;
    cJSON_ArrayForEach(it, p->new_added) {
        if (!(items[k] = cJSON_Duplicate(it, 1)))
            rc = -1;
        else
            k++;
    }
    qsort(items, k, sizeof(*items), by_id);
    for (size_t i = 0; i < k; i++)
        cJSON_AddItemToArray(list, items[i]);
    free(items);
    if (rc)
        snprintf(err, err_size, "out of memory");
    return rc;
}

/* transformers' tokenizer_config.json "added_tokens_decoder": id -> the
 * added token's settings, for every added token. */
static int set_decoder(cJSON *config, const cJSON *added)
{
    cJSON_DeleteItemFromObjectCaseSensitive(config, "added_tokens_decoder");
    cJSON *dec = cJSON_AddObjectToObject(config, "added_tokens_decoder");
    if (!dec)
        return -1;
    const cJSON *it;
    cJSON_ArrayForEach(it, added) {
        cJSON *e = cJSON_Duplicate(it, 1);
        char key[32];
        snprintf(key, sizeof(key), "%.0f",
                 cJSON_GetObjectItemCaseSensitive(it, "id")->valuedouble);
        if (!e)
            return -1;
        cJSON_DeleteItemFromObjectCaseSensitive(e, "id");
        cJSON_AddItemToObject(dec, key, e);
    }
    return 0;
}

static int set_string(cJSON *obj, const char *key, const char *value)
{
    cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
    return cJSON_AddStringToObject(obj, key, value) ? 0 : -1;
}

/* tokenizer_config.json from `dir` (the tokenizer source), or a new one. */
static cJSON *load_config(const char *dir, char *err, size_t err_size)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    bool missing = false;
    cJSON *c = tok_json_load(path, &missing, err, err_size);
    if (!c && missing) {
        c = cJSON_CreateObject();
        if (c && set_string(c, "tokenizer_class", "PreTrainedTokenizerFast")) {
            cJSON_Delete(c);
            c = NULL;
        }
        if (!c)
            snprintf(err, err_size, "out of memory");
    } else if (c && !cJSON_IsObject(c)) {
        snprintf(err, err_size, "%s: not a JSON object", path);
        cJSON_Delete(c);
        c = NULL;
    }
    return c;
}

static int copy_or_remove(const char *from_dir, const char *dir,
                          const char *name, char *err, size_t err_size)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", from_dir, name);
    size_t len;
    char *text = tok_read_file(path, &len);
    if (!text) {
        if (errno != ENOENT) {
            snprintf(err, err_size, "cannot read '%s': %s", path,
                     strerror(errno));
            return -1;
        }
        remove_file(dir, name);
        return 0;
    }
    int rc = strlen(text) == len ? write_text(dir, name, text, err, err_size)
                                 : (snprintf(err, err_size, "%s: holds a NUL "
                                             "byte", path), -1);
    free(text);
    return rc;
}

/* config.json's vocab_size = the merged row count (mergekit's
 * _update_config_vocab). */
static int set_vocab_size(const lmerge_tok_plan *p, const char *dir,
                          char *err, size_t err_size)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    bool missing = false;
    cJSON *c = tok_json_load(path, &missing, err, err_size);
    if (!c)
        return missing ? 0 : -1;
    int rc = 0;
    if (!cJSON_IsObject(c)) {
        snprintf(err, err_size, "%s: not a JSON object", path);
        rc = -1;
    } else {
        cJSON_DeleteItemFromObjectCaseSensitive(c, "vocab_size");
        rc = cJSON_AddNumberToObject(c, "vocab_size", (double)p->n_rows)
                 ? write_json(dir, "config.json", c, err, err_size)
                 : (snprintf(err, err_size, "out of memory"), -1);
    }
    cJSON_Delete(c);
    return rc;
}

int lmerge_tokenizer_write(const lmerge_tok_plan *p, const char *dir,
                           char *err, size_t err_size)
{
    if (!p->spec->source && !p->chat_template)
        return 0;
    const char *src = p->models[p->spec->source ? p->src_model : 0].path;
    cJSON *config = load_config(src, err, err_size);
    if (!config)
        return -1;
    int rc = 0;
    if (p->spec->source) {
        rc = merge_added(p, err, err_size);
        if (rc == 0 && set_decoder(config, cJSON_GetObjectItemCaseSensitive(
                                               p->out_json, "added_tokens")))
            rc = -1, snprintf(err, err_size, "out of memory");
    }
    if (rc == 0 && p->chat_template) {
        if (set_string(config, "chat_template", p->chat_template))
            rc = -1, snprintf(err, err_size, "out of memory");
        /* transformers prefers these files over tokenizer_config.json */
        remove_file(dir, "chat_template.jinja");
        remove_file(dir, "chat_template.json");
    }
    if (rc == 0)
        rc = write_json(dir, "tokenizer_config.json", config, err, err_size);
    cJSON_Delete(config);
    if (rc || !p->spec->source)
        return rc;
    rc = write_json(dir, "tokenizer.json", p->out_json, err, err_size);
    if (rc == 0)
        rc = copy_or_remove(src, dir, "special_tokens_map.json", err,
                            err_size);
    if (rc == 0 && !p->chat_template && p->src_model != 0)
        rc = copy_or_remove(src, dir, "chat_template.jinja", err, err_size);
    if (!p->same_as_base) {
        static const char *const slow[] = {
            "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model",
            "spiece.model", "sentencepiece.bpe.model", "added_tokens.json"};
        for (size_t i = 0; i < sizeof(slow) / sizeof(slow[0]); i++)
            remove_file(dir, slow[i]);
    }
    if (rc == 0)
        rc = set_vocab_size(p, dir, err, err_size);
    return rc;
}
