/* ESM internals shared by the strategy, its layer merge and the routes
 * that find each task's essential subspace. */
#ifndef LM_STRATEGIES_ESM_H
#define LM_STRATEGIES_ESM_H

#include "libmerge/projector.h"
#include "strategies/builtin.h"

/* How a task's essential subspace is computed (docs/methods/esm.md,
 * "Routes by cost"). */
enum esm_route { ESD_AUTO, ESD_GRAM, ESD_OUTPUT, ESD_RANDOMIZED };

struct esm_opts {
    double norm_power, eig_power;
    size_t rank; /* 0: floor(d_out / T) */
    bool pad_identity;
    bool inter_task, eig_weighting, inter_dim;
    enum esm_route route;
    double budget; /* bytes one task's subspace (or the layer's
                    * concatenation) may take */
    lm_whiten whiten; /* the polar step (linalg/whiten.h) */
};

/* One task's essential subspace, the directions kept (at most cap):
 * p (d_out x cap, row-major, first *kept columns filled) and lambda
 * (*kept, descending, eigenvalues of dW C dW^T over n - 1), and the norm
 * ||A_t||_F of the projection over all d_out rows, as the released code
 * computes it for the pad rule in force. */
struct esm_task_in {
    const double *dw;   /* d_out x d_in */
    const double *gram; /* C = X^T X, d_in x d_in */
    uint64_t n_rows;
    size_t d_out, d_in, cap;
    uint64_t seed;
};
lm_status lm__esm_subspace(lm_context *ctx, const struct esm_opts *o,
                           enum esm_route route, const struct esm_task_in *in,
                           double *p, double *lambda, size_t *kept,
                           double *norm);

/* Bytes the route needs for one task (estimate of its largest working
 * set, LAPACK workspaces included) and whether its LAPACK calls fit
 * lapack_int. rows: max calibration rows over the tasks. */
double lm__esm_route_bytes(enum esm_route route, size_t d_out, size_t d_in,
                           uint64_t rows, size_t cap);
bool lm__esm_route_fits_lapack(enum esm_route route, size_t d_out,
                               size_t d_in, uint64_t rows, size_t cap);
const char *lm__esm_route_name(enum esm_route route);

/* Merge one layer: x holds T weighted task matrices (d_out x d_in), grams
 * the T input second moments X^T X (d_in x d_in) with n_rows rows. user[t]
 * non-NULL: task t's essential subspace is that projector (dimension
 * d_out, checked by the caller; lm_plan_set_subspace) and grams[t] is not
 * read. name is the tensor's, for errors; seed feeds the randomized
 * route. rho: the tasks' relative input precisions
 * (lm__input_precision), read only with whiten=rank_aware. */
lm_status lm__esm_layer(lm_context *ctx, const struct esm_opts *o,
                        const char *name, uint64_t seed, const double *x,
                        const double *const *grams, const uint64_t *n_rows,
                        const lm_projector *const *user, const double *rho,
                        size_t T, size_t d_out, size_t d_in, double *out);

#endif
