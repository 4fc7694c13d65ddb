/* Parameter values as mergekit documents them (mergekit/config.py,
 * ParameterSetting and evaluate_setting): a scalar, a gradient (a list
 * of numbers interpolated over the layer position t) or a list of
 * `{filter, value}` conditionals, the first matching one applying. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config_read.h"

int lmerge_parse_number(const char *text, double *out)
{
    if (!text || !*text)
        return -1;
    if (!strcasecmp(text, "true")) {
        *out = 1.0;
        return 0;
    }
    if (!strcasecmp(text, "false")) {
        *out = 0.0;
        return 0;
    }
    char *end;
    double v = strtod(text, &end);
    if (*end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

/* A list of scalars (a gradient). */
static int read_list(struct reader *r, const yaml_node_t *seq,
                     const char *key, struct lmerge_param *p)
{
    size_t n = (size_t)(seq->data.sequence.items.top -
                        seq->data.sequence.items.start);
    p->list = calloc(n, sizeof(char *));
    if (!p->list)
        return fail(r, seq, "out of memory");
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *it = node_at(r, seq->data.sequence.items.start[i]);
        p->n_list = i + 1;
        if (lmerge_cfg_copy_scalar(r, it, key, &p->list[i]))
            return -1;
    }
    return 0;
}

static int read_setting(struct reader *r, const yaml_node_t *v,
                        const char *key, struct lmerge_param *p);

/* One `{filter: ..., value: ...}` entry. */
static int read_cond(struct reader *r, const yaml_node_t *m, const char *key,
                     struct lmerge_param *c)
{
    if (m->type != YAML_MAPPING_NODE)
        return fail(r, m, "parameter '%s': a list mixing numbers and "
                          "{filter, value} entries", key);
    if (lmerge_cfg_mapping(r, m, "a filter entry"))
        return -1;
    c->line = line_of(m);
    bool has_value = false;
    for (yaml_node_pair_t *pr = m->data.mapping.pairs.start;
         pr < m->data.mapping.pairs.top; pr++) {
        yaml_node_t *k = node_at(r, pr->key), *v = node_at(r, pr->value);
        const char *name = scalar(k);
        if (name && !strcmp(name, "filter")) {
            if (lmerge_cfg_copy_scalar(r, v, "filter", &c->key))
                return -1;
        } else if (name && !strcmp(name, "value")) {
            has_value = true;
            if (read_setting(r, v, key, c))
                return -1;
            if (c->conds)
                return fail(r, v, "parameter '%s': a filter's value is a "
                                  "number or a gradient, not another "
                                  "filter list", key);
        } else {
            return fail(r, k, "unknown key '%s' in a filter entry of "
                              "parameter '%s' (expected filter, value)",
                        name ? name : "?", key);
        }
    }
    if (!has_value)
        return fail(r, m, "parameter '%s': a filter entry without 'value'",
                    key);
    return 0;
}

static int read_setting(struct reader *r, const yaml_node_t *v,
                        const char *key, struct lmerge_param *p)
{
    p->line = line_of(v);
    if (v->type == YAML_SCALAR_NODE)
        return lmerge_cfg_copy_scalar(r, v, key, &p->value);
    if (v->type == YAML_MAPPING_NODE) { /* one conditional on its own */
        p->conds = calloc(1, sizeof(*p->conds));
        if (!p->conds)
            return fail(r, v, "out of memory");
        p->n_conds = 1;
        return read_cond(r, v, key, &p->conds[0]);
    }
    size_t n = (size_t)(v->data.sequence.items.top -
                        v->data.sequence.items.start);
    if (!n)
        return fail(r, v, "parameter '%s' is an empty list", key);
    bool all_scalars = true;
    for (size_t i = 0; i < n; i++)
        if (!scalar(node_at(r, v->data.sequence.items.start[i])))
            all_scalars = false;
    if (all_scalars)
        return read_list(r, v, key, p);
    p->conds = calloc(n, sizeof(*p->conds));
    if (!p->conds)
        return fail(r, v, "out of memory");
    for (size_t i = 0; i < n; i++) {
        p->n_conds = i + 1;
        if (read_cond(r, node_at(r, v->data.sequence.items.start[i]), key,
                      &p->conds[i]))
            return -1;
    }
    return 0;
}

int lmerge_cfg_read_params(struct reader *r, const yaml_node_t *map,
                           const char *where, struct lmerge_param **out,
                           size_t *n_out)
{
    if (map->type != YAML_MAPPING_NODE)
        return fail(r, map, "'%s' must be a mapping of name: value", where);
    if (lmerge_cfg_mapping(r, map, where))
        return -1;
    size_t n = (size_t)(map->data.mapping.pairs.top -
                        map->data.mapping.pairs.start);
    struct lmerge_param *p = calloc(n ? n : 1, sizeof(*p));
    if (!p)
        return fail(r, map, "out of memory");
    *out = p;
    *n_out = 0;
    for (yaml_node_pair_t *pair = map->data.mapping.pairs.start;
         pair < map->data.mapping.pairs.top; pair++) {
        yaml_node_t *k = node_at(r, pair->key), *v = node_at(r, pair->value);
        const char *key = scalar(k);
        if (!key)
            return fail(r, k, "parameter names must be plain words");
        struct lmerge_param *e = &p[(*n_out)++];
        if (!(e->key = strdup(key)))
            return fail(r, k, "out of memory");
        if (read_setting(r, v, key, e))
            return -1;
        e->line = line_of(k); /* a list's own line is its first entry's */
    }
    return 0;
}

/* mergekit interpolates a list of numbers: i0 = int(t (n - 1)),
 * (1 - frac) v[i0] + frac v[i0 + 1]; a list of other scalars picks
 * entry int(t (n - 1)). */
static int eval_list(const struct lmerge_param *p, double t,
                     const char **text, double *number)
{
    double scaled = t * (double)(p->n_list - 1);
    size_t i0 = (size_t)scaled;
    if (i0 > p->n_list - 1)
        i0 = p->n_list - 1;
    size_t i1 = i0 + 1 < p->n_list ? i0 + 1 : p->n_list - 1;
    double frac = scaled - (double)i0, a, b;
    if (lmerge_parse_number(p->list[i0], &a) ||
        lmerge_parse_number(p->list[i1], &b)) {
        *text = p->list[i0];
        return 1;
    }
    *text = NULL;
    *number = (1.0 - frac) * a + frac * b;
    return 1;
}

int lmerge_param_eval(const struct lmerge_param *p, const char *tensor,
                      double t, const char **text, double *number)
{
    if (p->value) {
        *text = p->value;
        return 1;
    }
    if (p->list)
        return eval_list(p, t, text, number);
    for (size_t i = 0; i < p->n_conds; i++) {
        const struct lmerge_param *c = &p->conds[i];
        if (!c->key || !strcmp(c->key, "*") ||
            (tensor && *tensor && strstr(tensor, c->key)))
            return lmerge_param_eval(c, tensor, t, text, number);
    }
    return 0;
}

void lmerge_params_free(struct lmerge_param *p, size_t n)
{
    for (size_t i = 0; p && i < n; i++) {
        free(p[i].key);
        free(p[i].value);
        for (size_t j = 0; j < p[i].n_list; j++)
            free(p[i].list[j]);
        free(p[i].list);
        lmerge_params_free(p[i].conds, p[i].n_conds);
    }
    free(p);
}
