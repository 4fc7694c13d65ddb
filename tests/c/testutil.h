/* Helpers shared by the Check suites. */
#ifndef LM_TESTUTIL_H
#define LM_TESTUTIL_H

#include <check.h>

#include "libmerge.h"
#include "libmerge/sys/strategy.h"

/* A context with n_threads threads and the given seed; aborts the test on
 * failure. */
lm_context *tu_context(int n_threads, uint64_t seed);
/* A tensor filled with deterministic pseudo-random values in [-1, 1)
 * (rounded to dtype), from `seed`. */
lm_tensor *tu_random_tensor(lm_context *ctx, lm_dtype dtype, int ndim,
                            const int64_t *shape, uint64_t seed);
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
/* Run the suite and return the process exit code. */
int tu_run(Suite *suite);

#define ck_assert_status(expr, want)                                        \
    do {                                                                    \
        lm_status tu_s_ = (expr);                                           \
        ck_assert_msg(tu_s_ == (want), "%s returned %d (%s), wanted %d",    \
                      #expr, (int)tu_s_, lm_strerror(tu_s_), (int)(want));  \
    } while (0)
#define ck_assert_ok(expr) ck_assert_status(expr, LM_OK)

#endif
