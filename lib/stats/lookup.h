/* Reading a statistics entry from other modules (ESM, purification)
 * without recording an error when it is absent. Not installed. */
#ifndef LM_STATS_LOOKUP_H
#define LM_STATS_LOOKUP_H

#include <stddef.h>
#include <stdint.h>

struct lm_stats;

/* Statistics of (model, name) without recording an error when absent:
 * 0 when found. */
int lm__stats_lookup(const struct lm_stats *stats, size_t model,
                     const char *name, const double **gram, size_t *d_in,
                     uint64_t *n_rows);

#endif /* LM_STATS_LOOKUP_H */
