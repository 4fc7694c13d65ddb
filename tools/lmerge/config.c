/* Reading mergekit-style YAML with libyaml's document API, strictly: an
 * unknown key is an error naming its line, so a typo never silently
 * changes a merge. */
#include "config_read.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/regular_file.h"

int lmerge_cfg_fail(struct reader *r, const yaml_node_t *node,
                    const char *fmt, ...)
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

int lmerge_cfg_copy_scalar(struct reader *r, const yaml_node_t *node,
                           const char *key, char **out)
{
    const char *s = scalar(node);
    if (!s)
        return fail(r, node, "'%s' must be a single value", key);
    free(*out);
    *out = strdup(s);
    return *out ? 0 : fail(r, node, "out of memory");
}

int lmerge_cfg_mapping(struct reader *r, const yaml_node_t *map,
                       const char *what)
{
    (void)what;
    for (yaml_node_pair_t *a = map->data.mapping.pairs.start;
         a < map->data.mapping.pairs.top; a++) {
        const char *ka = scalar(node_at(r, a->key));
        for (yaml_node_pair_t *b = map->data.mapping.pairs.start; ka && b < a;
             b++) {
            const char *kb = scalar(node_at(r, b->key));
            if (kb && strcmp(ka, kb) == 0)
                return fail(r, node_at(r, a->key), "key '%s' is given twice",
                            ka);
        }
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
        return c->stats ? lmerge_cfg_copy_scalar(r, v, "stats", &c->stats[0])
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
        yaml_node_t *item = node_at(r, v->data.sequence.items.start[i]);
        c->n_stats = i + 1;
        if (lmerge_cfg_copy_scalar(r, item, "stats", &c->stats[i]))
            return -1;
    }
    return 0;
}

/* A string key: its value and line. */
static int text_key(struct reader *r, const yaml_node_t *v, const char *key,
                    char **out, int *line)
{
    *line = line_of(v);
    return lmerge_cfg_copy_scalar(r, v, key, out);
}

static int read_key(struct reader *r, const char *key, const yaml_node_t *k,
                    const yaml_node_t *v, struct lmerge_config *c)
{
    if (!strcmp(key, "merge_method"))
        return text_key(r, v, key, &c->merge_method, &c->merge_method_line);
    if (!strcmp(key, "base_model")) {
        char *path = NULL;
        c->base_model_line = line_of(v);
        int rc = lmerge_cfg_model_ref(r, v, &path, &c->base_model,
                                      &c->base_lora);
        free(path);
        return rc;
    }
    if (!strcmp(key, "dtype"))
        return text_key(r, v, key, &c->dtype, &c->dtype_line);
    if (!strcmp(key, "out_dtype"))
        return text_key(r, v, key, &c->out_dtype, &c->out_dtype_line);
    if (!strcmp(key, "gguf_type")) { /* lmerge's own key (gguf_out.c) */
        int line;
        return text_key(r, v, key, &c->gguf_type, &line);
    }
    if (!strcmp(key, "models"))
        return lmerge_cfg_read_models(r, v, c);
    if (!strcmp(key, "slices"))
        return lmerge_cfg_read_slices(r, v, c);
    if (!strcmp(key, "parameters"))
        return lmerge_cfg_read_params(r, v, "parameters", &c->params,
                                      &c->n_params);
    if (lmerge_tokenizer_is_key(key)) /* the tokenizer module's keys */
        return lmerge_tokenizer_spec_read(r->doc, (void *)v, key, r->path,
                                          &c->tokenizer, r->err, r->err_size);
    if (!strcmp(key, "stats"))
        return read_stats(r, v, c);
    if (!strcmp(key, "purify")) {
        c->purify_line = line_of(v);
        return lmerge_cfg_read_params(r, v, "purify", &c->purify,
                                      &c->n_purify);
    }
    if (!strcmp(key, "modules"))
        return fail(r, k, "'modules' (per-module merges of multi-module "
                          "models) is a mergekit feature lmerge does not "
                          "support yet");
    return fail(r, k, "unknown key '%s' (expected merge_method, base_model, "
                      "models, slices, parameters, dtype, out_dtype, "
                      "gguf_type, tokenizer_source, tokenizer, "
                      "chat_template, stats, purify)", key);
}

/* `merge_method: nsc` merges with coefficients an NSC optimiser chose:
 * without a table (or explicit lambdas) there is nothing to merge with,
 * so say so before any file is opened. */
static int check_nsc(struct reader *r, const struct lmerge_config *c)
{
    if (strcmp(c->merge_method, "nsc") != 0)
        return 0;
    for (size_t i = 0; i < c->n_params; i++)
        if (!strcmp(c->params[i].key, "coefficients") ||
            !strcmp(c->params[i].key, "lambda"))
            return 0;
    snprintf(r->err, r->err_size,
             "%s:%d: merge_method nsc needs 'parameters: {coefficients: "
             "PATH}', a coefficient table written by the NSC optimiser "
             "(docs/methods/nsc.md)", r->path, c->merge_method_line);
    return -1;
}

static int read_root(struct reader *r, const yaml_node_t *root,
                     struct lmerge_config *c)
{
    if (!root || root->type != YAML_MAPPING_NODE)
        return fail(r, root, "the config must be a mapping (merge_method, "
                             "base_model, models, parameters, dtype)");
    if (lmerge_cfg_mapping(r, root, "the config"))
        return -1;
    for (yaml_node_pair_t *pair = root->data.mapping.pairs.start;
         pair < root->data.mapping.pairs.top; pair++) {
        yaml_node_t *k = node_at(r, pair->key), *v = node_at(r, pair->value);
        const char *key = scalar(k);
        if (!key)
            return fail(r, k, "keys must be plain words");
        if (read_key(r, key, k, v, c))
            return -1;
        /* Blocks are reported at their key, not where their value starts. */
        if (!strcmp(key, "slices"))
            c->slices_line = line_of(k);
        else if (!strcmp(key, "models"))
            c->models_line = line_of(k);
    }
    if (!c->merge_method)
        return fail(r, root, "missing 'merge_method'");
    /* mergekit: exactly one of models, slices (or modules). */
    if (c->n_models && c->n_slices)
        return fail(r, root, "both 'models' (line %d) and 'slices' (line %d) "
                             "are given; mergekit takes exactly one",
                    c->models_line, c->slices_line);
    if (!c->n_models && !c->n_slices)
        return fail(r, root, "missing 'models' or 'slices'");
    return check_nsc(r, c);
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

static void free_refs(struct lmerge_model_ref *m, size_t n)
{
    for (size_t i = 0; m && i < n; i++) {
        free(m[i].path);
        free(m[i].model);
        free(m[i].lora);
        lmerge_params_free(m[i].params, m[i].n_params);
    }
    free(m);
}

void lmerge_config_free(struct lmerge_config *c)
{
    free(c->merge_method);
    free(c->base_model);
    free(c->base_lora);
    free(c->dtype);
    free(c->out_dtype);
    free(c->gguf_type);
    free_refs(c->models, c->n_models);
    for (size_t i = 0; c->slices && i < c->n_slices; i++) {
        free_refs(c->slices[i].sources, c->slices[i].n_sources);
        lmerge_params_free(c->slices[i].params, c->slices[i].n_params);
    }
    free(c->slices);
    lmerge_params_free(c->params, c->n_params);
    lmerge_params_free(c->purify, c->n_purify);
    lmerge_tokenizer_spec_free(&c->tokenizer);
    for (size_t i = 0; i < c->n_stats; i++)
        free(c->stats[i]);
    free(c->stats);
    memset(c, 0, sizeof(*c));
}
