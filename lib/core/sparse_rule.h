/* The rule a sparsify-then-combine strategy (ties, dare_ties, dare_linear)
 * declares so that the executor can merge its tensors in a streaming
 * selection pass plus one fused pass (core/fused_sparse.c) instead of
 * calling merge_tensor on whole-tensor f32 copies. Library-internal, as
 * core/linear_rule.h: built-ins declare it (builtin.c), plugins never do.
 *
 * The rule reproduces what merge_tensor computes from the f32 task
 * vectors d_t (model_t - b, rounded to f32):
 *
 *     row_t = d_t trimmed to its `keep` largest magnitudes (equal
 *             magnitudes kept in index order, as lm__keep_top_k), or
 *             masked by `mask` (DARE's per-index draws) and, with `l1`,
 *             scaled back to d_t's L1 norm (core/l1_norm.h's order and
 *             factor), or d_t itself;
 *     out   = combine(row_0 .. row_{k-1})    element by element
 *
 * Every step but the trim and the L1 scale is element-wise, so the core
 * runs `mask` and `combine` on blocks; the trim's threshold and the L1
 * norms are whole-tensor statistics the core finds first. */
#ifndef LM_CORE_SPARSE_RULE_H
#define LM_CORE_SPARSE_RULE_H

#include <stdbool.h>
#include <stdint.h>

#include "libmerge/sys/strategy.h"

#define LM__SPARSE_MAX_TASKS 64

enum lm__sparse_how { LM__SPARSE_ALL, LM__SPARSE_TOP, LM__SPARSE_MASK };

struct lm__sparse_task {
    enum lm__sparse_how how;
    size_t keep;    /* LM__SPARSE_TOP: entries kept, 1 <= keep < n */
    double density; /* LM__SPARSE_MASK: keep probability */
    bool rescale;   /* LM__SPARSE_MASK: survivors divided by density */
    bool l1;        /* LM__SPARSE_MASK: the masked row times
                     * lm__l1_rescale_factor(|d_t|_1, |masked|_1) */
};

struct lm__sparse_rule;
struct lm__simd;

/* Mask task t's row x[0..len), elements [offset, offset + len) of the
 * tensor. */
typedef void (*lm__sparse_mask_fn)(const struct lm__sparse_rule *r, size_t t,
                                   float *x, size_t len, size_t offset);
/* The merged task vector of len elements from the k rows. */
typedef void (*lm__sparse_combine_fn)(const struct lm__sparse_rule *r,
                                      const float *const *rows,
                                      const double *weights, size_t k,
                                      size_t len, float *out);

struct lm__sparse_rule {
    bool fusable; /* false: an option only the plain path computes */
    struct lm__sparse_task task[LM__SPARSE_MAX_TASKS];
    uint64_t seed;
    lm__sparse_mask_fn mask;
    lm__sparse_combine_fn combine;
    /* The kernels mask and combine run (core/simd.h): set by the fused
     * path once per tensor. */
    const struct lm__simd *simd;
    /* The strategy's own options for mask/combine (the core does not
     * read them). */
    double lambda;
    bool elect, normalize, weights_in_election;
    int consensus, divide;
};

/* The rule for one tensor (job as for lm__linear_rule_fn, without data);
 * called only with n_models <= LM__SPARSE_MAX_TASKS. Errors as
 * merge_tensor's. */
typedef lm_status (*lm__sparse_rule_fn)(void *state, const lm_tensor_job *job,
                                        struct lm__sparse_rule *out);

lm_status lm__strategy_set_sparse_rule(lm_context *ctx, const char *name,
                                       lm__sparse_rule_fn fn);
lm__sparse_rule_fn lm__strategy_sparse_rule(const lm_strategy_vtable *vt);

#endif
