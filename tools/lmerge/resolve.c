/* Per-tensor, per-model parameter values of a config (see resolve.h). */
#include "resolve.h"

#include <libmerge/sys/strategy.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const struct lmerge_param *find(const struct lmerge_param *p, size_t n,
                                       const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(p[i].key, name))
            return &p[i];
    return NULL;
}

/* mergekit's ConfigReader.parameter for one tensor: returns 1 with the
 * value (text or number) and the line it came from, 0 when unset. */
static int lookup(const struct lmerge_config *c, const struct lmerge_layout *l,
                  const struct lmerge_out *o, size_t j, const char *name,
                  const char **text, double *num, int *line)
{
    const struct lmerge_slice *s = &l->slices[o->slice];
    const char *tensor = j == LMERGE_ALL ? o->name : o->models[j].in_name;
    const struct lmerge_model_ref *ref =
        j == LMERGE_ALL ? NULL : o->models[j].ref;
    for (size_t k = 0; ref && k < s->n_sources; k++) {
        if (strcmp(s->sources[k].path, ref->path))
            continue;
        const struct lmerge_param *p =
            find(s->sources[k].params, s->sources[k].n_params, name);
        if (p && lmerge_param_eval(p, tensor, o->t, text, num)) {
            *line = p->line;
            return 1;
        }
    }
    const struct lmerge_param *p = find(s->params, s->n_params, name);
    if (p && lmerge_param_eval(p, tensor, o->t, text, num)) {
        *line = p->line;
        return 1;
    }
    p = find(c->params, c->n_params, name);
    if (p && lmerge_param_eval(p, tensor, o->t, text, num)) {
        *line = p->line;
        return 1;
    }
    return 0;
}

/* Every parameter the config names must be one the method reads, at a
 * level it reads it: mergekit silently ignores the others, lmerge says
 * so. */
static int check_names(const struct lmerge_param *p, size_t n, bool per_model,
                       const struct lmerge_method *m, const char *path)
{
    for (size_t i = 0; m->mergekit && i < n; i++) {
        const struct lmerge_mk_param *d = lmerge_method_param(m, p[i].key);
        if (!d) {
            fprintf(stderr, "lmerge run: %s:%d: %s has no parameter '%s' "
                    "(it takes:", path, p[i].line, m->name, p[i].key);
            for (const struct lmerge_mk_param *q = m->params; q->name; q++)
                fprintf(stderr, " %s", q->name);
            fprintf(stderr, "%s)\n", m->params->name ? "" : " none");
            return -1;
        }
        if (per_model && !d->per_model) {
            fprintf(stderr, "lmerge run: %s:%d: '%s' is a merge-wide "
                    "parameter of %s; mergekit does not read it per model "
                    "(put it under the top-level or slice 'parameters')\n",
                    path, p[i].line, p[i].key, m->name);
            return -1;
        }
    }
    return 0;
}

/* The parameter names to resolve: mergekit's list, or for a libmerge
 * strategy `weight` plus every name the config gives. */
struct names {
    const char *name[64];
    bool per_model[64];
    const char *fallback[64];
    bool required[64];
    size_t n;
};

static void add_name(struct names *nm, const char *name, bool per_model)
{
    for (size_t i = 0; i < nm->n; i++)
        if (!strcmp(nm->name[i], name)) {
            nm->per_model[i] = nm->per_model[i] || per_model;
            return;
        }
    if (nm->n < 64) {
        nm->name[nm->n] = name;
        nm->per_model[nm->n] = per_model;
        nm->fallback[nm->n] = NULL;
        nm->required[nm->n++] = false;
    }
}

