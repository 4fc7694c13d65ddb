/* The output layout of a config, as mergekit's MergePlanner builds it
 * (mergekit/plan.py): `models:` is one slice over every layer with the
 * base appended when it is not listed (normalize_config); a slice's
 * layer at offset i of n gets t = i / (n - 1) (t = 1 when n = 1); the
 * tensors outside the layer stack (embeddings, final norm, LM head) get
 * t = 0 and the first (embeddings) or last slice's sources and
 * parameters. Output layers are numbered from 0 in slice order, so a
 * passthrough of overlapping ranges changes the layer count. */
#include "layout.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const stack_names[] = {"layers", "h", "blocks", "layer",
                                          "block"};

bool lmerge_layer_split(const char *name, size_t *prefix_len, long *index,
                        const char **suffix)
{
    for (const char *p = name; *p; p = strchr(p, '.') ? strchr(p, '.') + 1
                                                      : p + strlen(p)) {
        for (size_t k = 0; k < sizeof(stack_names) / sizeof(*stack_names);
             k++) {
            size_t n = strlen(stack_names[k]);
            if (strncmp(p, stack_names[k], n) || p[n] != '.')
                continue;
            const char *d = p + n + 1, *e = d;
            while (*e >= '0' && *e <= '9')
                e++;
            if (e == d || e - d > 7 || (*e && *e != '.'))
                continue;
            *prefix_len = (size_t)(d - name);
            *index = strtol(d, NULL, 10);
            *suffix = e;
            return true;
        }
    }
    return false;
}

size_t lmerge_inputs_find(const struct lmerge_inputs *in, const char *ref)
{
    for (size_t i = 0; i < in->n; i++)
        if (!strcmp(in->ref[i], ref))
            return i;
    return (size_t)-1;
}

/* Layers of the stack `prefix` in a model: max index + 1. */
static long stack_layers(const lm_model *m, const char *name, size_t plen)
{
    long n = 0;
    for (size_t i = 0; i < lm_model_count(m); i++) {
        const char *o = lm_model_name_at(m, i), *suf;
        size_t pl;
        long idx;
        if (lmerge_layer_split(o, &pl, &idx, &suf) && pl == plen &&
            !strncmp(o, name, plen) && idx + 1 > n)
            n = idx + 1;
    }
    return n;
}

/* The model's one layer stack (slices need exactly one). */
static int one_stack(const lm_model *m, const char **prefix, size_t *plen)
{
    *prefix = NULL;
    for (size_t i = 0; i < lm_model_count(m); i++) {
        const char *o = lm_model_name_at(m, i), *suf;
        size_t pl;
        long idx;
        if (!lmerge_layer_split(o, &pl, &idx, &suf))
            continue;
        if (!*prefix) {
            *prefix = o;
            *plen = pl;
        } else if (pl != *plen || strncmp(o, *prefix, pl)) {
            return -1;
        }
    }
    return *prefix ? 0 : -1;
}

static int add_out(struct lmerge_layout *l, size_t *cap, const char *name,
                   double t, size_t slice)
{
    if (l->n_out == *cap) {
        size_t n = *cap ? *cap * 2 : 64;
        struct lmerge_out *o = realloc(l->out, n * sizeof(*o));
        if (!o)
            return -1;
        l->out = o;
        *cap = n;
    }
    struct lmerge_out *o = &l->out[l->n_out];
    memset(o, 0, sizeof(*o));
    o->name = strdup(name);
    o->t = t;
    o->slice = slice;
    o->models = calloc(l->n_models ? l->n_models : 1, sizeof(*o->models));
    l->n_out++;
    return o->name && o->models ? 0 : -1;
}

struct slots {
    size_t base;        /* source index of the plan base, or -1: c->base */
    size_t *models;     /* source indexes of the plan models */
};

static char *name_at(const char *prefix, size_t plen, long idx,
                     const char *suffix)
{
    size_t n = plen + strlen(suffix) + 24;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%.*s%ld%s", (int)plen, prefix, idx, suffix);
    return s;
}

