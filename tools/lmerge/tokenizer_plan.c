/* The merged vocabulary and each model's row permutation, following
 * mergekit's build_tokenizer (mergekit/tokenizer/build.py):
 *  - every model's usable vocabulary is its tokenizer's tokens with ids
 *    below its config.json vocab_size (all of them without one); the
 *    base's tokenizer is stripped of the others;
 *  - base: the stripped base tokenizer; a model: that model's tokenizer;
 *  - union: the stripped base tokenizer, then every other token of the
 *    models (base first, config order, each in id order) appended as a
 *    plain added token (special false, normalized true, as transformers'
 *    add_tokens(str) makes them), then the added tokens of every model not
 *    present yet, with the first model's settings;
 *  - then the tokens named under tokenizer.tokens, appended when absent.
 * The permutation maps each output id to the model's row, or -1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

static int oom(char *err, size_t err_size)
{
    snprintf(err, err_size, "out of memory");
    return -1;
}

/* A token usable by model m: in its vocabulary with an id below its
 * vocab_size (mergekit skips the others, warning "(padding?)"). */
static int64_t usable_id(const lmerge_tok_plan *p, size_t m, const char *tok)
{
    const struct tok_model *mm = &p->models[m];
    const struct tok_vocab *v = mm->has_vocab ? &mm->vocab
                                              : &p->models[0].vocab;
    int64_t limit = mm->has_vocab ? mm->vocab_size : p->models[0].vocab_size;
    if (limit < 0)
        limit = (int64_t)v->map.n;
    int64_t id = tok_map_get(&v->map, tok);
    return id >= 0 && id < limit ? id : -1;
}

static int append(lmerge_tok_plan *p, const char *tok, int64_t *cap,
                  char *err, size_t err_size)
{
    if (p->n_out == *cap) {
        int64_t nc = *cap ? *cap * 2 : 1024;
        char **t = realloc(p->out_tokens, (size_t)nc * sizeof(*t));
        if (!t)
            return oom(err, err_size);
        p->out_tokens = t;
        *cap = nc;
    }
    p->out_tokens[p->n_out] = (char *)tok;
    if (tok_map_put(&p->out_map, tok, p->n_out))
        return oom(err, err_size);
    p->n_out++;
    return 0;
}

/* An added_tokens entry for tokenizer.json: `like`'s settings (another
 * model's entry) or a plain token's (transformers' add_tokens(str)). */
static int add_entry(lmerge_tok_plan *p, const char *tok, int64_t id,
                     const cJSON *like, char *err, size_t err_size)
{
    cJSON *e = like ? cJSON_Duplicate(like, 1) : cJSON_CreateObject();
    if (!e)
        return oom(err, err_size);
    cJSON_DeleteItemFromObjectCaseSensitive(e, "id");
    cJSON_DeleteItemFromObjectCaseSensitive(e, "content");
    bool ok = cJSON_AddNumberToObject(e, "id", (double)id) &&
              cJSON_AddStringToObject(e, "content", tok);
    if (ok && !like) {
        ok = cJSON_AddFalseToObject(e, "single_word") &&
             cJSON_AddFalseToObject(e, "lstrip") &&
             cJSON_AddFalseToObject(e, "rstrip") &&
             cJSON_AddTrueToObject(e, "normalized") &&
             cJSON_AddFalseToObject(e, "special");
    }
    if (!ok || !cJSON_AddItemToArray(p->new_added, e)) {
        cJSON_Delete(e);
        return oom(err, err_size);
    }
    return 0;
}

/* Remove from the base tokenizer what lies at or beyond its vocab_size:
 * vocabulary entries, added tokens, merges naming a removed token (as
 * mergekit's get_stripped_tokenizer, BPE only). */