static void collect(const struct lmerge_config *c,
                    const struct lmerge_layout *l, struct names *nm)
{
    memset(nm, 0, sizeof(*nm));
    const struct lmerge_method *m = l->method;
    if (m->mergekit) {
        for (const struct lmerge_mk_param *p = m->params; p->name; p++) {
            add_name(nm, p->name, p->per_model);
            nm->fallback[nm->n - 1] = p->fallback;
            nm->required[nm->n - 1] = p->required;
        }
        return;
    }
    add_name(nm, "weight", true);
    nm->fallback[0] = "1.0";
    for (size_t s = 0; s < l->n_slices; s++)
        for (size_t k = 0; k < l->slices[s].n_sources; k++)
            for (size_t i = 0; i < l->slices[s].sources[k].n_params; i++)
                add_name(nm, l->slices[s].sources[k].params[i].key, true);
    for (size_t i = 0; i < c->n_params; i++)
        add_name(nm, c->params[i].key, false);
}

static struct lmerge_value *new_value(struct lmerge_resolved *r, size_t n_out)
{
    struct lmerge_value *v = realloc(r->vals, (r->n + 1) * sizeof(*v));
    if (!v)
        return NULL;
    r->vals = v;
    v = &r->vals[r->n];
    memset(v, 0, sizeof(*v));
    v->v = calloc(n_out ? n_out : 1, sizeof(double));
    if (!v->v)
        return NULL;
    r->n++;
    return v;
}

static const char *model_label(const struct lmerge_layout *l, size_t j)
{
    const struct lmerge_model_ref *ref = l->out[0].models[j].ref;
    return ref ? ref->path : "?";
}

/* One parameter for one model slot (or LMERGE_ALL) over every tensor. */
static int resolve_one(const struct lmerge_config *c, const char *path,
                       const struct lmerge_layout *l, const struct names *nm,
                       size_t i, size_t j, struct lmerge_resolved *r)
{
    const struct lmerge_method *m = l->method;
    const char *name = nm->name[i];
    struct lmerge_value *v = NULL;
    const char *first_text = NULL;
    for (size_t t = 0; t < l->n_out; t++) {
        const struct lmerge_out *o = &l->out[t];
        const char *text = NULL;
        double num = 0;
        int line = 0;
        if (!lookup(c, l, o, j, name, &text, &num, &line)) {
            text = nm->fallback[i];
            /* lmerge configs have always let `weight` default to 1; mergekit
             * requires it. A base mergekit adds to `models` itself has no
             * weight to default to. */
            if (!text && nm->required[i] && j != LMERGE_ALL &&
                !strcmp(name, "weight") && !o->models[j].ref->appended)
                text = "1.0";
            if (!text && nm->required[i]) {
                fprintf(stderr, "lmerge run: %s:%d: %s needs parameter '%s'"
                        "%s%s%s for tensor '%s' (mergekit: required; list "
                        "the base under 'models' with its parameters)\n", path,
                        c->merge_method_line, m->name, name,
                        j != LMERGE_ALL ? " for model '" : "",
                        j != LMERGE_ALL ? model_label(l, j) : "",
                        j != LMERGE_ALL ? "'" : "", o->name);
                return -1;
            }
            if (!text) {
                if (v) { /* set for some tensors only: the strategy's
                            default elsewhere cannot be expressed */
                    fprintf(stderr, "lmerge run: %s:%d: '%s' is set for "
                            "some tensors only and has no default\n", path,
                            v->line, name);
                    return -1;
                }
                continue;
            }
        }
        if (!v) {
            if (!(v = new_value(r, l->n_out)))
                return fprintf(stderr, "lmerge run: out of memory\n"), -1;
            v->name = v->mk_name = name;
            v->model = j;
            v->line = line;
            v->uniform = true;
        }
        if (text && lmerge_parse_number(text, &num)) {
            if (m->mergekit && !lmerge_mk_text_param(m, name)) {
                fprintf(stderr, "lmerge run: %s:%d: parameter '%s': '%s' is "
                        "not a number\n", path, line, name, text);
                return -1;
            }
            if (first_text && strcmp(first_text, text)) {
                fprintf(stderr, "lmerge run: %s:%d: '%s' takes one value for "
                        "every tensor\n", path, line, name);
                return -1;
            }
            first_text = v->text = text;
            continue;
        }
        v->v[t] = num;
        if (t && v->v[t] != v->v[0])
            v->uniform = false;
    }
    if (v && v->text && j != LMERGE_ALL) {
        fprintf(stderr, "lmerge run: %s:%d: '%s' = '%s' per model: only "
                "numbers can differ between models\n", path, v->line, name,
                v->text);
        return -1;
    }
    return 0;
}