/* Fill one output tensor's slots; in_names[k] for source k (NULL: the
 * output name). */
static int fill(struct lmerge_layout *l, const struct lmerge_slice *s,
                const struct slots *sl, const struct lmerge_inputs *in,
                size_t base_input, char **in_names, const char *path)
{
    struct lmerge_out *o = &l->out[l->n_out - 1];
    for (size_t j = 0; j <= l->n_models; j++) {
        size_t k = j < l->n_models ? sl->models[j] : sl->base;
        struct lmerge_src *d = j < l->n_models ? &o->models[j] : &o->base;
        if (k == (size_t)-1) { /* libmerge strategies: the base apart */
            d->input = base_input;
            d->ref = NULL;
            d->in_name = strdup(o->name);
        } else {
            d->input = lmerge_inputs_find(in, s->sources[k].path);
            d->ref = &s->sources[k];
            d->in_name = strdup(in_names && in_names[k] ? in_names[k]
                                                         : o->name);
        }
        if (!d->in_name)
            return -1;
        const lm_model *m = in->model[d->input];
        lm_tensor *t;
        if (m && lm_model_find(m, d->in_name, &t) != LM_OK) {
            fprintf(stderr, "lmerge run: %s:%d: '%s' has no tensor '%s' "
                    "(needed for output tensor '%s')\n", path,
                    d->ref ? d->ref->line : 0, in->ref[d->input],
                    d->in_name, o->name);
            return -2;
        }
    }
    return 0;
}

static int slots_for(const struct lmerge_layout *l, const struct lmerge_slice *s,
                     const char *base_ref, struct slots *sl, const char *path)
{
    sl->base = (size_t)-1;
    sl->models = calloc(s->n_sources, sizeof(size_t));
    if (!sl->models)
        return -1;
    for (size_t k = 0; base_ref && k < s->n_sources; k++)
        if (!strcmp(s->sources[k].path, base_ref)) {
            sl->base = k;
            break;
        }
    enum lmerge_base_role role = l->method->role;
    if (role == LMERGE_BASE_REFERENCE && sl->base == (size_t)-1) {
        fprintf(stderr, "lmerge run: %s:%d: %s needs base_model%s%s%s\n",
                path, s->line, l->method->name,
                base_ref ? " '" : "", base_ref ? base_ref : "",
                base_ref ? "' among the sources of this slice" : "");
        return -2;
    }
    if (role == LMERGE_BASE_MEMBER && sl->base == (size_t)-1)
        sl->base = 0;
    size_t n = 0;
    for (size_t k = 0; k < s->n_sources; k++)
        if (role != LMERGE_BASE_REFERENCE || k != sl->base)
            sl->models[n++] = k;
    /* Only the base listed: mergekit returns the base; so does the base
     * merged as its own (zero) task vector. */
    if (n == 0 && s->n_sources)
        sl->models[n++] = sl->base;
    if (n != l->n_models) {
        fprintf(stderr, "lmerge run: %s:%d: this slice merges %zu models, "
                "the first %zu; lmerge needs the same number in every "
                "slice\n", path, s->line, n, l->n_models);
        return -2;
    }
    return 0;
}

static size_t plan_models_of(const struct lmerge_method *m,
                             const struct lmerge_slice *s, const char *base_ref)
{
    size_t n = s->n_sources;
    if (m->role != LMERGE_BASE_REFERENCE || !base_ref)
        return n;
    for (size_t k = 0; k < s->n_sources; k++)
        if (!strcmp(s->sources[k].path, base_ref))
            return n > 1 ? n - 1 : n; /* the base alone: see slots_for */
    return n;
}

static bool is_pre(const char *name)
{
    return strstr(name, "embed") || strstr(name, "wte") || strstr(name, "wpe");
}

