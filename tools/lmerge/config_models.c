/* `models:` and `slices:` of a config (mergekit/config.py:
 * InputModelDefinition, OutputSliceDefinition, InputSliceDefinition) and
 * model references PATH[+LORA] (mergekit/common.py, ModelReference). */
#include <stdlib.h>
#include <string.h>

#include "config_read.h"

int lmerge_cfg_model_ref(struct reader *r, const yaml_node_t *node,
                         char **path, char **model, char **lora)
{
    if (lmerge_cfg_copy_scalar(r, node, "model", path))
        return -1;
    /* mergekit splits "model+lora" at the '+'; a path with two is not a
     * reference it can read either. */
    const char *plus = strchr(*path, '+');
    if (plus && strchr(plus + 1, '+'))
        return fail(r, node, "model '%s': more than one '+' (a reference "
                             "is MODEL or MODEL+LORA)", *path);
    if (plus && (plus == *path || !plus[1]))
        return fail(r, node, "model '%s': MODEL+LORA needs both parts",
                    *path);
    if (strchr(*path, '@'))
        return fail(r, node, "model '%s': '@revision' names a Hugging Face "
                             "Hub revision; lmerge reads local paths only",
                    *path);
    *model = plus ? strndup(*path, (size_t)(plus - *path)) : strdup(*path);
    *lora = plus ? strdup(plus + 1) : NULL;
    if (!*model || (plus && !*lora))
        return fail(r, node, "out of memory");
    return 0;
}

static int read_range(struct reader *r, const yaml_node_t *v,
                      struct lmerge_model_ref *m)
{
    if (v->type != YAML_SEQUENCE_NODE ||
        v->data.sequence.items.top - v->data.sequence.items.start != 2)
        return fail(r, v, "'layer_range' must be [start, end]");
    for (int i = 0; i < 2; i++) {
        const char *s = scalar(node_at(r, v->data.sequence.items.start[i]));
        char *end;
        long long x = s ? strtoll(s, &end, 10) : -1;
        if (!s || *end || end == s || x < 0 || x > 1000000)
            return fail(r, v, "'layer_range' entries must be layer numbers "
                              ">= 0");
        m->layer_range[i] = x;
    }
    if (m->layer_range[1] <= m->layer_range[0])
        return fail(r, v, "'layer_range' [%lld, %lld] holds no layer "
                          "(the end is exclusive)",
                    (long long)m->layer_range[0], (long long)m->layer_range[1]);
    m->has_range = true;
    return 0;
}

/* A `models:` entry (in_slice false) or a slice source (in_slice true). */
static int read_model(struct reader *r, const yaml_node_t *node,
                      struct lmerge_model_ref *m, bool in_slice)
{
    m->line = line_of(node);
    if (node->type == YAML_SCALAR_NODE && !in_slice) /* "- path" */
        return lmerge_cfg_model_ref(r, node, &m->path, &m->model, &m->lora);
    if (node->type != YAML_MAPPING_NODE)
        return fail(r, node, in_slice
                                 ? "each source of a slice must be a mapping "
                                   "with 'model' and 'layer_range'"
                                 : "each entry of 'models' must be a mapping "
                                   "with 'model' and optional 'parameters'");
    if (lmerge_cfg_mapping(r, node, "a model entry"))
        return -1;
    for (yaml_node_pair_t *pair = node->data.mapping.pairs.start;
         pair < node->data.mapping.pairs.top; pair++) {
        yaml_node_t *k = node_at(r, pair->key), *v = node_at(r, pair->value);
        const char *key = scalar(k);
        if (key && !strcmp(key, "model")) {
            if (lmerge_cfg_model_ref(r, v, &m->path, &m->model, &m->lora))
                return -1;
        } else if (key && !strcmp(key, "parameters")) {
            if (lmerge_cfg_read_params(r, v, "parameters", &m->params,
                                       &m->n_params))
                return -1;
        } else if (key && in_slice && !strcmp(key, "layer_range")) {
            if (read_range(r, v, m))
                return -1;
        } else {
            return fail(r, k, "unknown key '%s' in a %s (expected 'model'%s "
                              "or 'parameters')", key ? key : "?",
                        in_slice ? "slice source" : "model entry",
                        in_slice ? ", 'layer_range'" : "");
        }
    }
    if (!m->path)
        return fail(r, node, "%s without 'model: PATH'",
                    in_slice ? "slice source" : "model entry");
    if (in_slice && !m->has_range)
        return fail(r, node, "slice source '%s' without 'layer_range'",
                    m->path);
    return 0;
}

