/* Reading mergekit-style YAML with libyaml's document API, strictly: an
 * unknown key is an error naming its line, so a typo never silently
 * changes a merge. */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "io/regular_file.h"

struct reader {
    yaml_document_t *doc;
    const char *path;
    char *err;
    size_t err_size;
};

static int fail(struct reader *r, const yaml_node_t *node, const char *fmt,
                ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(r->err, r->err_size, "%s:%lu: %s", r->path,
             node ? (unsigned long)node->start_mark.line + 1 : 0UL, msg);
    return -1;
}

static int line_of(const yaml_node_t *node)
{
    return (int)node->start_mark.line + 1;
}

static const char *scalar(const yaml_node_t *node)
{
    return node && node->type == YAML_SCALAR_NODE
               ? (const char *)node->data.scalar.value
               : NULL;
}

static int copy_scalar(struct reader *r, const yaml_node_t *node,
                       const char *key, char **out)
{
    const char *s = scalar(node);
    if (!s)
        return fail(r, node, "'%s' must be a single value", key);
    free(*out);
    *out = strdup(s);
    return *out ? 0 : fail(r, node, "out of memory");
}

static int read_params(struct reader *r, const yaml_node_t *map,
                       const char *where, struct lmerge_param **out,
                       size_t *n_out)
{
    if (map->type != YAML_MAPPING_NODE)
        return fail(r, map, "'%s' must be a mapping of name: value", where);
    size_t n = (size_t)(map->data.mapping.pairs.top -
                        map->data.mapping.pairs.start);
    struct lmerge_param *p = calloc(n ? n : 1, sizeof(*p));
    if (!p)
        return fail(r, map, "out of memory");
    *out = p;
    *n_out = 0;
    for (yaml_node_pair_t *pair = map->data.mapping.pairs.start;
         pair < map->data.mapping.pairs.top; pair++) {
        yaml_node_t *k = yaml_document_get_node(r->doc, pair->key);
        yaml_node_t *v = yaml_document_get_node(r->doc, pair->value);
        const char *key = scalar(k);
        if (!key)
            return fail(r, k, "parameter names must be plain words");
        for (size_t j = 0; j < *n_out; j++)
            if (strcmp(p[j].key, key) == 0)
                return fail(r, k, "parameter '%s' is given twice", key);
        if (!scalar(v))
            return fail(r, v,
                        "parameter '%s': gradients and filtered values are "
                        "not supported yet; give a single value", key);
        p[*n_out].key = strdup(key);
        p[*n_out].value = strdup(scalar(v));
        p[*n_out].line = line_of(v);
        (*n_out)++;
        if (!p[*n_out - 1].key || !p[*n_out - 1].value)
            return fail(r, v, "out of memory");
    }
    return 0;
}

/* YAML allows a key twice in a mapping; a config must not (which one
 * would win is a guess). */
static int reject_duplicate_keys(struct reader *r, const yaml_node_t *map)
{
    for (yaml_node_pair_t *a = map->data.mapping.pairs.start;
         a < map->data.mapping.pairs.top; a++) {
        const char *ka = scalar(yaml_document_get_node(r->doc, a->key));
        for (yaml_node_pair_t *b = map->data.mapping.pairs.start; ka && b < a;
             b++) {
            const char *kb = scalar(yaml_document_get_node(r->doc, b->key));
            if (kb && strcmp(ka, kb) == 0)
                return fail(r, yaml_document_get_node(r->doc, a->key),
                            "key '%s' is given twice", ka);
        }
    }
    return 0;
}

static int read_model(struct reader *r, const yaml_node_t *node,
                      struct lmerge_model_ref *m)
{
    m->line = line_of(node);
    if (node->type == YAML_SCALAR_NODE) /* "- path" shorthand */
        return copy_scalar(r, node, "model", &m->path);
    if (node->type != YAML_MAPPING_NODE)
        return fail(r, node, "each entry of 'models' must be a mapping with "
                             "'model' and optional 'parameters'");
    if (reject_duplicate_keys(r, node))
        return -1;
    for (yaml_node_pair_t *pair = node->data.mapping.pairs.start;
         pair < node->data.mapping.pairs.top; pair++) {
        yaml_node_t *k = yaml_document_get_node(r->doc, pair->key);
        yaml_node_t *v = yaml_document_get_node(r->doc, pair->value);
        const char *key = scalar(k);
        if (key && strcmp(key, "model") == 0) {
            if (copy_scalar(r, v, "model", &m->path))
                return -1;
        } else if (key && strcmp(key, "parameters") == 0) {
            if (read_params(r, v, "parameters", &m->params, &m->n_params))
                return -1;
        } else {
            return fail(r, k, "unknown key '%s' in a model entry (expected "
                              "'model' or 'parameters')", key ? key : "?");
        }
    }
    if (!m->path)
        return fail(r, node, "model entry without 'model: PATH'");
    return 0;
}