static int build_models(struct lmerge_layout *l, const struct lmerge_config *c,
                        const struct lmerge_inputs *in, const struct slots *sl,
                        size_t base_input, const char *path)
{
    const struct lmerge_slice *s = &l->slices[0];
    size_t tmpl = sl->base != (size_t)-1
                      ? lmerge_inputs_find(in, s->sources[sl->base].path)
                      : base_input;
    const lm_model *m = in->model[tmpl];
    if (!m) {
        fprintf(stderr, "lmerge run: %s: the base of the merge must be a "
                "model, not an adapter\n", path);
        return -2;
    }
    (void)c;
    size_t cap = 0;
    for (size_t i = 0; i < lm_model_count(m); i++) {
        const char *name = lm_model_name_at(m, i), *suf;
        size_t pl;
        long idx;
        double t = 0.0;
        if (lmerge_layer_split(name, &pl, &idx, &suf)) {
            long n = stack_layers(m, name, pl);
            t = n > 1 ? (double)idx / (double)(n - 1) : 1.0;
        }
        if (add_out(l, &cap, name, t, 0))
            return -1;
        int rc = fill(l, s, sl, in, base_input, NULL, path);
        if (rc)
            return rc;
    }
    const char *prefix;
    size_t plen;
    l->n_layers_in = l->n_layers_out =
        one_stack(m, &prefix, &plen) ? -1 : stack_layers(m, prefix, plen);
    return 0;
}

/* Non-layer tensors of slice `si` (pre: embeddings, else the rest). */
static int edge_tensors(struct lmerge_layout *l, size_t *cap, size_t si,
                        const struct slots *sl, const struct lmerge_inputs *in,
                        bool pre, const char *path)
{
    const struct lmerge_slice *s = &l->slices[si];
    const lm_model *m = in->model[lmerge_inputs_find(in, s->sources[0].path)];
    if (!m) {
        fprintf(stderr, "lmerge run: %s:%d: '%s' is an adapter; slices need "
                "models\n", path, s->sources[0].line, s->sources[0].path);
        return -2;
    }
    for (size_t i = 0; i < lm_model_count(m); i++) {
        const char *name = lm_model_name_at(m, i), *suf;
        size_t pl;
        long idx;
        if (lmerge_layer_split(name, &pl, &idx, &suf) || is_pre(name) != pre)
            continue;
        if (add_out(l, cap, name, 0.0, si))
            return -1;
        int rc = fill(l, s, &sl[si], in, (size_t)-1, NULL, path);
        if (rc)
            return rc;
    }
    return 0;
}

