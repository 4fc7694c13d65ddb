/* Plan stages: transformations of every tensor's task vectors between
 * loading and the strategy (purification is one, lib/purify). The core
 * knows stages only through this interface; a stage module attaches its
 * state to a plan with lm__plan_set_stage and finds it again with
 * lm__plan_stage. */
#ifndef LM_CORE_STAGE_H
#define LM_CORE_STAGE_H

#include <stdbool.h>

#include "libmerge/plan.h"

/* One tensor as a stage sees it: base values and one task vector per
 * model (f32, numel each, transformed in place), from any worker thread. */
struct lm__stage_tensor {
    const char *name;
    const float *base;
    const int64_t *shape;
    int ndim;
    size_t numel;
    float *const *deltas;
};

struct lm__stage_vtable {
    const char *name;
    /* Stages run in ascending order (ties: attachment order), so that,
     * e.g., user projections come before purification whichever the host
     * set first. */
    int order;
    /* Before an execution runs, and (streaming) before a load-time merger
     * is created: a stage that cannot run that way sets an error. */
    lm_status (*check)(void *self, const lm_plan *p, bool streaming);
    /* Start of an execution: *measure asks for a pass over every tensor
     * (measure) before the first transform. Optional. */
    lm_status (*begin)(void *self, const lm_plan *p, bool *measure);
    lm_status (*measure)(void *self, const lm_plan *p,
                         const struct lm__stage_tensor *t);
    /* After a successful measuring pass. Optional. */
    void (*measured)(void *self);
    /* Optional: a stage may only hold settings that others read and
     * check them (user subspaces, lib/linalg/subspaces.c). */
    lm_status (*transform)(void *self, const lm_plan *p,
                           const struct lm__stage_tensor *t);
    /* Between reuse_begin and reuse_end the plan's inputs and the stage's
     * settings do not change (the evaluations of a search, the two passes
     * of a two-pass strategy), so results may be cached. Nested calls
     * pair up. Optional. */
    lm_status (*reuse_begin)(void *self, const lm_plan *p);
    void (*reuse_end)(void *self);
    void (*destroy)(void *self);
};

/* Attach `self` as the plan's stage of kind `vt` (replacing, and
 * destroying, an earlier one of that kind; NULL removes it). */
lm_status lm__plan_set_stage(lm_plan *p, const struct lm__stage_vtable *vt,
                             void *self);
/* The plan's stage of kind `vt`, or NULL. */
void *lm__plan_stage(const lm_plan *p, const struct lm__stage_vtable *vt);

#endif
