/* The plan's stages (stage.h), run in ascending `order`. */
#include <string.h>

#include "core/plan_private.h"
#include "core/stage.h"

lm_status lm__plan_set_stage(lm_plan *p, const struct lm__stage_vtable *vt,
                             void *self)
{
    for (size_t i = 0; i < p->n_stages; i++) {
        struct lm__plan_stage *s = &p->stages[i];
        if (s->vt != vt)
            continue;
        if (s->self != self)
            vt->destroy(s->self);
        if (self) {
            s->self = self;
        } else {
            memmove(s, s + 1, (p->n_stages - i - 1) * sizeof(*s));
            p->n_stages--;
        }
        return LM_OK;
    }
    if (!self)
        return LM_OK;
    struct lm__plan_stage *room = lm__reserve(
        p->ctx, p->stages, &p->cap_stages, p->n_stages, sizeof(*room), 2);
    if (!room)
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "plan: out of memory adding stage '%s'",
                                    vt->name);
    p->stages = room;
    size_t at = p->n_stages;
    while (at > 0 && p->stages[at - 1].vt->order > vt->order)
        at--;
    memmove(&p->stages[at + 1], &p->stages[at],
            (p->n_stages - at) * sizeof(*p->stages));
    p->stages[at] = (struct lm__plan_stage){vt, self, false};
    p->n_stages++;
    return LM_OK;
}

void *lm__plan_stage(const lm_plan *p, const struct lm__stage_vtable *vt)
{
    for (size_t i = 0; i < p->n_stages; i++)
        if (p->stages[i].vt == vt)
            return p->stages[i].self;
    return NULL;
}

void lm__stages_destroy(lm_plan *p)
{
    for (size_t i = 0; i < p->n_stages; i++)
        p->stages[i].vt->destroy(p->stages[i].self);
    lm_free(p->ctx, p->stages);
    p->stages = NULL;
    p->n_stages = p->cap_stages = 0;
}

lm_status lm__stages_check(const lm_plan *p, bool streaming)
{
    for (size_t i = 0; i < p->n_stages; i++)
        if (p->stages[i].vt->check)
            LM_TRY(p->stages[i].vt->check(p->stages[i].self, p, streaming));
    return LM_OK;
}

lm_status lm__stages_begin(lm_plan *p, bool *measure)
{
    *measure = false;
    for (size_t i = 0; i < p->n_stages; i++) {
        struct lm__plan_stage *s = &p->stages[i];
        s->measuring = false;
        if (s->vt->begin)
            LM_TRY(s->vt->begin(s->self, p, &s->measuring));
        *measure = *measure || s->measuring;
    }
    return LM_OK;
}

void lm__stages_measured(lm_plan *p)
{
    for (size_t i = 0; i < p->n_stages; i++) {
        struct lm__plan_stage *s = &p->stages[i];
        if (s->measuring && s->vt->measured)
            s->vt->measured(s->self);
        s->measuring = false;
    }
}

lm_status lm__stages_run(const lm_plan *p, bool measure_pass,
                         const struct lm__stage_tensor *t)
{
    for (size_t i = 0; i < p->n_stages; i++) {
        const struct lm__plan_stage *s = &p->stages[i];
        if (!measure_pass && s->vt->transform)
            LM_TRY(s->vt->transform(s->self, p, t));
        else if (s->measuring)
            LM_TRY(s->vt->measure(s->self, p, t));
    }
    return LM_OK;
}

lm_status lm__stages_reuse_begin(lm_plan *p)
{
    for (size_t i = 0; i < p->n_stages; i++) {
        struct lm__plan_stage *s = &p->stages[i];
        lm_status st = s->vt->reuse_begin ? s->vt->reuse_begin(s->self, p)
                                          : LM_OK;
        if (st != LM_OK) {
            while (i-- > 0)
                if (p->stages[i].vt->reuse_end)
                    p->stages[i].vt->reuse_end(p->stages[i].self);
            return st;
        }
    }
    return LM_OK;
}

void lm__stages_reuse_end(lm_plan *p)
{
    for (size_t i = p->n_stages; i-- > 0;)
        if (p->stages[i].vt->reuse_end)
            p->stages[i].vt->reuse_end(p->stages[i].self);
}