static int slice_layers(struct lmerge_layout *l, size_t *cap, size_t si,
                        const struct slots *sl, const struct lmerge_inputs *in,
                        long *counter, const char *path)
{
    const struct lmerge_slice *s = &l->slices[si];
    size_t n_src = s->n_sources;
    long len = s->sources[0].layer_range[1] - s->sources[0].layer_range[0];
    const char **prefix = calloc(n_src, sizeof(char *));
    size_t *plen = calloc(n_src, sizeof(size_t));
    char **names = calloc(n_src, sizeof(char *));
    int rc = prefix && plen && names ? 0 : -1;
    for (size_t k = 0; rc == 0 && k < n_src; k++) {
        const struct lmerge_model_ref *r = &s->sources[k];
        const lm_model *m = in->model[lmerge_inputs_find(in, r->path)];
        if (r->layer_range[1] - r->layer_range[0] != len) {
            fprintf(stderr, "lmerge run: %s:%d: every source of a slice "
                    "must hold the same number of layers (%ld here, %ld in "
                    "the first)\n", path, r->line,
                    (long)(r->layer_range[1] - r->layer_range[0]), len);
            rc = -2;
        } else if (!m || one_stack(m, &prefix[k], &plen[k])) {
            fprintf(stderr, "lmerge run: %s:%d: '%s' has %s; slices need "
                    "one stack of numbered layers (model.layers.N...)\n",
                    path, r->line, r->path,
                    m ? "no single layer stack" : "no weights (an adapter)");
            rc = -2;
        } else if (stack_layers(m, prefix[k], plen[k]) < r->layer_range[1]) {
            fprintf(stderr, "lmerge run: %s:%d: layer_range [%lld, %lld] "
                    "but '%s' has %ld layers\n", path, r->line,
                    (long long)r->layer_range[0],
                    (long long)r->layer_range[1], r->path,
                    stack_layers(m, prefix[k], plen[k]));
            rc = -2;
        }
    }
    const lm_model *m0 =
        rc ? NULL : in->model[lmerge_inputs_find(in, s->sources[0].path)];
    for (long i = 0; rc == 0 && i < len; i++) {
        double t = len > 1 ? (double)i / (double)(len - 1) : 1.0;
        long src0 = s->sources[0].layer_range[0] + i;
        for (size_t ti = 0; rc == 0 && ti < lm_model_count(m0); ti++) {
            const char *name = lm_model_name_at(m0, ti), *suf;
            size_t pl;
            long idx;
            if (!lmerge_layer_split(name, &pl, &idx, &suf) || idx != src0 ||
                pl != plen[0] || strncmp(name, prefix[0], pl))
                continue;
            char *out = name_at(prefix[0], plen[0], *counter, suf);
            for (size_t k = 0; out && k < n_src; k++) {
                free(names[k]);
                names[k] = name_at(prefix[k], plen[k],
                                   s->sources[k].layer_range[0] + i, suf);
                if (!names[k])
                    rc = -1;
            }
            if (!out || rc || add_out(l, cap, out, t, si))
                rc = -1;
            if (rc == 0)
                rc = fill(l, s, &sl[si], in, (size_t)-1, names, path);
            free(out);
        }
        (*counter)++;
    }
    for (size_t k = 0; names && k < n_src; k++)
        free(names[k]);
    free(names);
    free((void *)prefix);
    free(plen);
    return rc;
}

static int build_slices(struct lmerge_layout *l, const struct lmerge_inputs *in,
                        const struct slots *sl, const char *base_ref,
                        const char *path)
{
    size_t cap = 0;
    long counter = 0;
    int rc = edge_tensors(l, &cap, 0, sl, in, true, path);
    for (size_t si = 0; rc == 0 && si < l->n_slices; si++)
        rc = slice_layers(l, &cap, si, sl, in, &counter, path);
    if (rc == 0)
        rc = edge_tensors(l, &cap, l->n_slices - 1, sl, in, false, path);
    l->n_layers_out = counter;
    l->n_layers_in = -1;
    size_t bi = base_ref ? lmerge_inputs_find(in, base_ref) : (size_t)-1;
    const lm_model *bm = bi != (size_t)-1 ? in->model[bi] : NULL;
    const char *prefix;
    size_t plen;
    if (bm && !one_stack(bm, &prefix, &plen))
        l->n_layers_in = stack_layers(bm, prefix, plen);
    l->renumbered = true;
    return rc;
}

/* `models:` as one slice, the base appended when not listed (mergekit's
 * normalize_config), except for libmerge's own strategies. */
static int models_slice(struct lmerge_layout *l, const struct lmerge_config *c,
                        const char *base_ref)
{
    l->slices = calloc(1, sizeof(*l->slices));
    if (!l->slices)
        return -1;
    l->own_slices = true;
    l->n_slices = 1;
    struct lmerge_slice *s = &l->slices[0];
    s->line = c->models_line;
    s->sources = calloc(c->n_models + 1, sizeof(*s->sources));
    if (!s->sources)
        return -1;
    bool listed = false;
    for (size_t i = 0; i < c->n_models; i++) {
        s->sources[s->n_sources++] = c->models[i];
        if (base_ref && !strcmp(c->models[i].path, base_ref))
            listed = true;
    }
    if (base_ref && !listed && l->method->role != LMERGE_BASE_LIBMERGE) {
        struct lmerge_model_ref *b = &s->sources[s->n_sources++];
        b->path = (char *)base_ref;
        b->line = c->base_model_line;
        b->appended = true;
    }
    return 0;
}

