/* User subspaces (lm_plan_set_subspace): projectors that replace the
 * subspace ESM or purification would build from statistics, per tensor
 * pattern and task. The rules ride on the plan as a stage with no
 * transform (core/stage.h): the core keeps them and runs their check
 * before every execution without knowing what they are; ESM and
 * purification look them up with lm_plan_subspace_find. */
#include <regex.h>
#include <string.h>

#include "core/internal.h"
#include "core/stage.h"
#include "libmerge/projector.h"

struct rule {
    regex_t re;
    char *pattern;
    lm_subspace_user user;
    size_t model;
    const lm_projector *projector;
};

struct subspaces {
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
    struct subspaces *s = self;
    for (size_t i = 0; i < s->n; i++)
        free_rule(s->ctx, s->rules[i]);
    lm_free(s->ctx, s->rules);
    lm_free(s->ctx, s);
}

static const char *user_name(lm_subspace_user u)
{
    return u == LM_SUBSPACE_ESM ? "esm" : "purify";
}

/* Is a stage of this name attached? (By name: purification's stage
 * belongs to lib/purify, which this module does not include.) */
static bool has_stage(const lm_plan *p, const char *name)
{
    for (size_t i = 0; i < p->n_stages; i++)
        if (strcmp(p->stages[i].vt->name, name) == 0)
            return true;
    return false;
}

/* A rule nothing would read is an error, never silently unused. */
static lm_status check(void *self, const lm_plan *p, bool streaming)
{
    (void)streaming;
    const struct subspaces *s = self;
    for (size_t i = 0; i < s->n; i++) {
        const struct rule *r = s->rules[i];
        if (r->model != LM_ALL_MODELS && r->model >= p->n_models)
            return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_RANGE,
                                        "subspace '%s' (%s): model %zu, but "
                                        "the plan has %zu", r->pattern,
                                        user_name(r->user), r->model,
                                        p->n_models);
        if (r->user == LM_SUBSPACE_ESM && strcmp(p->vt->name, "esm") != 0)
            return lm_context_set_error(p->ctx, LM_ERR_INVALID_ARGUMENT,
                                        "subspace '%s' is for esm, but the "
                                        "plan's strategy is '%s'",
                                        r->pattern, p->vt->name);
        if (r->user == LM_SUBSPACE_PURIFY && !has_stage(p, "purify"))
            return lm_context_set_error(p->ctx, LM_ERR_INVALID_ARGUMENT,
                                        "subspace '%s' is for purification, "
                                        "but the plan does not purify "
                                        "(lm_plan_set_purify)", r->pattern);
    }
    return LM_OK;
}

/* Order 0: checked before the other stages (nothing to transform). */
static const struct lm__stage_vtable subspace_stage = {
    .name = "subspaces",
    .order = 0,
    .check = check,
    .destroy = destroy,
};

static bool valid_user(lm_subspace_user u)
{
    return u == LM_SUBSPACE_ESM || u == LM_SUBSPACE_PURIFY;
}

static lm_status add_rule(lm_plan *plan, struct subspaces *s, bool fresh,
                          lm_subspace_user user, const char *pattern,
                          size_t model, const lm_projector *projector)
{
    lm_context *ctx = plan->ctx;
    struct rule *r = lm__calloc(ctx, 1, sizeof(*r));
    struct rule **room = r ? lm__reserve(ctx, s->rules, &s->cap, s->n,
                                         sizeof(*room), 4)
                           : NULL;
    lm_status st = room ? LM_OK
                        : lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                               "subspace: out of memory");
    if (room)
        s->rules = room;
    int rc = st == LM_OK ? regcomp(&r->re, pattern, REG_EXTENDED | REG_NOSUB)
                         : 0;
    if (rc != 0) {
        char why[128];
        regerror(rc, &r->re, why, sizeof(why));
        st = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                  "subspace: pattern '%s': %s", pattern, why);
    }
    if (st == LM_OK && !(r->pattern = lm__strdup(ctx, pattern))) {
        regfree(&r->re);
        st = lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                  "subspace: out of memory");
    }
    if (st == LM_OK && fresh)
        st = lm__plan_set_stage(plan, &subspace_stage, s);
    if (st != LM_OK) {
        free_rule(ctx, r);
        if (fresh)
            destroy(s);
        return st;
    }
    r->user = user;
    r->model = model;
    r->projector = projector;
    s->rules[s->n++] = r;
    return LM_OK;
}

