/* libmerge: NSC, label-free LoRA merging by null-space compression.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 *
 * The merged weight of every LoRA'd module l is
 *     W_l = W0_l + sum_k lambda_{l,k} s_k B_k A_k
 * with one coefficient per (module, task). NSC chooses the lambdas by
 * minimising the mean null-space ratio of each task's own down-projection
 * A_k on the inputs z that reach the module in the *merged* model when it
 * runs on task k's unlabeled data:
 *     omega(z; A) = sqrt(1 - (A z)^T (A A^T)^-1 (A z) / ||z||^2).
 * libmerge owns the merge math and the optimiser; the host owns the
 * network. Two protocols (docs/methods/nsc.md):
 *   gradient: the host runs forward/backward; per batch it asks
 *     lm_nsc_ratio for omega and dL/dZ at target modules, hands the
 *     resulting weight gradients dL/dW to lm_nsc_accumulate, then calls
 *     lm_nsc_step (AdamW);
 *   gradient-free: lm_nsc_spsa calls the host back to run the merged model
 *     on a task's batch; the host reports target-module inputs with
 *     lm_nsc_observe.
 *
 * Experimental tier (LM_EXPERIMENTAL, docs/api.md): outside the ABI
 * promise until the method settles; it may change in any release.
 */
#ifndef LIBMERGE_EXPERIMENTAL_NSC_H
#define LIBMERGE_EXPERIMENTAL_NSC_H

#include <math.h> /* HUGE_VAL in LM_NSC_OPTIONS_INIT */

#include "libmerge/lora.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lm_nsc lm_nsc;

typedef struct lm_nsc_options {
    uint32_t struct_size;
    double init;          /* initial lambda; < 0: 0.4 (released default)  */
    double lr;            /* AdamW learning rate (1e-3 vision, 3e-4 LLM)  */
    double beta1, beta2;  /* AdamW moments (0.9, 0.999)                  */
    double adam_eps;      /* AdamW epsilon (1e-8)                         */
    double weight_decay;  /* decoupled, also decays lambda (0.01)         */
    double ridge;         /* added to A A^T before Cholesky (1e-8)        */
    /* Safeguards (not in the released code, which lets lambdas go
     * anywhere; -HUGE_VAL, HUGE_VAL, HUGE_VAL restore it): after every
     * update each lambda is projected onto [lambda_min, lambda_max] and
     * onto [centre - trust_radius, centre + trust_radius], the centre
     * being its value at creation or at the last lm_nsc_set_lambdas.
     * Pushed hard, the null-space objective barely moves while lambdas go
     * negative and accuracy collapses; lambda >= 0 rules that out. */
    double lambda_min;    /* 0                                            */
    double lambda_max;    /* HUGE_VAL                                     */
    double trust_radius;  /* HUGE_VAL (none)                              */
} lm_nsc_options;

#define LM_NSC_OPTIONS_INIT                                                 \
    { (uint32_t)sizeof(lm_nsc_options), -1.0, 1e-3, 0.9, 0.999, 1e-8,      \
      0.01, 1e-8, 0.0, HUGE_VAL, HUGE_VAL }

/* Fills *options with the defaults (LM_NSC_OPTIONS_INIT). */
LM_EXPERIMENTAL void lm_nsc_options_init(lm_nsc_options *options);

/* An NSC merge of n_tasks adapters (task k = adapters[k]). Modules are the
 * union of the adapters' targets, in first-seen order; a module missing
 * from an adapter has no term for that task. The adapters are copied (f64);
 * they need not outlive the result. Errors: LM_ERR_SHAPE (A/B mismatch or
 * the same target with different widths across adapters, naming it),
 * LM_ERR_LINALG (A A^T singular even with the ridge), LM_ERR_OUT_OF_RANGE,
 * LM_ERR_ABI. */
LM_EXPERIMENTAL lm_status lm_nsc_create(lm_context *ctx, const lm_lora *const *adapters,
                               size_t n_tasks, const lm_nsc_options *options,
                               lm_nsc **out);
LM_EXPERIMENTAL void lm_nsc_destroy(lm_nsc *nsc);

LM_EXPERIMENTAL size_t lm_nsc_task_count(const lm_nsc *nsc);
LM_EXPERIMENTAL size_t lm_nsc_module_count(const lm_nsc *nsc);
/* Module i's target name and shape (d_out, d_in); NULL if out of range. */
LM_EXPERIMENTAL const char *lm_nsc_module_at(const lm_nsc *nsc, size_t i,
                                    int64_t *d_out, int64_t *d_in);
