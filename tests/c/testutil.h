/* Helpers shared by the Check suites. */
#ifndef LM_TESTUTIL_H
#define LM_TESTUTIL_H

#include <check.h>
#include <stdatomic.h>

#include "libmerge.h"
#include "libmerge/sys/strategy.h"

/* A context with n_threads threads and the given seed; aborts the test on
 * failure. */
lm_context *tu_context(int n_threads, uint64_t seed);
/* A tensor filled with deterministic pseudo-random values in [-1, 1)
 * (rounded to dtype), from `seed`. */
lm_tensor *tu_random_tensor(lm_context *ctx, lm_dtype dtype, int ndim,
                            const int64_t *shape, uint64_t seed);
/* offset + scale * (pseudo-random in [-1, 1)), rounded to dtype, from
 * its own xorshift stream of `seed`. One Check assertion per tensor, not
 * per element as tu_random_tensor (each costs a write(2)): for suites
 * that fill large tensors. */
lm_tensor *tu_random_tensor_quiet(lm_context *ctx, lm_dtype dtype, int ndim,
                                  const int64_t *shape, uint64_t seed,
                                  double offset, double scale);
/* The same stream, each value snapped to one of `levels` evenly spaced
 * values in [-1, 1) before scaling (0: not snapped), so that magnitudes
 * repeat. */
lm_tensor *tu_random_tensor_levels(lm_context *ctx, lm_dtype dtype, int ndim,
                                   const int64_t *shape, uint64_t seed,
                                   double offset, double scale, int levels);
/* a and b have the same tensors, dtypes and bytes; `what` names the case
 * in the failure message. */
void tu_assert_same_bytes(const lm_model *a, const lm_model *b,
                          const char *what);
/* Add a random tensor under name to model. */
void tu_add_random(lm_context *ctx, lm_model *model, const char *name,
                   lm_dtype dtype, int ndim, const int64_t *shape,
                   uint64_t seed);
/* Value i of a tensor as double. */
double tu_get(const lm_tensor *t, size_t i);
/* Every base tensor applied by `merger` equals (bytes) the same tensor of
 * `want`, an execution's output. */
void tu_assert_merger_matches(lm_context *ctx, lm_merger *merger,
                              const lm_model *base, const lm_model *want);
/* An lm_allocator that fails its fail_at-th allocation (1-based; 0 =
 * never) and counts the blocks still live, for allocation-failure sweeps.
 * Initialise with tu_failing_alloc_init, then pass &f->alloc. */
struct tu_failing_alloc {
    atomic_long count; /* allocations attempted */
    atomic_long live;  /* allocated minus freed */
    long fail_at;
    lm_allocator alloc;
};
void tu_failing_alloc_init(struct tu_failing_alloc *f, long fail_at);
/* Run `run(ctx, arg)` on a fresh 2-thread context once for every
 * allocation it makes, failing that one: each run must leak nothing and
 * end in LM_ERR_OUT_OF_MEMORY, until a run with no failure reached
 * succeeds. Messages name `what`. Returns the number of failed runs. */
long tu_sweep_alloc_failures(const char *what,
                             lm_status (*run)(lm_context *ctx,
                                              const void *arg),
                             const void *arg);
/* An lm_allocator that counts live bytes, their peak and the largest
 * single block (a 16-byte header keeps each block's size), to show what
 * a merge allocates. tu_counting_alloc_mark starts a measurement: peak
 * and largest restart from now. */
struct tu_counting_alloc {
    atomic_llong live, peak, largest;
    lm_allocator alloc;
};
void tu_counting_alloc_init(struct tu_counting_alloc *c);
void tu_counting_alloc_mark(struct tu_counting_alloc *c);
/* Run the suite and return the process exit code. */
int tu_run(Suite *suite);

/* ck_assert_msg without Check's bookkeeping for a check that passes:
 * every passing ck_assert* writes a location record to Check's pipe, one
 * system call each, which in a loop over a tensor's elements cost more
 * than the test itself (millions of writes, far slower still under the
 * sanitizers and valgrind). For checks in loops and in helpers. */
#define tu_check(expr, ...)                                                 \
    do {                                                                    \
        if (!(expr))                                                        \
            ck_abort_msg(__VA_ARGS__);                                      \
    } while (0)

#define ck_assert_status(expr, want)                                        \
    do {                                                                    \
        lm_status tu_s_ = (expr);                                           \
        tu_check(tu_s_ == (want), "%s returned %d (%s), wanted %d", #expr,  \
                 (int)tu_s_, lm_strerror(tu_s_), (int)(want));              \
    } while (0)
#define ck_assert_ok(expr) ck_assert_status(expr, LM_OK)

#endif