static int read_models(struct reader *r, const yaml_node_t *seq,
                       struct lmerge_config *c)
{
    if (seq->type != YAML_SEQUENCE_NODE)
        return fail(r, seq, "'models' must be a list");
    size_t n = (size_t)(seq->data.sequence.items.top -
                        seq->data.sequence.items.start);
    c->models = calloc(n ? n : 1, sizeof(*c->models));
    if (!c->models)
        return fail(r, seq, "out of memory");
    for (yaml_node_item_t *it = seq->data.sequence.items.start;
         it < seq->data.sequence.items.top; it++) {
        if (read_model(r, yaml_document_get_node(r->doc, *it),
                       &c->models[c->n_models++]))
            return -1;
    }
    return 0;
}

/* `stats: path` or `stats: [path, ...]`. */
static int read_stats(struct reader *r, const yaml_node_t *v,
                      struct lmerge_config *c)
{
    c->stats_line = line_of(v);
    if (v->type == YAML_SCALAR_NODE) {
        c->stats = calloc(1, sizeof(char *));
        c->n_stats = c->stats ? 1 : 0;
        return c->stats ? copy_scalar(r, v, "stats", &c->stats[0])
                        : fail(r, v, "out of memory");
    }
    if (v->type != YAML_SEQUENCE_NODE)
        return fail(r, v, "'stats' must be a path or a list of paths");
    size_t n = (size_t)(v->data.sequence.items.top -
                        v->data.sequence.items.start);
    if (!n)
        return fail(r, v, "'stats' is an empty list");
    c->stats = calloc(n, sizeof(char *));
    if (!c->stats)
        return fail(r, v, "out of memory");
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = yaml_document_get_node(
            r->doc, v->data.sequence.items.start[i]);
        c->n_stats = i + 1;
        if (copy_scalar(r, item, "stats", &c->stats[i]))
            return -1;
    }
    return 0;
}

static int read_root(struct reader *r, const yaml_node_t *root,
                     struct lmerge_config *c)
{
    if (!root || root->type != YAML_MAPPING_NODE)
        return fail(r, root, "the config must be a mapping (merge_method, "
                             "base_model, models, parameters, dtype)");
    if (reject_duplicate_keys(r, root))
        return -1;
    for (yaml_node_pair_t *pair = root->data.mapping.pairs.start;
         pair < root->data.mapping.pairs.top; pair++) {
        yaml_node_t *k = yaml_document_get_node(r->doc, pair->key);
        yaml_node_t *v = yaml_document_get_node(r->doc, pair->value);
        const char *key = scalar(k);
        int rc = 0;
        if (!key)
            rc = fail(r, k, "keys must be plain words");
        else if (strcmp(key, "merge_method") == 0) {
            rc = copy_scalar(r, v, key, &c->merge_method);
            c->merge_method_line = line_of(v);
        } else if (strcmp(key, "base_model") == 0)
            rc = copy_scalar(r, v, key, &c->base_model);
        else if (strcmp(key, "dtype") == 0)
            rc = copy_scalar(r, v, key, &c->dtype);
        else if (strcmp(key, "out_dtype") == 0)
            rc = copy_scalar(r, v, key, &c->out_dtype);
        else if (strcmp(key, "models") == 0)
            rc = read_models(r, v, c);
        else if (strcmp(key, "parameters") == 0)
            rc = read_params(r, v, "parameters", &c->params, &c->n_params);
        else if (strcmp(key, "stats") == 0)
            rc = read_stats(r, v, c);
        else if (strcmp(key, "purify") == 0) {
            c->purify_line = line_of(v);
            rc = read_params(r, v, "purify", &c->purify, &c->n_purify);
        } else if (lmerge_tokenizer_is_key(key)) {
            rc = lmerge_tokenizer_spec_read(r->doc, v, key, r->path,
                                            &c->tokenizer, r->err,
                                            r->err_size);
        } else if (strcmp(key, "slices") == 0 || strcmp(key, "modules") == 0)
            rc = fail(r, k, "'%s' is a mergekit feature lmerge does not "
                            "support yet", key);
        else
            rc = fail(r, k, "unknown key '%s' (expected merge_method, "
                            "base_model, models, parameters, dtype, "
                            "out_dtype, stats, purify, tokenizer_source, "
                            "tokenizer, chat_template)", key);
        if (rc)
            return rc;
    }
    if (!c->merge_method)
        return fail(r, root, "missing 'merge_method'");
    if (!c->base_model)
        return fail(r, root, "missing 'base_model' (every libmerge method "
                             "merges task vectors relative to a base)");
    if (!c->n_models)
        return fail(r, root, "missing or empty 'models'");
    return 0;
}