/* Index of a module by target name (LM_ERR_NOT_FOUND). */
LM_EXPERIMENTAL lm_status lm_nsc_module_find(const lm_nsc *nsc, const char *name,
                                    size_t *index);

/* Coefficients of module i: lambdas[k] for k < task count. A task without
 * an adapter for the module reads 0 and ignores writes. Setting moves the
 * trust region's centre there; the safeguards bound the optimisers'
 * updates, not the values set here. */
LM_EXPERIMENTAL lm_status lm_nsc_get_lambdas(const lm_nsc *nsc, size_t module,
                                    double *lambdas);
LM_EXPERIMENTAL lm_status lm_nsc_set_lambdas(lm_nsc *nsc, size_t module,
                                    const double *lambdas);

/* Mean null-space ratio of task k's A at module i over the n_rows rows of
 * z (row-major f32, n_rows x d_in): *mean = (1/n) sum_rows omega. When
 * grad_z is non-NULL it receives d(mean)/dz (n_rows x d_in) times
 * `grad_scale` (the host's d loss / d mean). The ratio uses the unscaled A
 * and is exact for any alpha (the released code multiplies A z by alpha/r
 * first and is exact only for alpha = r). Rows with z = 0 count as
 * omega = 0 with zero gradient; at omega = 0 the gradient is taken as 0.
 * Read-only: thread-safe. */
LM_EXPERIMENTAL lm_status lm_nsc_ratio(const lm_nsc *nsc, size_t task, size_t module,
                              const float *z, size_t n_rows, size_t d_in,
                              double *mean, float *grad_z,
                              double grad_scale);

/* Writes W0 + sum_k lambda_k s_k B_k A_k of module i into `out` (same
 * shape as the module, F32/F16/BF16/F64, e.g. a host buffer wrapped with
 * lm_tensor_wrap); `base` is W0 in any dtype and may be `out` itself only
 * if the caller keeps its own copy of W0. Thread-safe for different
 * modules. */
LM_EXPERIMENTAL lm_status lm_nsc_materialize(const lm_nsc *nsc, size_t module,
                                    const lm_tensor *base, lm_tensor *out);

/* dL/dlambda_k = s_k <G, B_k A_k> for the host's weight gradient
 * G = dL/dW of module i (any dtype), computed factored as
 * s_k <B_k^T G, A_k>; added to the pending gradient (thread-safe) and,
 * when grads is non-NULL, written to grads[k]. */
LM_EXPERIMENTAL lm_status lm_nsc_accumulate(lm_nsc *nsc, size_t module,
                                   const lm_tensor *weight_grad,
                                   double *grads);
/* Freeze (1) or release (0) module i's coefficients: frozen ones are
 * neither perturbed by lm_nsc_spsa nor changed by any update (not even
 * weight decay). For modules whose gradient is exactly zero — after every
 * target module in the network's forward order — SPSA's random
 * perturbations would otherwise move them as pure noise. */
LM_EXPERIMENTAL lm_status lm_nsc_set_frozen(lm_nsc *nsc, size_t module,
                                            int frozen);

/* One AdamW step on every coefficient from the pending gradients, which
 * are then cleared, followed by the projection of the options'
 * safeguards. Not concurrent with other calls on the same nsc. */
LM_EXPERIMENTAL lm_status lm_nsc_step(lm_nsc *nsc);

/* Gradient-free driver. `evaluate` must run the merged model (current
 * coefficients: materialise the modules with lm_nsc_materialize) on one
 * unlabeled batch of `task` and report the inputs of the target modules
 * with lm_nsc_observe; return non-zero to stop (LM_ERR_CALLBACK). */
typedef int (*lm_nsc_eval_fn)(lm_nsc *nsc, size_t task, size_t step,
                              void *user);

/* Inside an evaluation: adds the null-space ratios of `task`'s A at module
 * i for n_rows inputs z to the current objective (mean over every observed
 * row of the task, then over tasks). Thread-safe. */
LM_EXPERIMENTAL lm_status lm_nsc_observe(lm_nsc *nsc, size_t task, size_t module,
                                const float *z, size_t n_rows, size_t d_in);

typedef struct lm_nsc_spsa_options {
    uint32_t struct_size;
    size_t steps;        /* iterations, 2 evaluations of every task each   */
    double perturbation; /* c: lambda +- c * delta, delta in {-1, +1}      */
    double lr;           /* AdamW step on the SPSA gradient estimate       */
    size_t first_step;   /* number of the first step (0): a run continued  */
                         /* in chunks (e.g. to check held-out batches in   */
                         /* between) keeps drawing fresh perturbations     */
} lm_nsc_spsa_options;

