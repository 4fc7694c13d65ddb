/* User projectors applied to task vectors as a plan stage (core/stage.h):
 * lm_plan_add_projection. Rules are kept in the order added; a tensor's
 * task vector goes through every rule whose pattern and model match. */
#include <regex.h>
#include <string.h>

#include "core/internal.h"
#include "core/stage.h"
#include "libmerge/projector.h"

struct rule {
    regex_t re;
    char *pattern;
    size_t model;
    const lm_projector *projector;
    lm_projection_side side;
    lm_projection_mode mode;
};

struct projections {
    lm_context *ctx;
    struct rule **rules; /* pointers: a compiled regex_t is not moved */
    size_t n, cap;
};

static void free_rule(lm_context *ctx, struct rule *r)
{
    if (!r)
        return;
    if (r->pattern) /* set once the regex compiled */
        regfree(&r->re);
    lm_free(ctx, r->pattern);
    lm_free(ctx, r);
}

static void destroy(void *self)
{
    struct projections *s = self;
    for (size_t i = 0; i < s->n; i++)
        free_rule(s->ctx, s->rules[i]);
    lm_free(s->ctx, s->rules);
    lm_free(s->ctx, s);
}

/* Columns of an m x n matrix are rows of its transpose. */
static void transpose(const float *in, size_t m, size_t n, float *out)
{
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++)
            out[j * m + i] = in[i * n + j];
}

static lm_status apply(lm_context *ctx, const struct rule *r,
                       const struct lm__stage_tensor *t, float *delta)
{
    size_t rows = (size_t)t->shape[0], cols = (size_t)t->shape[1];
    bool by_rows = r->side == LM_PROJECT_ROWS;
    size_t dim = by_rows ? cols : rows, count = by_rows ? rows : cols;
    if (lm_projector_dim(r->projector) != dim)
        return lm_context_set_error(
            ctx, LM_ERR_SHAPE,
            "projection '%s': tensor '%s' [%zu, %zu] has %s of length %zu, "
            "the projector's dimension is %zu", r->pattern, t->name, rows,
            cols, by_rows ? "rows" : "columns", dim,
            lm_projector_dim(r->projector));
    float *work = delta, *scratch = NULL;
    if (!by_rows) {
        scratch = lm_alloc(ctx, t->numel * sizeof(float));
        if (!scratch)
            return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                        "projection: out of memory for '%s'",
                                        t->name);
        transpose(delta, rows, cols, scratch);
        work = scratch;
    }
    lm_status st = r->mode == LM_PROJECTION_KEEP
                       ? lm_projector_project(r->projector, work, count, work)
                       : lm_projector_complement(r->projector, work, count,
                                                 work);
    if (st == LM_OK && scratch)
        transpose(scratch, cols, rows, delta);
    lm_free(ctx, scratch);
    return st;
}

static lm_status transform(void *self, const lm_plan *p,
                           const struct lm__stage_tensor *t)
{
    const struct projections *s = self;
    for (size_t i = 0; i < s->n; i++) {
        const struct rule *r = s->rules[i];
        if (regexec(&r->re, t->name, 0, NULL, 0) != 0)
            continue;
        if (t->ndim != 2)
            return lm_context_set_error(p->ctx, LM_ERR_SHAPE,
                                        "projection '%s': tensor '%s' is "
                                        "%d-D; only 2-D tensors can be "
                                        "projected", r->pattern, t->name,
                                        t->ndim);
        for (size_t m = 0; m < p->n_models; m++)
            if (r->model == LM_ALL_MODELS || r->model == m)
                LM_TRY(apply(p->ctx, r, t, t->deltas[m]));
    }
    return LM_OK;
}

static lm_status check(void *self, const lm_plan *p, bool streaming)
{
    (void)streaming;
    const struct projections *s = self;
    for (size_t i = 0; i < s->n; i++)
        if (s->rules[i]->model != LM_ALL_MODELS &&
            s->rules[i]->model >= p->n_models)
            return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_RANGE,
                                        "projection '%s': model %zu, but the "
                                        "plan has %zu", s->rules[i]->pattern,
                                        s->rules[i]->model, p->n_models);
    return LM_OK;
}

static const struct lm__stage_vtable projection_stage = {
    .name = "projection",
    .order = 10,
    .check = check,
    .transform = transform,
    .destroy = destroy,
};

lm_status lm_plan_add_projection(lm_plan *plan, const char *pattern,
                                 size_t model, const lm_projector *projector,
                                 lm_projection_side side,
                                 lm_projection_mode mode)
{
    if (!plan || !pattern || !projector ||
        (side != LM_PROJECT_ROWS && side != LM_PROJECT_COLUMNS) ||
        (mode != LM_PROJECTION_KEEP && mode != LM_PROJECTION_REMOVE))
        return LM_ERR_INVALID_ARGUMENT;
    lm_context *ctx = plan->ctx;
    struct projections *s = lm__plan_stage(plan, &projection_stage);
    bool fresh = s == NULL;
    if (fresh) {
        s = lm__calloc(ctx, 1, sizeof(*s));
        if (!s)
            return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                        "projection: out of memory");
        s->ctx = ctx;
    }
    struct rule *r = lm__calloc(ctx, 1, sizeof(*r));
    struct rule **room = r ? lm__reserve(ctx, s->rules, &s->cap, s->n,
                                         sizeof(*room), 4)
                           : NULL;
    lm_status st = room ? LM_OK
                        : lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                               "projection: out of memory");
    if (room)
        s->rules = room;
    int rc = st == LM_OK ? regcomp(&r->re, pattern, REG_EXTENDED | REG_NOSUB)
                         : 0;
    if (rc != 0) {
        char why[128];
        regerror(rc, &r->re, why, sizeof(why));
        st = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                  "projection: pattern '%s': %s", pattern,
                                  why);
    }
    if (st == LM_OK && !(r->pattern = lm__strdup(ctx, pattern))) {
        regfree(&r->re);
        st = lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                  "projection: out of memory");
    }
    if (st == LM_OK && fresh)
        st = lm__plan_set_stage(plan, &projection_stage, s);
    if (st != LM_OK) {
        free_rule(ctx, r);
        if (fresh)
            destroy(s);
        return st;
    }
    r->model = model;
    r->projector = projector;
    r->side = side;
    r->mode = mode;
    s->rules[s->n++] = r;
    return LM_OK;
}

lm_status lm_plan_clear_projections(lm_plan *plan)
{
    if (!plan)
        return LM_ERR_INVALID_ARGUMENT;
    return lm__plan_set_stage(plan, &projection_stage, NULL);
}
