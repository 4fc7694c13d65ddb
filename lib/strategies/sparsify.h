/* mergekit's sparsification family (breadcrumbs, della, and the mergekit
 * options of ties/dare): the per-task sparsifiers of mergekit/sparsify.py,
 * its norm-preserving rescale, and its "generalized task arithmetic"
 * combination step, written from mergekit's documented semantics
 * (docs/methods/mergekit_sparse.md). */
#ifndef LM_STRATEGIES_SPARSIFY_H
#define LM_STRATEGIES_SPARSIFY_H

#include "strategies/sign_merge.h"

/* lm_param_desc.flags of parameters read per tensor, and per tensor and
 * model. */
#define LM__PER_TENSOR LM_PARAM_PER_TENSOR
#define LM__PER_MODEL (LM_PARAM_PER_TENSOR | LM_PARAM_PER_MODEL)

/* The parameters as this tensor sees them (per-tensor values included). */
const lm_params *lm__job_params(const lm_tensor_job *job,
                                const lm_params *plan);
/* Value of FLOAT/INT/BOOL parameter `name` for task t as this tensor sees
 * it (per-model and per-tensor values included). */
lm_status lm__task_param(const lm_tensor_job *job, const lm_params *plan,
                         const char *name, size_t t, double *out);

/* mergekit's rescale (sparsify.py rescaled_masked_tensor, l1): multiply
 * the masked vector by ||orig||_1 / ||masked||_1 unless either norm is
 * below 1e-7. Sums in f64 in core/l1_norm.h's blocked order. */
void lm__rescale_l1(const float *orig, float *masked, size_t n);

/* Model Breadcrumbs (magnitude_outliers): keep the entries ranked
 * [n_top, n_top + target) by magnitude, target = int(density n),
 * n_top = int(gamma n) lowered so that n_top + target <= n. density >= 1
 * keeps everything. scratch: n floats, tmp: n floats. */
void lm__magnitude_outliers(float *x, size_t n, double density, double gamma,
                            float *scratch, float *tmp);

/* DELLA (della_magprune): keep entry i with probability p_i running from
 * density - epsilon (smallest magnitude of its row) to density + epsilon
 * (largest), rows along dimension 1 (a 1-D tensor is one row). Draws
 * u < p_i from the counter-based RNG of DARE on (seed, task, index) with
 * its own stream constant. Returns LM_ERR_OUT_OF_MEMORY or LM_OK. */
lm_status lm__della_mask(lm_context *ctx, float *x, int ndim,
                         const int64_t *shape, size_t n, double density,
                         double epsilon, uint64_t seed, size_t task);
/* The keep probabilities of lm__della_mask (f32, as mergekit computes
 * them) into p (n floats). */
lm_status lm__della_probs(lm_context *ctx, const float *x, int ndim,
                          const int64_t *shape, size_t n, double density,
                          double epsilon, float *p);

/* mergekit's generalized task arithmetic combination of sparsified task
 * vectors rows[t]: with `elect`, the TIES sign election on the weighted
 * values (sum, >= 0 elects +) and the sum of agreeing weighted entries,
 * divided by their weights when `normalize` (a zero divisor counts as 1);
 * without, sum_t w_t rows[t], divided by sum_t w_t when `normalize`
 * (|sum| < 1e-8 counts as 1). Then times lambda. simd: the kernels to
 * run (core/simd.h). */
struct lm__simd;
void lm__gta_combine(const struct lm__simd *simd, const float *const *rows,
                     const double *weights, size_t n_tasks, size_t n,
                     bool elect, bool normalize, double lambda, float *out);

/* A mergekit generalized-task-arithmetic method: sparsify each task
 * vector (per-model parameters), then lm__gta_combine with the tensor's
 * `lambda` and `normalize`. `sparsify` rewrites x (a copy of task t) in
 * place and, when `rescale` and it dropped entries, restores its L1 norm;
 * scratch and tmp hold n floats each. */
typedef lm_status (*lm__sparsify_fn)(const lm_tensor_job *job,
                                     const lm_params *plan, size_t t,
                                     bool rescale, float *x, float *scratch,
                                     float *tmp);
struct lm__gta_state {
    lm_context *ctx;
    const lm_params *params;
    bool elect;
    lm__sparsify_fn sparsify;
};
lm_status lm__gta_init(const lm_strategy_init_info *info, void **state,
                       bool elect, lm__sparsify_fn sparsify);
/* merge_tensor and fini of such a method. Parameters read: lambda,
 * normalize, rescale (BOOL) and whatever `sparsify` reads. */
lm_status lm__gta_merge(void *state, const lm_tensor_job *job, void *user);
void lm__gta_fini(void *state, void *user);

#endif