/* lr 1e-3, the released gradient driver's: at 1e-2 SPSA overshot (64.0
 * against 71.7 % normalized on the same adapters at 1e-3). */
#define LM_NSC_SPSA_OPTIONS_INIT                                            \
    { (uint32_t)sizeof(lm_nsc_spsa_options), 100, 0.05, 1e-3, 0 }

/* Fills *options with the defaults (LM_NSC_SPSA_OPTIONS_INIT). */
LM_EXPERIMENTAL void lm_nsc_spsa_options_init(lm_nsc_spsa_options *options);

/* SPSA: each step draws delta from the context seed and the step number
 * (first_step, first_step + 1, ...; the callback gets that number),
 * evaluates L(lambda + c delta) and L(lambda - c delta) (every task), and
 * feeds g = (L+ - L-) / (2c) delta to the AdamW update with `lr`. The
 * objective at the start and at the end (one more evaluation with the
 * final coefficients) go to *first / *last (may be NULL); `curve` (steps
 * values, may be NULL) receives (L+ + L-) / 2 per step. */
LM_EXPERIMENTAL lm_status lm_nsc_spsa(lm_nsc *nsc, const lm_nsc_spsa_options *options,
                             lm_nsc_eval_fn evaluate, void *user,
                             double *first, double *last, double *curve);

/* Coefficient tables: the optimised lambdas as a small JSON file that the
 * `nsc` strategy merges with (plan parameter "coefficients", `lmerge run`
 * with `merge_method: nsc`), format in docs/methods/nsc.md:
 *   {"format": "libmerge-nsc-coefficients", "version": 1,
 *    "tasks": [names], "modules": {"<target>": [lambda per task], ...}}
 * Save writes every module (a task without an adapter for it reads 0)
 * atomically: the file appears complete or not at all. `task_names`
 * (n_tasks strings, e.g. the adapter paths) may be NULL: "task0", ...
 * Errors: LM_ERR_NONFINITE, LM_ERR_IO, LM_ERR_OUT_OF_MEMORY. */
LM_EXPERIMENTAL lm_status lm_nsc_save_coefficients(const lm_nsc *nsc,
                                                   const char *path,
                                                   const char *const *task_names);
/* Replaces every lambda with a table's. The table must list exactly this
 * merge's modules and number of tasks; nothing changes on error.
 * Errors (naming the file and key): LM_ERR_IO, LM_ERR_FORMAT,
 * LM_ERR_UNSUPPORTED (version), LM_ERR_NONFINITE, LM_ERR_INVALID_ARGUMENT
 * (task count), LM_ERR_NOT_FOUND (a module missing from the table, or one
 * no adapter targets). */
LM_EXPERIMENTAL lm_status lm_nsc_load_coefficients(lm_nsc *nsc,
                                                   const char *path);

/* NSC inside a plan: a plan created with the "nsc" strategy (tasks added
 * with lm_plan_add_lora) runs the gradient-free optimiser itself, once,
 * before it merges any tensor — at its first lm_plan_execute /
 * lm_plan_execute_to / lm_merger_create — by calling `evaluate` as
 * lm_nsc_spsa does (the host materialises the modules of the lm_nsc it
 * is given, runs its network on a batch of `task` and reports the target
 * modules' inputs with lm_nsc_observe), then merges with the resulting
 * coefficients. Later executions and mergers of the plan reuse them while
 * its adapters stay the same. `options` / `spsa` may be NULL (defaults).
 * Not with the "coefficients" or "lambda" parameters. evaluate NULL
 * removes the callback. Errors: LM_ERR_INVALID_ARGUMENT (another
 * strategy), LM_ERR_ABI; the execution reports the optimiser's errors
 * (LM_ERR_CALLBACK when `evaluate` stops it). */
LM_EXPERIMENTAL lm_status lm_plan_set_nsc_forward(lm_plan *plan,
                                                  lm_nsc_eval_fn evaluate,
                                                  void *user,
                                                  const lm_nsc_options *options,
                                                  const lm_nsc_spsa_options *spsa);
/* The plan's optimised lm_nsc (borrowed, valid until the plan changes or
 * dies), e.g. to save its table; NULL before the first run. */
LM_EXPERIMENTAL const lm_nsc *lm_plan_nsc(const lm_plan *plan);

/* Thread-safety: lm_nsc_ratio, lm_nsc_materialize, lm_nsc_accumulate and
 * lm_nsc_observe may be called from several threads at once;
 * lm_nsc_set_lambdas, lm_nsc_step and lm_nsc_spsa need exclusive use. */

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_EXPERIMENTAL_NSC_H */