int lmerge_layout_build(const struct lmerge_config *c, const char *path,
                        const struct lmerge_method *m,
                        const struct lmerge_inputs *in,
                        struct lmerge_layout *l)
{
    memset(l, 0, sizeof(*l));
    l->method = m;
    l->n_layers_in = l->n_layers_out = -1;
    const char *base_ref = c->base_model ? in->ref[0] : NULL;
    if (m->role == LMERGE_BASE_LIBMERGE && c->n_slices) {
        fprintf(stderr, "lmerge run: %s:%d: slices need a mergekit "
                "merge_method (libmerge's '%s' merges whole models)\n", path,
                c->slices_line, m->name);
        return -1;
    }
    if (m->role != LMERGE_BASE_MEMBER && !c->base_model) {
        fprintf(stderr, "lmerge run: %s:%d: %s needs 'base_model'\n", path,
                c->merge_method_line, m->name);
        return -1;
    }
    int rc = 0;
    if (c->n_slices) {
        l->slices = c->slices;
        l->n_slices = c->n_slices;
    } else if (models_slice(l, c, base_ref)) {
        rc = -1;
    }
    struct slots *sl = rc ? NULL : calloc(l->n_slices, sizeof(*sl));
    if (!rc && !sl)
        rc = -1;
    l->n_models = rc ? 0 : plan_models_of(m, &l->slices[0], base_ref);
    for (size_t si = 0; rc == 0 && si < l->n_slices; si++) {
        rc = slots_for(l, &l->slices[si], base_ref, &sl[si], path);
        if (rc == 0 && m->role == LMERGE_BASE_LIBMERGE)
            sl[si].base = (size_t)-1;
    }
    l->base_is_model = m->role == LMERGE_BASE_MEMBER;
    if (rc == 0 && m->max_models && l->n_models > m->max_models) {
        fprintf(stderr, "lmerge run: %s:%d: %s merges %zu model%s besides "
                "the base; this config gives %zu\n", path,
                c->n_slices ? c->slices_line : c->models_line, m->name,
                m->max_models, m->max_models > 1 ? "s" : "", l->n_models);
        rc = -2;
    }
    if (rc == 0 && l->n_models < m->min_models) {
        fprintf(stderr, "lmerge run: %s:%d: %s needs at least %zu model%s "
                "besides the base\n", path,
                c->n_slices ? c->slices_line : c->models_line, m->name,
                m->min_models, m->min_models > 1 ? "s" : "");
        rc = -2;
    }
    if (rc == 0)
        rc = c->n_slices ? build_slices(l, in, sl, base_ref, path)
                         : build_models(l, c, in, sl, 0, path);
    bool lora = c->base_lora != NULL;
    for (size_t i = 0; i < in->n; i++)
        lora = lora || in->lora[i];
    l->direct = rc == 0 && !c->n_slices && !lora;
    for (size_t si = 0; sl && si < l->n_slices; si++)
        free(sl[si].models);
    free(sl);
    if (rc == -1)
        fprintf(stderr, "lmerge run: out of memory planning the merge\n");
    if (rc)
        lmerge_layout_free(l);
    return rc ? -1 : 0;
}

void lmerge_layout_free(struct lmerge_layout *l)
{
    for (size_t i = 0; l->out && i < l->n_out; i++) {
        free(l->out[i].name);
        free(l->out[i].base.in_name);
        for (size_t j = 0; l->out[i].models && j < l->n_models; j++)
            free(l->out[i].models[j].in_name);
        free(l->out[i].models);
    }
    free(l->out);
    if (l->own_slices) {
        for (size_t i = 0; i < l->n_slices; i++)
            free(l->slices[i].sources);
        free(l->slices);
    }
    memset(l, 0, sizeof(*l));
}
