/* NSC's label-free scale per module (`alpha_rule = output_match`,
 * docs/methods/nsc.md "Label-free scale"). Not installed. */
#ifndef LM_NSC_OUTPUT_MATCH_H
#define LM_NSC_OUTPUT_MATCH_H

#include "core/internal.h"

struct lm_stats;

/* With M = sum_t coef[t] deltas[t] (the module's merged delta before any
 * global scale) and C_t = G_t / n_t task t's mean input second moment
 * (its statistics for this tensor), the factor f >= 0 minimising
 *     sum_t || f M x - deltas[t] x ||^2 averaged over task t's inputs x,
 * i.e. f = max(0, sum_t <deltas[t] C_t, M> / sum_t <M C_t, M>): the
 * merged module's output shift on each task's data made as close as one
 * scale allows to that task's own adapter's. *f = 1 when M is zero on
 * every task's inputs. Needs statistics of every task for the tensor
 * (an error naming the first missing one). */
lm_status lm__nsc_output_match(const lm_tensor_job *job,
                               const struct lm_stats *stats,
                               const double *coef, double *f);

#endif /* LM_NSC_OUTPUT_MATCH_H */