static int strip_base(lmerge_tok_plan *p, int64_t limit, bool *stripped,
                      char *err, size_t err_size)
{
    struct tok_vocab *v = &p->models[0].vocab;
    *stripped = false;
    struct tok_map removed = {0};
    int rc = 0;
    for (int64_t id = limit; id < v->n_ids && rc == 0; id++)
        if (v->by_id[id] && tok_map_put(&removed, v->by_id[id], id))
            rc = oom(err, err_size);
    if (rc || removed.n == 0) {
        tok_map_free(&removed);
        return rc;
    }
    *stripped = true;
    if (strcmp(v->model_type, "BPE") != 0) {
        snprintf(err, err_size, "%s: ids %lld and above are beyond the "
                 "model's vocab_size; only a BPE tokenizer can be stripped of "
                 "them ('model.type' is %s)", v->path, (long long)limit,
                 v->model_type);
        tok_map_free(&removed);
        return -1;
    }
    cJSON *model = cJSON_GetObjectItemCaseSensitive(p->out_json, "model");
    cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    for (cJSON *it = vocab->child, *next; it; it = next) {
        next = it->next;
        if (tok_map_get(&removed, it->string) >= 0 &&
            it->valuedouble >= (double)limit)
            cJSON_Delete(cJSON_DetachItemViaPointer(vocab, it));
    }
    cJSON *added = cJSON_GetObjectItemCaseSensitive(p->out_json,
                                                    "added_tokens");
    for (cJSON *it = added ? added->child : NULL, *next; it; it = next) {
        next = it->next;
        if (cJSON_GetObjectItemCaseSensitive(it, "id")->valuedouble >=
            (double)limit)
            cJSON_Delete(cJSON_DetachItemViaPointer(added, it));
    }
    cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    int i = 0;
    for (cJSON *it = merges ? merges->child : NULL, *next; it; it = next, i++) {
        next = it->next;
        const char *a = NULL, *b = NULL;
        char buf[1024];
        if (cJSON_IsString(it)) {
            const char *sp = strchr(it->valuestring, ' ');
            if (sp && !strchr(sp + 1, ' ') &&
                (size_t)(sp - it->valuestring) < sizeof(buf)) {
                memcpy(buf, it->valuestring, (size_t)(sp - it->valuestring));
                buf[sp - it->valuestring] = '\0';
                a = buf;
                b = sp + 1;
            }
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 &&
                   cJSON_IsString(it->child) &&
                   cJSON_IsString(it->child->next)) {
            a = it->child->valuestring;
            b = it->child->next->valuestring;
        }
        if (!a) {
            snprintf(err, err_size, "%s: 'model.merges[%d]' is neither \"a "
                     "b\" nor [\"a\", \"b\"]", v->path, i);
            tok_map_free(&removed);
            return -1;
        }
        if (tok_map_get(&removed, a) >= 0 || tok_map_get(&removed, b) >= 0)
            cJSON_Delete(cJSON_DetachItemViaPointer(merges, it));
    }
    tok_map_free(&removed);
    return 0;
}

/* The output starts from one tokenizer (the stripped base, or the source
 * model's): its tokens in id order, which must be 0..n-1 without a gap
 * (each id is an embedding row). */
static int start_from(lmerge_tok_plan *p, size_t m, int64_t limit,
                      int64_t *cap, char *err, size_t err_size)
{
    const struct tok_vocab *v = &p->models[m].vocab;
    for (int64_t id = 0; id < v->n_ids && id < limit; id++) {
        if (!v->by_id[id]) {
            snprintf(err, err_size, "%s: no token has id %lld: the ids of "
                     "'model.vocab' and 'added_tokens' must run from 0 "
                     "without a gap", v->path, (long long)id);
            return -1;
        }
        if (append(p, v->by_id[id], cap, err, err_size))
            return -1;
    }
    return 0;
}

/* An added_tokens entry of model m's tokenizer.json by text, or NULL. */
static const cJSON *added_entry(const struct tok_vocab *v, const char *tok)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(v->root,
                                                            "added_tokens")) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (!strcmp(c->valuestring, tok))
            return it;
    }
    return NULL;
}

