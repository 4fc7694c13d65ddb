/* libmerge: merge plans.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LIBMERGE_PLAN_H
#define LIBMERGE_PLAN_H

#include "libmerge/model.h"
#include "libmerge/sink.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lm_plan lm_plan;

/* A plan: one strategy, its parameters, a base model and the fine-tuned
 * models with per-model weights.
 * Errors: LM_ERR_NOT_FOUND (no strategy of that name; the message lists
 * the registered ones). */
LM_API lm_status lm_plan_create(lm_context *ctx, const char *strategy,
                                lm_plan **out);
LM_API void lm_plan_destroy(lm_plan *plan);
LM_API const char *lm_plan_strategy(const lm_plan *plan);

/* Set a parameter declared by the strategy.
 * Errors: LM_ERR_NOT_FOUND (unknown name; the message lists the valid
 * ones), LM_ERR_OUT_OF_RANGE (value outside [min, max], non-integer for an
 * INT, not 0/1 for a BOOL, NaN), LM_ERR_INVALID_ARGUMENT (a CHOICE set
 * with a number). */
LM_API lm_status lm_plan_set_float(lm_plan *plan, const char *name,
                                   double value);
/* Set any parameter from text, as a config file or binding would:
 * numbers for FLOAT/INT, true/false/1/0/yes/no/on/off for BOOL, a word for
 * CHOICE. Errors as lm_plan_set_float plus LM_ERR_INVALID_ARGUMENT for
 * text that does not parse. */
LM_API lm_status lm_plan_set_string(lm_plan *plan, const char *name,
                                    const char *value);

/* Set a FLOAT/INT/BOOL parameter for one tensor and/or one model, as
 * mergekit configs do (a density per model, a `t` gradient over the
 * layers, a weight for the MLP tensors only). `tensor`: an exact tensor
 * name, or NULL for every tensor; `model`: a model index (add order) or
 * LM_ALL_MODELS. The value a strategy reads for (tensor, model) is the
 * first set of: (tensor, model), (tensor, every model), (every tensor,
 * model), the plan-wide value (lm_plan_set_float), the default; later
 * calls for the same slot replace earlier ones. The name "weight" sets
 * model `model`'s weight (for that tensor, or every tensor), replacing
 * the weight it was added with; it needs a model index. Strategies read
 * per-model values with lm_params_get_model_float; per-tensor values
 * through lm_tensor_job.params. A tensor the base model lacks is an
 * error at execution naming it.
 * Only the slots a strategy declares it reads are accepted: a value for
 * one tensor needs LM_PARAM_PER_TENSOR on the parameter, one for one model
 * LM_PARAM_PER_MODEL (sys/strategy.h; `lmerge methods` shows them).
 * Errors: as lm_plan_set_float, plus LM_ERR_INVALID_ARGUMENT ("weight"
 * with LM_ALL_MODELS, a slot the parameter does not have, a model index
 * past the models added so far). */
LM_API lm_status lm_plan_set_float_for(lm_plan *plan, const char *name,
                                       double value, const char *tensor,
                                       size_t model);

/* Tie output tensor `tensor` to `same_as` (e.g. "lm_head.weight" to
 * "model.embed_tokens.weight" when a config sets tie_word_embeddings):
 * both are one parameter, so `tensor` is merged once, as `same_as` — the
 * same inputs, seed, statistics and parameters — and the two outputs are
 * identical in every strategy. Ties are also found without asking: base
 * tensors sharing storage (same data pointer, dtype and shape) where
 * every model shares it too, as a state dict with tied weights does.
 * Checked at execution: both names in the base with one shape, no cycles.
 * Errors: LM_ERR_INVALID_ARGUMENT (a tensor tied to itself), LM_ERR_EXISTS
 * (already tied). */
LM_API lm_status lm_plan_tie(lm_plan *plan, const char *tensor,
                             const char *same_as);

/* Base tensor `tensor` (2-D) is stored transposed, [in, out] — GPT-2's
 * Conv1D layers (c_attn, c_proj, c_fc). Strategies and stages then see it
 * as [out, in] like every other weight (ESM's input statistics, the SVD
 * family's singular spaces, KnOTS and purification depend on it); the
 * result is written back in the stored layout. Checked at execution: a
 * 2-D tensor of the base (error naming it otherwise).
 * Errors: LM_ERR_INVALID_ARGUMENT, LM_ERR_OUT_OF_MEMORY. */
LM_API lm_status lm_plan_set_transposed(lm_plan *plan, const char *tensor);