lm_status lm_plan_set_subspace(lm_plan *plan, lm_subspace_user user,
                               const char *pattern, size_t model,
                               const lm_projector *projector)
{
    if (!plan || !pattern || !valid_user(user))
        return LM_ERR_INVALID_ARGUMENT;
    struct subspaces *s = lm__plan_stage(plan, &subspace_stage);
    for (size_t i = 0; s && i < s->n; i++) {
        struct rule *r = s->rules[i];
        if (r->user != user || r->model != model ||
            strcmp(r->pattern, pattern) != 0)
            continue;
        if (projector) {
            r->projector = projector;
            return LM_OK;
        }
        free_rule(s->ctx, r);
        memmove(&s->rules[i], &s->rules[i + 1],
                (s->n - i - 1) * sizeof(*s->rules));
        if (--s->n == 0) /* no rules: no stage to check */
            return lm__plan_set_stage(plan, &subspace_stage, NULL);
        return LM_OK;
    }
    if (!projector)
        return lm_context_set_error(plan->ctx, LM_ERR_NOT_FOUND,
                                    "subspace: no rule '%s' for %s and model "
                                    "%zu to remove", pattern, user_name(user),
                                    model);
    bool fresh = s == NULL;
    if (fresh) {
        s = lm__calloc(plan->ctx, 1, sizeof(*s));
        if (!s)
            return lm_context_set_error(plan->ctx, LM_ERR_OUT_OF_MEMORY,
                                        "subspace: out of memory");
        s->ctx = plan->ctx;
    }
    return add_rule(plan, s, fresh, user, pattern, model, projector);
}

size_t lm_plan_subspace_count(const lm_plan *plan)
{
    const struct subspaces *s = plan ? lm__plan_stage(plan, &subspace_stage)
                                     : NULL;
    return s ? s->n : 0;
}

lm_status lm_plan_subspace_at(const lm_plan *plan, size_t i,
                              lm_subspace_user *user, const char **pattern,
                              size_t *model, const lm_projector **projector)
{
    if (!plan)
        return LM_ERR_INVALID_ARGUMENT;
    const struct subspaces *s = lm__plan_stage(plan, &subspace_stage);
    if (!s || i >= s->n)
        return lm_context_set_error(plan->ctx, LM_ERR_OUT_OF_RANGE,
                                    "subspace: rule %zu, but the plan has "
                                    "%zu", i, s ? s->n : 0);
    const struct rule *r = s->rules[i];
    if (user)
        *user = r->user;
    if (pattern)
        *pattern = r->pattern;
    if (model)
        *model = r->model;
    if (projector)
        *projector = r->projector;
    return LM_OK;
}

/* Called from worker threads during execution: reads only (regexec on a
 * compiled pattern is thread-safe). No error message on a miss, which is
 * the common case there; the context keeps its last real error. */
lm_status lm_plan_subspace_find(const lm_plan *plan, lm_subspace_user user,
                                const char *tensor, size_t model,
                                const lm_projector **out)
{
    if (!plan || !tensor || !out || !valid_user(user))
        return LM_ERR_INVALID_ARGUMENT;
    const struct subspaces *s = lm__plan_stage(plan, &subspace_stage);
    for (size_t i = 0; s && i < s->n; i++) {
        const struct rule *r = s->rules[i];
        if (r->user == user &&
            (r->model == LM_ALL_MODELS || r->model == model) &&
            regexec(&r->re, tensor, 0, NULL, 0) == 0) {
            *out = r->projector;
            return LM_OK;
        }
    }
    return LM_ERR_NOT_FOUND;
}
