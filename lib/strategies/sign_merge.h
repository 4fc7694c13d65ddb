/* Sparsification and sign-elected disjoint merging shared by ties,
 * dare_ties and knots. */
#ifndef LM_STRATEGIES_SIGN_MERGE_H
#define LM_STRATEGIES_SIGN_MERGE_H

#include "strategies/builtin.h"

enum lm__consensus { LM_CONSENSUS_SUM, LM_CONSENSUS_COUNT };
enum lm__divide { LM_DIVIDE_COUNT, LM_DIVIDE_WEIGHTS, LM_DIVIDE_NONE };

struct lm__sign_merge_opts {
    enum lm__consensus consensus;
    enum lm__divide divide;
    bool weights_in_election;
};

/* Keep the k largest-magnitude entries of x (length n), zeroing the rest;
 * equal magnitudes are kept in index order. scratch: n floats. */
void lm__keep_top_k(float *x, size_t n, size_t k, float *scratch);

/* Entries kept by magnitude trimming to `density` (k = floor(density * n),
 * at least 1). */
size_t lm__density_count(double density, size_t n);

/* DARE: zero each entry with probability 1 - density (mask drawn from a
 * counter-based RNG on (seed, task, index)), dividing survivors by density
 * when rescale. */
void lm__dare_mask(float *x, size_t n, double density, bool rescale,
                   uint64_t seed, size_t task);

/* Elect a sign per entry over tasks and average the agreeing entries.
 * tasks[t][i] are (trimmed) task vectors; out[i] = the disjoint merge:
 * sum of w_t tasks[t][i] over the tasks whose value (weighted when
 * weights_in_election, as mergekit) is non-zero with the elected sign,
 * divided by their count, their weights (a zero sum divides by 1, as
 * mergekit) or nothing (LM_DIVIDE_NONE, mergekit's normalize=false). */
void lm__sign_merge(const float *const *tasks, const double *weights,
                    size_t n_tasks, size_t n, const struct lm__sign_merge_opts *o,
                    float *out);

/* Read consensus/divide/weights_in_election parameters (per tensor). */
lm_status lm__sign_merge_params(const lm_params *p,
                                struct lm__sign_merge_opts *o);

#endif
