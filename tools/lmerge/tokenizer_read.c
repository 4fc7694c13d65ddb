/* Reading a Hugging Face tokenizer.json with cJSON: the vocabulary of its
 * model (BPE, WordPiece and WordLevel: {"token": id}; Unigram: [[token,
 * score], ...], the id being the position) and its added_tokens. A file we
 * cannot read exactly is an error naming the file and field, never a guess:
 * a wrong vocabulary silently moves embedding rows. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/regular_file.h"
#include "tokenizer_internal.h"

char *tok_read_file(const char *path, size_t *len)
{
    struct stat st;
    const char *kind;
    int fd = lm__open_regular(path, &st, &kind);
    if (fd < 0) {
        if (kind)
            errno = EINVAL;
        return NULL;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (buf && got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    int saved = errno;
    close(fd);
    if (!buf || got != (size_t)st.st_size) {
        free(buf);
        errno = buf ? (saved ? saved : EIO) : ENOMEM;
        return NULL;
    }
    buf[got] = '\0';
    *len = got;
    return buf;
}

/* cJSON stops a string at \u0000 and the whole text at a NUL byte, so a
 * token holding one would be read as another token. */
static const char *nul_problem(const char *text, size_t len)
{
    if (strlen(text) != len)
        return "a NUL byte";
    for (const char *s = text; (s = strstr(s, "\\u0000")); s++) {
        size_t backslashes = 0;
        for (const char *b = s; b > text && b[-1] == '\\'; b--)
            backslashes++;
        if (backslashes % 2 == 0)
            return "the escape \\u0000 in a string";
    }
    return NULL;
}

cJSON *tok_json_load(const char *path, bool *missing, char *err,
                     size_t err_size)
{
    size_t len = 0;
    char *text = tok_read_file(path, &len);
    if (missing)
        *missing = !text && errno == ENOENT;
    if (!text) {
        if (!(missing && *missing))
            snprintf(err, err_size, "%s: cannot read: %s", path,
                     errno == EINVAL ? "not a regular file" : strerror(errno));
        return NULL;
    }
    const char *bad = nul_problem(text, len);
    cJSON *root = bad ? NULL : cJSON_ParseWithLength(text, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        snprintf(err, err_size, "%s: %s%s (byte %ld)", path,
                 bad ? "holds " : "not valid JSON",
                 bad ? bad : "",
                 at && !bad && at >= text && at <= text + len
                     ? (long)(at - text)
                     : 0L);
    }
    free(text);
    return root;
}

int64_t tok_config_int(const char *dir, const char *key, char *err,
                       size_t err_size)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    struct stat st;
    if (stat(dir, &st) || !S_ISDIR(st.st_mode))
        return -1;
    bool missing = false;
    cJSON *root = tok_json_load(path, &missing, err, err_size);
    if (!root)
        return missing ? -1 : -2;
    int64_t out = -1;
    const cJSON *v = cJSON_IsObject(root)
                         ? cJSON_GetObjectItemCaseSensitive(root, key)
                         : NULL;
    if (!cJSON_IsObject(root)) {
        snprintf(err, err_size, "%s: not a JSON object", path);
        out = -2;
    } else if (v && !cJSON_IsNull(v)) {
        double d = cJSON_IsNumber(v) ? v->valuedouble : -1;
        if (!(d >= 0 && d < 2147483648.0 && d == floor(d))) {
            snprintf(err, err_size, "%s: '%s' is not a non-negative integer",
                     path, key);
            out = -2;
        } else {
            out = (int64_t)d;
        }
    }
    cJSON_Delete(root);
    return out;
}

static int bad(char *err, size_t err_size, const char *path, const char *fmt,
               const char *field, const char *token)
{
    char msg[512];
    snprintf(msg, sizeof(msg), fmt, field, token ? token : "");
    snprintf(err, err_size, "%s: %s", path, msg);
    return -1;
}

static bool as_id(const cJSON *v, int64_t *id)
{
    if (!cJSON_IsNumber(v))
        return false;
    double d = v->valuedouble;
    if (!(d >= 0 && d < 2147483648.0 && d == floor(d)))
        return false;
    *id = (int64_t)d;
    return true;
}

/* One (token, id) of the model's vocabulary or of added_tokens. */
struct entry {
    const char *token;
    int64_t id;
};

