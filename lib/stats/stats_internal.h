/* Internal layout of lm_stats, shared by accumulation and file I/O. */
#ifndef LM_STATS_INTERNAL_H
#define LM_STATS_INTERNAL_H

#include "core/internal.h"
#include "libmerge/stats.h"

struct lm_stats_entry {
    size_t model;
    char *name;
    size_t d_in;
    uint64_t n_rows;
    double *gram; /* d_in * d_in, kept symmetric */
    pthread_mutex_t lock;
};

struct lm_stats {
    lm_context *ctx;
    pthread_mutex_t lock; /* guards the entry list */
    struct lm_stats_entry **entries;
    size_t count, cap;
    struct lm__name_set keys; /* entries by (model, name) */
};

/* Find or (with create) add the entry for a key; NULL when absent or out
 * of memory (then an error is set). */
struct lm_stats_entry *lm__stats_entry(lm_stats *stats, size_t model,
                                       const char *name, size_t d_in,
                                       bool create);

/* The argument, size and finiteness checks of lm_stats_observe, with its
 * messages on ctx. */
lm_status lm__stats_check_rows(lm_context *ctx, size_t model,
                               const char *name, const float *rows,
                               size_t n_rows, size_t d_in);
/* lm_stats_observe after those checks passed. */
lm_status lm__stats_accumulate(lm_stats *stats, size_t model,
                               const char *name, const float *rows,
                               size_t n_rows, size_t d_in);

#endif