/* A config is one YAML document: a second one ("---" and more keys) was
 * silently ignored, so a merge could run without half of what the file
 * says. */
static int single_document(yaml_parser_t *parser, const char *path, char *err,
                           size_t err_size)
{
    yaml_document_t next;
    if (!yaml_parser_load(parser, &next)) {
        snprintf(err, err_size, "%s:%lu: YAML syntax error: %s", path,
                 (unsigned long)parser->problem_mark.line + 1,
                 parser->problem ? parser->problem : "unknown");
        return -1;
    }
    yaml_node_t *root = yaml_document_get_root_node(&next);
    int rc = 0;
    if (root) {
        snprintf(err, err_size, "%s:%lu: a second YAML document; a config "
                 "is one document", path,
                 (unsigned long)next.start_mark.line + 1);
        rc = -1;
    }
    yaml_document_delete(&next);
    return rc;
}

int lmerge_config_load(const char *path, struct lmerge_config *out,
                       char *err, size_t err_size)
{
    memset(out, 0, sizeof(*out));
    /* Regular files only: fopen() of a FIFO blocks until a writer comes. */
    struct stat st;
    const char *kind;
    int fd = lm__open_regular(path, &st, &kind);
    FILE *f = fd >= 0 ? fdopen(fd, "rb") : NULL;
    if (!f) {
        if (kind)
            snprintf(err, err_size, "'%s' is %s%s", path, kind,
                     strncmp(kind, "not ", 4) ? ", not a regular file" : "");
        else
            snprintf(err, err_size, "%s: cannot open: %s", path,
                     strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    yaml_parser_t parser;
    yaml_document_t doc;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_file(&parser, f);
    int rc;
    if (!yaml_parser_load(&parser, &doc)) {
        snprintf(err, err_size, "%s:%lu: YAML syntax error: %s", path,
                 (unsigned long)parser.problem_mark.line + 1,
                 parser.problem ? parser.problem : "unknown");
        rc = -1;
    } else {
        struct reader r = {&doc, path, err, err_size};
        rc = read_root(&r, yaml_document_get_root_node(&doc), out);
        yaml_document_delete(&doc);
        if (rc == 0)
            rc = single_document(&parser, path, err, err_size);
    }
    yaml_parser_delete(&parser);
    fclose(f);
    if (rc)
        lmerge_config_free(out);
    return rc;
}

static void free_params(struct lmerge_param *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(p[i].key);
        free(p[i].value);
    }
    free(p);
}

void lmerge_config_free(struct lmerge_config *c)
{
    free(c->merge_method);
    free(c->base_model);
    free(c->dtype);
    free(c->out_dtype);
    for (size_t i = 0; i < c->n_models; i++) {
        free(c->models[i].path);
        free_params(c->models[i].params, c->models[i].n_params);
    }
    free(c->models);
    free_params(c->params, c->n_params);
    free_params(c->purify, c->n_purify);
    for (size_t i = 0; i < c->n_stats; i++)
        free(c->stats[i]);
    free(c->stats);
    lmerge_tokenizer_spec_free(&c->tokenizer);
    memset(c, 0, sizeof(*c));
}