static int collect(const cJSON *model, const char *type, struct entry **out,
                   size_t *n, const char *path, char *err, size_t err_size)
{
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    bool unigram = strcmp(type, "Unigram") == 0;
    if (unigram ? !cJSON_IsArray(vocab) : !cJSON_IsObject(vocab))
        return bad(err, err_size, path,
                   unigram ? "'model.vocab' must be a list of [token, score] "
                             "for a Unigram model%s"
                           : "'model.vocab' must be an object of token: id "
                             "for a %s model",
                   unigram ? "" : type, NULL);
    size_t cap = (size_t)cJSON_GetArraySize(vocab);
    *out = calloc(cap ? cap : 1, sizeof(**out));
    if (!*out)
        return bad(err, err_size, path, "out of memory%s", "", NULL);
    *n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        struct entry *e = &(*out)[*n];
        if (unigram) {
            const cJSON *tok = cJSON_GetArrayItem(it, 0);
            if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) != 2 ||
                !cJSON_IsString(tok) || !cJSON_IsNumber(it->child->next)) {
                char where[64];
                snprintf(where, sizeof(where), "model.vocab[%zu]", *n);
                return bad(err, err_size, path,
                           "'%s' is not a [token, score] pair%s", where, NULL);
            }
            e->token = tok->valuestring;
            e->id = (int64_t)*n;
        } else {
            e->token = it->string;
            if (!as_id(it, &e->id))
                return bad(err, err_size, path,
                           "'%s' of token '%s' is not a non-negative integer "
                           "id",
                           "model.vocab", it->string);
        }
        (*n)++;
    }
    return 0;
}

/* BPE files written before "type" existed are recognised by their fields,
 * as the tokenizers library does. */
static const char *model_type(const cJSON *model)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (cJSON_IsString(t))
        return t->valuestring;
    if (t)
        return NULL;
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (cJSON_IsArray(vocab))
        return "Unigram";
    if (cJSON_GetObjectItemCaseSensitive(model, "merges"))
        return "BPE";
    if (cJSON_GetObjectItemCaseSensitive(model, "continuing_subword_prefix"))
        return "WordPiece";
    return "WordLevel";
}

static int index_vocab(struct tok_vocab *v, struct entry *model_entries,
                       size_t n_model, struct entry *added, size_t n_added,
                       char *err, size_t err_size)
{
    int64_t max_id = -1;
    for (size_t i = 0; i < n_model; i++)
        max_id = model_entries[i].id > max_id ? model_entries[i].id : max_id;
    for (size_t i = 0; i < n_added; i++)
        max_id = added[i].id > max_id ? added[i].id : max_id;
    /* Ids index embedding rows: far more ids than tokens is not a
     * vocabulary (and would allocate without bound). */
    if (max_id >= (int64_t)(2 * (n_model + n_added) + 1024)) {
        snprintf(err, err_size, "%s: token ids are not dense: id %lld for "
                 "%zu tokens", v->path, (long long)max_id, n_model + n_added);
        return -1;
    }
    v->n_ids = max_id + 1;
    v->by_id = calloc((size_t)(v->n_ids ? v->n_ids : 1), sizeof(char *));
    if (!v->by_id)
        return bad(err, err_size, v->path, "out of memory%s", "", NULL);
    for (size_t i = 0; i < n_model; i++) {
        struct entry *e = &model_entries[i];
        if (tok_map_get(&v->map, e->token) >= 0)
            return bad(err, err_size, v->path,
                       "'%s' lists token '%s' twice", "model.vocab", e->token);
        if (v->by_id[e->id])
            return bad(err, err_size, v->path,
                       "'%s': two tokens share the id of '%s'", "model.vocab",
                       e->token);
        v->by_id[e->id] = (char *)e->token;
        if (tok_map_put(&v->map, e->token, e->id))
            return bad(err, err_size, v->path, "out of memory%s", "", NULL);
    }
    for (size_t i = 0; i < n_added; i++) {
        struct entry *e = &added[i];
        int64_t old = tok_map_get(&v->map, e->token);
        if (v->by_id[e->id] && strcmp(v->by_id[e->id], e->token) != 0)
            return bad(err, err_size, v->path,
                       "'%s': the id of added token '%s' belongs to another "
                       "token",
                       "added_tokens", e->token);
        /* As transformers' get_vocab(): the added token's id wins and the
         * vocabulary's entry for the same text is shadowed. */
        if (old >= 0 && old != e->id)
            v->by_id[old] = NULL;
        v->by_id[e->id] = (char *)e->token;
        if (tok_map_put(&v->map, e->token, e->id))
            return bad(err, err_size, v->path, "out of memory%s", "", NULL);
    }
    return 0;
}

