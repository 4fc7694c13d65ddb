/* The tokenizer keys of a mergekit config, read from libyaml's document:
 *   tokenizer_source: union | base | MODEL           (legacy)
 *   tokenizer:
 *     source: union | base | MODEL                   (default union)
 *     tokens:
 *       TOKEN: {source: MODEL | {kind: model_token, model: M,
 *               token: T | token_id: N} | {kind: zero}, force: BOOL}
 *     pad_to_multiple_of: N
 *   chat_template: auto | JINJA
 * (mergekit/tokenizer/config.py and mergekit/config.py). Unknown keys are
 * errors naming their line, as everywhere in the config. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "tokenizer.h"

struct rd {
    yaml_document_t *doc;
    const char *path;
    char *err;
    size_t err_size;
};

static int fail(struct rd *r, const yaml_node_t *n, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(r->err, r->err_size, "%s:%lu: %s", r->path,
             n ? (unsigned long)n->start_mark.line + 1 : 0UL, msg);
    return -1;
}

static const char *scalar(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value
                                            : NULL;
}

/* A plain `null`, `~` or empty value (mergekit's None). */
static bool is_null(const yaml_node_t *n)
{
    const char *s = scalar(n);
    return s && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
           (!*s || !strcmp(s, "~") || !strcasecmp(s, "null"));
}

static int dup_scalar(struct rd *r, const yaml_node_t *n, const char *what,
                      char **out)
{
    const char *s = scalar(n);
    if (!s || !*s)
        return fail(r, n, "'%s' must be a non-empty single value", what);
    free(*out);
    *out = strdup(s);
    return *out ? 0 : fail(r, n, "out of memory");
}

static int parse_bool(struct rd *r, const yaml_node_t *n, const char *what,
                      bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"},
                             *const no[] = {"false", "no", "off", "0"};
    const char *s = scalar(n);
    for (int i = 0; s && i < 4; i++) {
        if (!strcasecmp(s, yes[i]))
            return *out = true, 0;
        if (!strcasecmp(s, no[i]))
            return *out = false, 0;
    }
    return fail(r, n, "'%s' must be true or false", what);
}

static int parse_int(struct rd *r, const yaml_node_t *n, const char *what,
                     int64_t *out)
{
    const char *s = scalar(n);
    char *end = NULL;
    long long v = s ? strtoll(s, &end, 10) : -1;
    if (!s || !*s || *end || v < 0 || v > 2147483647LL)
        return fail(r, n, "'%s' must be a non-negative integer", what);
    *out = v;
    return 0;
}

#define EACH_PAIR(p, map)                                                  \
    yaml_node_pair_t *p = (map)->data.mapping.pairs.start;                 \
    p < (map)->data.mapping.pairs.top;                                     \
    p++

static int read_source(struct rd *r, const yaml_node_t *v,
                       struct lmerge_tok_token *t)
{
    t->src_id = -1;
    if (v->type == YAML_SCALAR_NODE) {
        t->kind = LMERGE_TOK_FROM_MODEL;
        return dup_scalar(r, v, "source", &t->model);
    }
    if (v->type != YAML_MAPPING_NODE)
        return fail(r, v, "a token's 'source' is a model or a mapping with "
                          "'kind' (model_token or zero)");
    const char *kind = NULL;
    const yaml_node_t *kind_node = v, *id_node = NULL;
    for (EACH_PAIR(pair, v)) {
        yaml_node_t *k = yaml_document_get_node(r->doc, pair->key);
        yaml_node_t *x = yaml_document_get_node(r->doc, pair->value);
        const char *key = scalar(k);
        int rc = 0;
        if (key && !strcmp(key, "kind")) {
            kind = scalar(x);
            kind_node = x;
        } else if (key && !strcmp(key, "model")) {
            rc = dup_scalar(r, x, "model", &t->model);
        } else if (key && !strcmp(key, "token")) {
            rc = dup_scalar(r, x, "token", &t->src_token);
        } else if (key && !strcmp(key, "token_id")) {
            id_node = x;
            rc = parse_int(r, x, "token_id", &t->src_id);
        } else {
            rc = fail(r, k, "unknown key '%s' in a token source (expected "
                            "kind, model, token, token_id)", key ? key : "?");
        }
        if (rc)
            return rc;
    }
    if (kind && !strcmp(kind, "zero")) {
        t->kind = LMERGE_TOK_ZERO;
        if (t->model || t->src_token || id_node)
            return fail(r, v, "a 'zero' source takes no model or token");
        return 0;
    }
    if (!kind || strcmp(kind, "model_token"))
        return fail(r, kind_node, "a token source's 'kind' must be "
                                  "model_token or zero");
    t->kind = LMERGE_TOK_FROM_MODEL_TOKEN;
    if (!t->model)
        return fail(r, v, "a model_token source needs 'model'");
    if (!t->src_token == !id_node)
        return fail(r, v, "a model_token source takes one of 'token' or "
                          "'token_id'");
    return 0;
}