static size_t seq_len(const yaml_node_t *seq)
{
    return (size_t)(seq->data.sequence.items.top -
                    seq->data.sequence.items.start);
}

static int read_model_list(struct reader *r, const yaml_node_t *seq,
                           const char *what, bool in_slice,
                           struct lmerge_model_ref **out, size_t *n_out)
{
    if (seq->type != YAML_SEQUENCE_NODE)
        return fail(r, seq, "'%s' must be a list", what);
    size_t n = seq_len(seq);
    if (!n)
        return fail(r, seq, "'%s' is an empty list", what);
    *out = calloc(n, sizeof(**out));
    if (!*out)
        return fail(r, seq, "out of memory");
    for (size_t i = 0; i < n; i++) {
        *n_out = i + 1;
        if (read_model(r, node_at(r, seq->data.sequence.items.start[i]),
                       &(*out)[i], in_slice))
            return -1;
    }
    return 0;
}

int lmerge_cfg_read_models(struct reader *r, const yaml_node_t *seq,
                           struct lmerge_config *c)
{
    c->models_line = line_of(seq);
    return read_model_list(r, seq, "models", false, &c->models, &c->n_models);
}

static int read_slice(struct reader *r, const yaml_node_t *node,
                      struct lmerge_slice *s)
{
    s->line = line_of(node);
    if (node->type != YAML_MAPPING_NODE)
        return fail(r, node, "each slice must be a mapping with 'sources'");
    if (lmerge_cfg_mapping(r, node, "a slice"))
        return -1;
    for (yaml_node_pair_t *pair = node->data.mapping.pairs.start;
         pair < node->data.mapping.pairs.top; pair++) {
        yaml_node_t *k = node_at(r, pair->key), *v = node_at(r, pair->value);
        const char *key = scalar(k);
        if (key && !strcmp(key, "sources")) {
            if (read_model_list(r, v, "sources", true, &s->sources,
                                &s->n_sources))
                return -1;
        } else if (key && !strcmp(key, "parameters")) {
            if (lmerge_cfg_read_params(r, v, "parameters", &s->params,
                                       &s->n_params))
                return -1;
        } else if (key && (!strcmp(key, "base_model") ||
                           !strcmp(key, "residual_weight"))) {
            return fail(r, k, "'%s' in a slice is a mergekit feature lmerge "
                              "does not support yet (give base_model at the "
                              "top level)", key);
        } else {
            return fail(r, k, "unknown key '%s' in a slice (expected "
                              "'sources' or 'parameters')", key ? key : "?");
        }
    }
    if (!s->sources)
        return fail(r, node, "slice without 'sources'");
    return 0;
}

int lmerge_cfg_read_slices(struct reader *r, const yaml_node_t *seq,
                           struct lmerge_config *c)
{
    c->slices_line = line_of(seq);
    if (seq->type != YAML_SEQUENCE_NODE)
        return fail(r, seq, "'slices' must be a list");
    size_t n = seq_len(seq);
    if (!n)
        return fail(r, seq, "'slices' is an empty list");
    c->slices = calloc(n, sizeof(*c->slices));
    if (!c->slices)
        return fail(r, seq, "out of memory");
    for (size_t i = 0; i < n; i++) {
        c->n_slices = i + 1;
        if (read_slice(r, node_at(r, seq->data.sequence.items.start[i]),
                       &c->slices[i]))
            return -1;
    }
    return 0;
}