int tok_vocab_read(const char *dir, struct tok_vocab *v, char *err,
                   size_t err_size)
{
    memset(v, 0, sizeof(*v));
    struct stat st;
    if (stat(dir, &st) || !S_ISDIR(st.st_mode))
        return 1;
    size_t need = strlen(dir) + sizeof("/tokenizer.json");
    v->path = malloc(need);
    if (!v->path)
        return bad(err, err_size, dir, "out of memory%s", "", NULL);
    snprintf(v->path, need, "%s/tokenizer.json", dir);
    bool missing = false;
    v->root = tok_json_load(v->path, &missing, err, err_size);
    if (!v->root) {
        tok_vocab_free(v);
        return missing ? 1 : -1;
    }
    struct entry *model_entries = NULL, *added = NULL;
    size_t n_model = 0, n_added = 0;
    int rc = -1;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(v->root, "model");
    const cJSON *added_list =
        cJSON_GetObjectItemCaseSensitive(v->root, "added_tokens");
    if (!cJSON_IsObject(v->root)) {
        bad(err, err_size, v->path, "not a JSON object%s", "", NULL);
    } else if (!cJSON_IsObject(model)) {
        bad(err, err_size, v->path, "'%s' is missing or not an object%s",
            "model", NULL);
    } else if (!(v->model_type = model_type(model))) {
        bad(err, err_size, v->path, "'%s' is not a string%s", "model.type",
            NULL);
    } else if (strcmp(v->model_type, "BPE") &&
               strcmp(v->model_type, "WordPiece") &&
               strcmp(v->model_type, "WordLevel") &&
               strcmp(v->model_type, "Unigram")) {
        bad(err, err_size, v->path,
            "'model.type' '%s' is none of BPE, WordPiece, WordLevel, "
            "Unigram%s",
            v->model_type, NULL);
    } else if (added_list && !cJSON_IsNull(added_list) &&
               !cJSON_IsArray(added_list)) {
        bad(err, err_size, v->path, "'%s' is not a list%s", "added_tokens",
            NULL);
    } else if (!collect(model, v->model_type, &model_entries, &n_model,
                        v->path, err, err_size)) {
        n_added = (size_t)cJSON_GetArraySize(added_list);
        added = calloc(n_added ? n_added : 1, sizeof(*added));
        /* repeated texts and ids, found in a map: files add 10^5 tokens */
        struct tok_map seen = {0}, seen_ids = {0};
        char **ids = calloc(n_added ? n_added : 1, sizeof(char *));
        rc = added && ids ? 0 : bad(err, err_size, v->path,
                                    "out of memory%s", "", NULL);
        size_t i = 0;
        const cJSON *it, *list = cJSON_IsArray(added_list) ? added_list
                                                           : NULL;
        cJSON_ArrayForEach(it, list) {
            const cJSON *c = cJSON_GetObjectItemCaseSensitive(it, "content");
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
            char where[64];
            snprintf(where, sizeof(where), "added_tokens[%zu]", i);
            if (rc == 0 && (!cJSON_IsString(c) || !c->valuestring[0]))
                rc = bad(err, err_size, v->path,
                         "'%s.content' is missing or not a non-empty "
                         "string%s",
                         where, NULL);
            else if (rc == 0 && !as_id(id, &added[i].id))
                rc = bad(err, err_size, v->path,
                         "'%s.id' is not a non-negative integer%s", where,
                         NULL);
            if (rc == 0) {
                added[i].token = c->valuestring;
                char idkey[32];
                snprintf(idkey, sizeof(idkey), "%lld",
                         (long long)added[i].id);
                if (tok_map_get(&seen, c->valuestring) >= 0 ||
                    tok_map_get(&seen_ids, idkey) >= 0)
                    rc = bad(err, err_size, v->path,
                             "'%s' repeats the text or id of an earlier "
                             "added token%s",
                             where, NULL);
                else if (tok_map_put(&seen, c->valuestring, 0) ||
                         !(ids[i] = strdup(idkey)) ||
                         tok_map_put(&seen_ids, ids[i], 0))
                    rc = bad(err, err_size, v->path, "out of memory%s", "",
                             NULL);
            }
            i++;
        }
        tok_map_free(&seen);
        tok_map_free(&seen_ids);
        for (size_t j = 0; ids && j < n_added; j++)
            free(ids[j]);
        free(ids);
        if (rc == 0)
            rc = index_vocab(v, model_entries, n_model, added, n_added, err,
                             err_size);
    }
    free(model_entries);
    free(added);
    if (rc)
        tok_vocab_free(v);
    return rc;
}

void tok_vocab_free(struct tok_vocab *v)
{
    free(v->path);
    cJSON_Delete(v->root);
    free(v->by_id);
    tok_map_free(&v->map);
    memset(v, 0, sizeof(*v));
}