static int read_tokens(struct rd *r, const yaml_node_t *map,
                       struct lmerge_tok_spec *s)
{
    if (map->type != YAML_MAPPING_NODE)
        return fail(r, map, "'tokenizer.tokens' must be a mapping of token: "
                            "{source, force}");
    size_t n = (size_t)(map->data.mapping.pairs.top -
                        map->data.mapping.pairs.start);
    s->tokens = calloc(n ? n : 1, sizeof(*s->tokens));
    if (!s->tokens)
        return fail(r, map, "out of memory");
    for (EACH_PAIR(pair, map)) {
        yaml_node_t *k = yaml_document_get_node(r->doc, pair->key);
        yaml_node_t *v = yaml_document_get_node(r->doc, pair->value);
        struct lmerge_tok_token *t = &s->tokens[s->n_tokens++];
        t->src_id = -1;
        t->line = (int)k->start_mark.line + 1;
        if (dup_scalar(r, k, "token", &t->token))
            return -1;
        for (size_t j = 0; j + 1 < s->n_tokens; j++)
            if (!strcmp(s->tokens[j].token, t->token))
                return fail(r, k, "token '%s' is given twice", t->token);
        if (v->type != YAML_MAPPING_NODE)
            return fail(r, v, "token '%s': expected a mapping with 'source' "
                              "and optional 'force'", t->token);
        bool has_source = false;
        for (EACH_PAIR(q, v)) {
            yaml_node_t *kk = yaml_document_get_node(r->doc, q->key);
            yaml_node_t *vv = yaml_document_get_node(r->doc, q->value);
            const char *key = scalar(kk);
            int rc;
            if (key && !strcmp(key, "source")) {
                has_source = true;
                rc = read_source(r, vv, t);
            } else if (key && !strcmp(key, "force")) {
                rc = parse_bool(r, vv, "force", &t->force);
            } else {
                rc = fail(r, kk, "unknown key '%s' for token '%s' (expected "
                                 "source, force)", key ? key : "?", t->token);
            }
            if (rc)
                return rc;
        }
        /* mergekit accepts a missing source, then fails while merging. */
        if (!has_source)
            return fail(r, v, "token '%s' needs a 'source'", t->token);
    }
    return 0;
}

static int read_tokenizer(struct rd *r, const yaml_node_t *map,
                          struct lmerge_tok_spec *s)
{
    if (map->type != YAML_MAPPING_NODE)
        return fail(r, map, "'tokenizer' must be a mapping (source, tokens, "
                            "pad_to_multiple_of)");
    for (EACH_PAIR(pair, map)) {
        yaml_node_t *k = yaml_document_get_node(r->doc, pair->key);
        yaml_node_t *v = yaml_document_get_node(r->doc, pair->value);
        const char *key = scalar(k);
        for (yaml_node_pair_t *b = map->data.mapping.pairs.start; b < pair;
             b++) {
            const char *kb = scalar(yaml_document_get_node(r->doc, b->key));
            if (key && kb && !strcmp(key, kb))
                return fail(r, k, "key '%s' is given twice", key);
        }
        int rc;
        if (key && !strcmp(key, "source"))
            rc = dup_scalar(r, v, "tokenizer.source", &s->source);
        else if (key && !strcmp(key, "tokens"))
            rc = is_null(v) ? 0 : read_tokens(r, v, s);
        else if (key && !strcmp(key, "pad_to_multiple_of"))
            rc = is_null(v) ? 0
                            : parse_int(r, v, "pad_to_multiple_of",
                                        &s->pad_to_multiple_of);
        else
            rc = fail(r, k, "unknown key '%s' in 'tokenizer' (expected "
                            "source, tokens, pad_to_multiple_of)",
                      key ? key : "?");
        if (rc)
            return rc;
    }
    if (!s->source && !(s->source = strdup("union")))
        return fail(r, map, "out of memory");
    return 0;
}

bool lmerge_tokenizer_is_key(const char *key)
{
    return !strcmp(key, "tokenizer_source") || !strcmp(key, "tokenizer") ||
           !strcmp(key, "chat_template");
}

int lmerge_tokenizer_spec_read(void *doc, void *value, const char *key,
                               const char *path, struct lmerge_tok_spec *s,
                               char *err, size_t err_size)
{
    struct rd r = {doc, path, err, err_size};
    yaml_node_t *v = value;
    if (!strcmp(key, "chat_template")) {
        s->chat_template_line = (int)v->start_mark.line + 1;
        return is_null(v) ? 0
                          : dup_scalar(&r, v, "chat_template",
                                       &s->chat_template);
    }
    if (is_null(v))
        return 0;
    if (s->source)
        return fail(&r, v, "give either 'tokenizer_source' or 'tokenizer', "
                           "not both");
    s->line = (int)v->start_mark.line + 1;
    if (!strcmp(key, "tokenizer_source")) {
        s->legacy = true;
        return dup_scalar(&r, v, "tokenizer_source", &s->source);
    }
    return read_tokenizer(&r, v, s);
}

void lmerge_tokenizer_spec_free(struct lmerge_tok_spec *s)
{
    free(s->source);
    for (size_t i = 0; i < s->n_tokens; i++) {
        free(s->tokens[i].token);
        free(s->tokens[i].model);
        free(s->tokens[i].src_token);
    }
    free(s->tokens);
    free(s->chat_template);
    memset(s, 0, sizeof(*s));
}
