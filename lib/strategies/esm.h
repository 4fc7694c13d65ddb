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
    double budget;    /* bytes the merge may hold at once (all threads) */
    bool budget_auto; /* budget is this machine's memory (memory_budget 0) */
    lm_whiten whiten; /* the polar step (linalg/whiten.h) */
    /* combine=spectral: A_cat's row norms kept as weights between the two
     * polar factors (TSV-M's form) instead of every direction at the mean
     * singular value (released, combine=polar). */
    bool spectral;
    double floor_c;   /* whiten_floor */
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

/* What else is in memory while one ESD layer merges, for its estimate
 * (docs/methods/esm.md, "Memory estimate"): the library's bytes for the
 * tensor (lm_tensor_job.held_bytes), ESM's own per-tensor buffers outside
 * the layer merge, and the threads that may each hold such a tensor or
 * one of its tasks at once. */
struct esm_mem {
    double held, own;
    int threads;
};

/* The layer's route, chosen and checked against memory_budget from
 * shapes alone, before anything large is allocated: the forced one, or
 * the cheaper exact one (gram or output) if the whole estimate fits, else
 * the randomized one if it fits (and the pad allows it), else an error
 * naming the tensor, the route and the bytes needed against the budget.
 * n_rows[t]: task t's calibration rows; user[t] non-NULL: task t's
 * subspace is that projector (no route, its rank in columns). */
lm_status lm__esm_layer_check(lm_context *ctx, const struct esm_opts *o,
                              const struct esm_mem *mem, const char *name,
                              const uint64_t *n_rows,
                              const lm_projector *const *user, size_t T,
                              size_t d_out, size_t d_in,
                              enum esm_route *route);

/* Merge one layer: deltas are the T task matrices (d_out x d_in, f32),
 * each weighted by weights[t] and widened to f64 only while its task is
 * computed; grams the T input second moments X^T X (d_in x d_in) with
 * n_rows rows. user[t] non-NULL: task t's essential subspace is that
 * projector (dimension d_out, checked by the caller;
 * lm_plan_set_subspace) and grams[t] is not read. name is the tensor's,
 * for errors; seed feeds the randomized route. rho: the tasks' relative
 * input precisions (lm__input_precision) times whiten_floor, read only with
 * whiten=rank_aware. The route comes from lm__esm_layer_check with the
 * same arguments. */
lm_status lm__esm_layer(lm_context *ctx, const struct esm_opts *o,
                        const struct esm_mem *mem, const char *name,
                        uint64_t seed, const float *const *deltas,
                        const double *weights, const double *const *grams,
                        const uint64_t *n_rows,
                        const lm_projector *const *user, const double *rho,
                        size_t T, size_t d_out, size_t d_in, double *out);

#endif