/* The base model (borrowed: it must outlive lm_plan_execute). Required. */
LM_API lm_status lm_plan_set_base(lm_plan *plan, const lm_model *base);
/* Add a fine-tuned model with its weight (borrowed like the base). Weights
 * must be finite. Models are tasks in the order added. */
LM_API lm_status lm_plan_add_model(lm_plan *plan, const lm_model *model,
                                   double weight);
/* Add a task given by its task vector (deltas, borrowed like a model):
 * e.g. one saved to a file and read back with lm_task_vector_from_model,
 * a LoRA expanded with lm_task_vector_from_lora, or a negated one
 * (lm_task_vector_scale by -1) to make the merge forget a task. Tensors
 * the task vector lacks are zero for it; one the base lacks, or of another
 * shape, is an error at execution naming it. */
LM_API lm_status lm_plan_add_task_vector(lm_plan *plan,
                                         const lm_task_vector *task_vector,
                                         double weight);
LM_API size_t lm_plan_model_count(const lm_plan *plan);

/* Activation statistics for strategies that use them (ESM, purification,
 * NSC): model index t in the stats is the t-th model added. Borrowed; must
 * outlive execution. NULL clears. */
struct lm_stats;
LM_API lm_status lm_plan_set_stats(lm_plan *plan, const struct lm_stats *stats);

/* Merge every tensor of the base into a new model with the base's names,
 * order, shapes and dtypes. Tensors run in parallel on the context's
 * threads; the result is bit-identical for any thread count. Every model
 * must have every base tensor with the same shape and dtype (the error
 * names the model index and tensor).
 * Errors: LM_ERR_STATE (no base or no models), LM_ERR_NOT_FOUND,
 * LM_ERR_SHAPE, LM_ERR_DTYPE, LM_ERR_NONFINITE (a merged value is NaN/Inf
 * while the inputs were finite), strategy errors. On failure *out is
 * untouched. */
LM_API lm_status lm_plan_execute(lm_plan *plan, lm_model **out);

/* Override the output dtype of every merged tensor (default: each base
 * tensor's dtype). Errors: LM_ERR_DTYPE. */
LM_API lm_status lm_plan_set_output_dtype(lm_plan *plan, lm_dtype dtype);

/* What to do with NaN and Inf. ERROR (default): a non-finite value in the
 * base, in any model's task vector (or expanded adapter) or in a merged
 * result fails the execution with LM_ERR_NONFINITE naming the tensor, the
 * model and the element. ALLOW: no checks; non-finite values go through
 * the strategy's arithmetic as IEEE floats do (strategies that need
 * finite input, such as the SVD family, may still fail in LAPACK). */
/* Models whose tensor has another number of rows than the base's: a
 * fine-tune that added tokens to its vocabulary (embedding and output head
 * [V', d] against the base's [V, d]), or a base that did. ERROR (the
 * default): LM_ERR_SHAPE naming the tensor. Otherwise the rows both have
 * are merged and the output keeps the base's shape — rows a model has
 * beyond the base's are not in it — and the rows a model lacks count, for
 * that model, as: BASE the base's row (a zero task vector; mergekit's
 * filling when the base has the token), ZERO a zero row, MEAN the mean of
 * the models that have the row (the base's when none has). Only the first
 * dimension of a 2-D tensor may differ; adapters and task vectors must
 * match the base. */
typedef enum lm_rows_policy {
    LM_ROWS_ERROR = 0,
    LM_ROWS_BASE = 1,
    LM_ROWS_ZERO = 2,
    LM_ROWS_MEAN = 3
} lm_rows_policy;
LM_API lm_status lm_plan_set_rows_policy(lm_plan *plan,
                                         lm_rows_policy policy);

typedef enum lm_nonfinite_policy {
    LM_NONFINITE_ERROR = 0,
    LM_NONFINITE_ALLOW = 1
} lm_nonfinite_policy;
LM_API lm_status lm_plan_set_nonfinite(lm_plan *plan,
                                       lm_nonfinite_policy policy);

/* Progress: called after each merged tensor with cumulative counts, from
 * worker threads but never concurrently (calls are serialised and counts
 * only grow). Return non-zero to cancel: execution stops as soon as the
 * tensors in flight finish and fails with LM_ERR_CANCELLED. */
typedef int (*lm_progress_fn)(size_t tensors_done, size_t tensors_total,
                              uint64_t bytes_done, uint64_t bytes_total,
                              void *user);
