/* Internal layout of lm_stats, shared by accumulation and file I/O. */
#ifndef LM_STATS_INTERNAL_H
#define LM_STATS_INTERNAL_H

#include "core/internal.h"
#include "libmerge/stats.h"
#include "stats/lookup.h"

struct lm_stats_entry {
    size_t model;
    char *name;
    size_t d_in;
    uint64_t n_rows;
    double *gram; /* d_in * d_in, kept symmetric */
    pthread_mutex_t lock;
};

/* The companion statistics a stats object may carry (split.c). */
struct lm_stats_split {
    size_t every;       /* row i of a call is held out when i % every ==
                           every - 1; 0 = the held-out part is not fed */
    lm_stats *heldout;  /* or NULL */
    lm_stats **folds;   /* n_folds of them, or NULL */
    size_t n_folds;
};

struct lm_stats {
    lm_context *ctx;
    pthread_mutex_t lock; /* guards the entry list */
    struct lm_stats_entry **entries;
    size_t count, cap;
    struct lm__name_set keys; /* entries by (model, name) */
    struct lm_stats_split split;
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

/* One stats file, without companions (stats_file.c). */
lm_status lm__stats_save_file(const lm_stats *stats, const char *path);
lm_status lm__stats_load_file(lm_context *ctx, const char *path,
                              lm_stats **out);

/* Companion statistics (split.c). */
bool lm__stats_has_split(const lm_stats *stats);
void lm__stats_split_free(lm_stats *stats);
/* lm_stats_observe for an object with a split; rows not yet checked. */
lm_status lm__stats_observe_split(lm_stats *stats, size_t model,
                                  const char *name, const float *rows,
                                  size_t n_rows, size_t d_in);
/* LM_ERR_INVALID_ARGUMENT unless dst and src carry the same kind of parts. */
lm_status lm__stats_check_same_split(const lm_stats *dst, const lm_stats *src);
lm_status lm__stats_merge_parts(lm_stats *dst, const lm_stats *src);

#endif