int lmerge_resolve(const struct lmerge_config *c, const char *path,
                   const struct lmerge_layout *l, struct lmerge_resolved *r)
{
    memset(r, 0, sizeof(*r));
    const struct lmerge_method *m = l->method;
    if (check_names(c->params, c->n_params, false, m, path))
        return -1;
    for (size_t s = 0; s < l->n_slices; s++) {
        if (check_names(l->slices[s].params, l->slices[s].n_params, false, m,
                        path))
            return -1;
        for (size_t k = 0; k < l->slices[s].n_sources; k++)
            if (check_names(l->slices[s].sources[k].params,
                            l->slices[s].sources[k].n_params, true, m, path))
                return -1;
    }
    if (m->fixed)
        snprintf(r->fixed, sizeof(r->fixed), "%s", m->fixed);
    struct names nm;
    collect(c, l, &nm);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < nm.n; i++) {
        if (!nm.per_model[i]) {
            rc = resolve_one(c, path, l, &nm, i, LMERGE_ALL, r);
            continue;
        }
        for (size_t j = 0; rc == 0 && j < l->n_models; j++)
            rc = resolve_one(c, path, l, &nm, i, j, r);
    }
    if (rc)
        lmerge_resolved_free(r);
    return rc;
}

void lmerge_resolved_free(struct lmerge_resolved *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->vals[i].v);
    free(r->vals);
    memset(r, 0, sizeof(*r));
}

double lmerge_resolved_weight(const struct lmerge_resolved *r, size_t j)
{
    for (size_t i = 0; i < r->n; i++)
        if (!strcmp(r->vals[i].name, "weight") && r->vals[i].model == j)
            return r->vals[i].v[0];
    return 1.0;
}

static int set_err(lm_context *ctx, const char *path, const struct lmerge_value *v)
{
    fprintf(stderr, "lmerge run: %s:%d: %s\n", path, v->line,
            lm_context_error(ctx));
    return -1;
}

/* Whether every model's values of v's parameter are the same uniform
 * value (then one plan-wide value says it). */
static bool same_for_all(const struct lmerge_resolved *r,
                         const struct lmerge_value *v, size_t n_models)
{
    size_t seen = 0;
    for (size_t i = 0; i < r->n; i++) {
        const struct lmerge_value *w = &r->vals[i];
        if (strcmp(w->mk_name, v->mk_name) || w->model == LMERGE_ALL)
            continue;
        if (!w->uniform || w->v[0] != v->v[0])
            return false;
        seen++;
    }
    return seen == n_models;
}

static bool strategy_has(lm_context *ctx, lm_plan *plan, const char *name)
{
    const lm_strategy_vtable *vt;
    if (lm_strategy_find(ctx, lm_plan_strategy(plan), &vt) != LM_OK)
        return false;
    for (size_t i = 0; i < vt->n_params; i++)
        if (!strcmp(vt->params[i].name, name))
            return true;
    return false;
}

