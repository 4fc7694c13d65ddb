/* ESM internals shared by the strategy and its layer merge. */
#ifndef LM_STRATEGIES_ESM_H
#define LM_STRATEGIES_ESM_H

#include "strategies/builtin.h"

struct esm_opts {
    double norm_power, eig_power;
    size_t rank; /* 0: floor(d_out / T) */
    bool pad_identity;
    bool inter_task, eig_weighting, inter_dim;
};

/* Merge one layer: x holds T weighted task matrices (d_out x d_in), grams
 * the T input second moments X^T X (d_in x d_in) with n_rows rows. */
lm_status lm__esm_layer(lm_context *ctx, const struct esm_opts *o,
                        const double *x, const double *const *grams,
                        const uint64_t *n_rows, size_t T, size_t d_out,
                        size_t d_in, double *out);

#endif