LM_API lm_status lm_plan_set_progress(lm_plan *plan, lm_progress_fn fn,
                                      void *user);

/* Execute into a sink (libmerge/sink.h) instead of a new in-memory model. Peak memory is a
 * few tensors per worker thread (inputs are read or mapped one tensor at a
 * time), independent of model size, unless the sink keeps the results. */
LM_API lm_status lm_plan_execute_to(lm_plan *plan, const lm_sink_vtable *sink);

/* Scores a candidate merge: write a number to maximise (e.g. validation
 * accuracy) to *score and return 0, or return non-zero to stop the search
 * (LM_ERR_CALLBACK). `merged` is valid only during the call. */
typedef int (*lm_score_fn)(double value, const lm_model *merged,
                           double *score, void *user);

/* Golden-section search of one FLOAT parameter (e.g. ESM's "alpha", task
 * arithmetic's "lambda") on [lo, hi], maximising the host's score: the
 * plan is executed in memory at each candidate (the first two are the
 * golden points lo + 0.382 (hi - lo) and lo + 0.618 (hi - lo), as in the
 * released ESM code), until the bracket is narrower than `tol` or
 * `max_evals` merges were scored. On success the parameter is left set to
 * the best evaluated value, which is returned with its score (NULLs
 * allowed). Every evaluation is reported to `score`, so the host can keep
 * the curve. Errors: LM_ERR_NOT_FOUND / LM_ERR_INVALID_ARGUMENT (not a
 * FLOAT parameter), LM_ERR_OUT_OF_RANGE (lo >= hi, bounds outside the
 * parameter's range, tol <= 0, max_evals < 2), LM_ERR_CALLBACK, merge
 * errors. With purification on, the purified task vectors of the first
 * evaluation are reused by the others (up to 1 GiB per plan; the results
 * are bit-identical), so `score` must not change the plan's models,
 * statistics or purify options. */
LM_API lm_status lm_plan_search(lm_plan *plan, const char *param, double lo,
                                double hi, double tol, int max_evals,
                                lm_score_fn score, void *user,
                                double *best_value, double *best_score);

/* Options of lm_plan_search_with. */
typedef struct lm_search_options {
    uint32_t struct_size;
    double lo, hi;  /* the first bracket ([0, 2], as the released ESM code) */
    double tol;     /* stop when the bracket is narrower (0.01)            */
    int max_evals;  /* merges scored per bracket (15)                      */
    int max_widen;  /* times the bracket may move when the best point sits */
                    /* at one of its edges; 0 = never, as lm_plan_search   */
                    /* (4)                                                 */
} lm_search_options;

#define LM_SEARCH_OPTIONS_INIT                                              \
    { (uint32_t)sizeof(lm_search_options), 0.0, 2.0, 0.01, 15, 4 }

/* Fills *options with LM_SEARCH_OPTIONS_INIT. */
LM_API void lm_search_options_init(lm_search_options *options);

/* What lm_plan_search_with found. */
typedef struct lm_search_result {
    uint32_t struct_size;   /* set by the caller                          */
    double best_value;      /* the best evaluated value (left set)        */
    double best_score;
    double lo, hi;          /* the last bracket searched                  */
    int evals;              /* merges scored in all                       */
    int widened;            /* times the bracket moved                    */
    int at_edge;            /* 1: the best point is still at an edge of   */
                            /* the last bracket (max_widen or the         */
                            /* parameter's declared range stopped it):    */
                            /* the maximum may lie beyond                 */
} lm_search_result;

/* lm_plan_search that does not let its bracket decide the answer: a
 * golden-section search on [lo, hi] whose final bracket still touches hi
 * (every comparison favoured the upper end) means the maximum may lie
 * beyond hi, so the search runs again on [hi - w/2, hi + w] (w = hi - lo,
 * clipped to the parameter's declared range), and symmetrically at lo;
 * at most max_widen times. Each bracket gets max_evals merges; every one
 * is reported to `score`. `options` NULL means the defaults; `result`
 * may be NULL. Errors as lm_plan_search, and LM_ERR_ABI for a too-small
 * struct_size, LM_ERR_OUT_OF_RANGE for max_widen < 0. */
LM_API lm_status lm_plan_search_with(lm_plan *plan, const char *param,
                                     const lm_search_options *options,
                                     lm_score_fn score, void *user,
                                     lm_search_result *result);

/* Thread-safety: a plan is used by one thread at a time. */

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_PLAN_H */