static int build_union(lmerge_tok_plan *p, int64_t *cap, char *err,
                       size_t err_size)
{
    /* Added tokens of every model, first settings kept (mergekit warns
     * when two models add a token with different settings). */
    struct tok_map added = {0};
    const cJSON **entries = NULL;
    size_t n_entries = 0, cap_entries = 0;
    int rc = 0;
    for (size_t m = 0; m < p->n_models && rc == 0; m++) {
        if (!p->models[m].is_input || !p->models[m].has_vocab)
            continue;
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(
                                   p->models[m].vocab.root, "added_tokens")) {
            const char *tok =
                cJSON_GetObjectItemCaseSensitive(it, "content")->valuestring;
            if (usable_id(p, m, tok) < 0 || tok_map_get(&added, tok) >= 0)
                continue;
            if (n_entries == cap_entries) {
                cap_entries = cap_entries ? 2 * cap_entries : 64;
                const cJSON **e = realloc(entries, cap_entries *
                                                       sizeof(*entries));
                if (!e) {
                    rc = oom(err, err_size);
                    break;
                }
                entries = e;
            }
            entries[n_entries] = it;
            if (tok_map_put(&added, tok, (int64_t)n_entries++)) {
                rc = oom(err, err_size);
                break;
            }
        }
    }
    /* Plain tokens the base lacks, in model order then id order. */
    for (size_t m = 1; m < p->n_models && rc == 0; m++) {
        const struct tok_model *mm = &p->models[m];
        if (!mm->is_input || !mm->has_vocab)
            continue;
        for (int64_t id = 0; id < mm->vocab.n_ids && rc == 0; id++) {
            const char *tok = mm->vocab.by_id[id];
            if (!tok || usable_id(p, m, tok) != id ||
                tok_map_get(&added, tok) >= 0 ||
                tok_map_get(&p->out_map, tok) >= 0)
                continue;
            rc = add_entry(p, tok, p->n_out, NULL, err, err_size);
            if (rc == 0)
                rc = append(p, tok, cap, err, err_size);
        }
    }
    /* Added tokens: new ones appended; one the base has as a plain token
     * becomes an added token at the base's id, as the tokenizers library
     * registers it. */
    for (size_t i = 0; i < n_entries && rc == 0; i++) {
        const char *tok = cJSON_GetObjectItemCaseSensitive(entries[i],
                                                           "content")
                              ->valuestring;
        int64_t have = tok_map_get(&p->out_map, tok);
        if (have >= 0) {
            if (!added_entry(&p->models[0].vocab, tok))
                rc = add_entry(p, tok, have, entries[i], err, err_size);
            continue;
        }
        rc = add_entry(p, tok, p->n_out, entries[i], err, err_size);
        if (rc == 0)
            rc = append(p, tok, cap, err, err_size);
    }
    free(entries);
    tok_map_free(&added);
    return rc;
}

int tok_build_vocab(lmerge_tok_plan *p, char *err, size_t err_size)
{
    const struct lmerge_tok_spec *s = p->spec;
    bool union_ = !strcmp(s->source, "union"), base = !strcmp(s->source,
                                                             "base");
    p->src_model = 0;
    if (!union_ && !base) {
        for (size_t m = 0; m < p->n_models; m++)
            if (!strcmp(p->models[m].path, s->source))
                p->src_model = m;
    }
    struct tok_model *src = &p->models[p->src_model];
    if (!src->has_vocab) {
        snprintf(err, err_size, "%s: no tokenizer.json in '%s' (the "
                 "tokenizer source)", p->spec->legacy ? "tokenizer_source"
                                                      : "tokenizer.source",
                 src->path);
        return -1;
    }
    p->out_json = cJSON_Duplicate(src->vocab.root, 1);
    p->new_added = cJSON_CreateArray();
    if (!p->out_json || !p->new_added)
        return oom(err, err_size);
    int64_t cap = 0;
    bool stripped = false;
    int64_t limit = src->vocab.n_ids;
    if (union_ || base) {
        limit = p->models[0].vocab_size >= 0
                    ? p->models[0].vocab_size
                    : (int64_t)p->models[0].vocab.map.n;
        if (strip_base(p, limit, &stripped, err, err_size))
            return -1;
    }
    if (start_from(p, p->src_model, limit, &cap, err, err_size))
        return -1;
    if (union_ && build_union(p, &cap, err, err_size))
        return -1;
    for (size_t i = 0; i < s->n_tokens; i++) {
        const char *tok = s->tokens[i].token;
        if (tok_map_get(&p->out_map, tok) >= 0)
            continue;
        if (add_entry(p, tok, p->n_out, NULL, err, err_size) ||
            append(p, tok, &cap, err, err_size))
            return -1;
    }
    p->n_rows = p->n_out;
    int64_t k = s->pad_to_multiple_of;
    if (k > 0 && p->n_rows % k)
        p->n_rows += k - p->n_rows % k;
    /* Slow-tokenizer files copied from the base still describe the output
     * when the vocabulary is exactly the base's. */
    const struct tok_vocab *bv = &p->models[0].vocab;
    p->same_as_base = !stripped && cJSON_GetArraySize(p->new_added) == 0 &&
                      p->models[0].has_vocab && p->n_out == bv->n_ids;
    for (int64_t i = 0; p->same_as_base && i < p->n_out; i++)
        p->same_as_base = bv->by_id[i] &&
                          !strcmp(bv->by_id[i], p->out_tokens[i]);
    /* Permutations of the merge's models. */
    for (size_t m = 0; m < p->n_models; m++) {
        if (!p->models[m].is_input)
            continue;
        p->models[m].perm = malloc((size_t)(p->n_out ? p->n_out : 1) *
                                   sizeof(int64_t));
        if (!p->models[m].perm)
            return oom(err, err_size);
        for (int64_t i = 0; i < p->n_out; i++)
            p->models[m].perm[i] = usable_id(p, m, p->out_tokens[i]);
    }
    return 0;
}
