/* Factorisations of W C~ (lib/purify): one task's, for one layer, and the
 * plan's cache of them across the executions of one purify tuning. */
#ifndef LM_PURIFY_FACTORS_H
#define LM_PURIFY_FACTORS_H

#include "core/internal.h"

struct lm__factored {
    size_t k;          /* min(m, n) */
    double eps;        /* the ridge that passed the conditioning test */
    double *u, *s, *vt, *cinv; /* one block, starting at u */
    bool borrowed;     /* the block belongs to the plan's factor cache */
};

/* get fills *f with a borrowed copy of the cached factors of (name, task)
 * and returns true on a hit; they stay valid until the cache ends. put
 * hands f's block to the cache when it fits in the budget (f becomes
 * borrowed) and otherwise leaves f as it was; out of memory is an error
 * (f unchanged). */
bool lm__factor_cache_get(lm_plan *p, const char *name, size_t task,
                          struct lm__factored *f);
lm_status lm__factor_cache_put(lm_plan *p, const char *name, size_t task,
                               struct lm__factored *f, size_t bytes);

#endif