int lmerge_resolved_apply(lm_context *ctx, lm_plan *plan,
                          const struct lmerge_layout *l,
                          const struct lmerge_resolved *r, const char *path)
{
    char fixed[256], *save = NULL;
    snprintf(fixed, sizeof(fixed), "%s", r->fixed);
    for (char *kv = strtok_r(fixed, ";", &save); kv;
         kv = strtok_r(NULL, ";", &save)) {
        char *eq = strchr(kv, '=');
        *eq = '\0';
        if (lm_plan_set_string(plan, kv, eq + 1)) {
            fprintf(stderr, "lmerge run: %s: %s (libmerge's '%s' cannot "
                    "reproduce mergekit's %s in this build)\n", path,
                    lm_context_error(ctx), lm_plan_strategy(plan),
                    l->method->name);
            return -1;
        }
    }
    char err[256];
    for (size_t i = 0; i < r->n; i++) {
        const struct lmerge_value *v = &r->vals[i];
        if (v->text) {
            if (lm_plan_set_string(plan, v->name, v->text))
                return set_err(ctx, path, v);
            continue;
        }
        bool all = v->model == LMERGE_ALL ||
                   (strcmp(v->name, "weight") && v->uniform &&
                    same_for_all(r, v, l->n_models));
        if (v->model != LMERGE_ALL && all && v->model != 0)
            continue; /* set once, for model 0 */
        bool weight = !strcmp(v->name, "weight");
        if (weight && v->uniform)
            continue; /* the weight the model was added with */
        for (size_t t = 0; t < (v->uniform ? 1 : l->n_out); t++) {
            const char *lib_name, *lib_text;
            double lib_value;
            int tr = lmerge_mk_translate(l->method, v->name, v->v[t],
                                         &lib_name, &lib_text, &lib_value,
                                         err, sizeof(err));
            if (tr < 0) {
                fprintf(stderr, "lmerge run: %s:%d: %s\n", path, v->line, err);
                return -1;
            }
            if (tr > 0)
                break;
            /* `average` (the fallback for linear) without normalize sums
             * task vectors, not models: only `linear` can say that. */
            if (!strcmp(lib_name, "normalize") && lib_value == 0.0 &&
                !strcmp(l->method->name, "linear") &&
                strcmp(lm_plan_strategy(plan), "linear")) {
                fprintf(stderr, "lmerge run: %s:%d: mergekit's linear with "
                        "normalize: false needs libmerge's 'linear' "
                        "strategy, which this build does not have\n", path,
                        v->line);
                return -1;
            }
            /* mergekit's normalize / rescale: false switch a feature off:
             * what a strategy without that feature does anyway. */
            if (!lib_text && lib_value == 0.0 && l->method->mergekit &&
                (!strcmp(lib_name, "normalize") ||
                 !strcmp(lib_name, "rescale")) &&
                !strategy_has(ctx, plan, lib_name))
                break;
            lm_status st;
            if (lib_text) {
                if (!v->uniform || !all) {
                    fprintf(stderr, "lmerge run: %s:%d: mergekit's '%s' must "
                            "have one value for every tensor and model "
                            "here (libmerge's '%s' is one choice)\n", path,
                            v->line, v->name, lib_name);
                    return -1;
                }
                st = lm_plan_set_string(plan, lib_name, lib_text);
            } else if (v->uniform && all) {
                st = lm_plan_set_float(plan, lib_name, lib_value);
            } else {
                st = lm_plan_set_float_for(
                    plan, lib_name, lib_value,
                    v->uniform ? NULL : l->out[t].name,
                    all ? LM_ALL_MODELS : v->model);
            }
            if (st != LM_OK)
                return set_err(ctx, path, v);
        }
    }
    return 0;
}

void lmerge_resolved_print(FILE *f, const struct lmerge_layout *l,
                           const struct lmerge_resolved *r)
{
    if (r->fixed[0])
        fprintf(f, "  fixed: %s\n", r->fixed);
    for (size_t i = 0; i < r->n; i++) {
        const struct lmerge_value *v = &r->vals[i];
        fprintf(f, "  %s", v->name);
        if (v->model != LMERGE_ALL)
            fprintf(f, " [%s]", model_label(l, v->model));
        if (v->text) {
            fprintf(f, ": %s\n", v->text);
        } else if (v->uniform) {
            fprintf(f, ": %.6g%s\n", v->v[0], v->line ? "" : " (default)");
        } else {
            double lo = v->v[0], hi = v->v[0];
            size_t at_lo = 0, at_hi = 0;
            for (size_t t = 1; t < l->n_out; t++) {
                if (v->v[t] < lo)
                    lo = v->v[t], at_lo = t;
                if (v->v[t] > hi)
                    hi = v->v[t], at_hi = t;
            }
            fprintf(f, ": per tensor, %.6g (%s) .. %.6g (%s)\n", lo,
                    l->out[at_lo].name, hi, l->out[at_hi].name);
        }
    }
}
