/* Plans and their execution: private layout, parameters, stages, the
 * per-tensor merge and the executor. Not installed.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LM_CORE_PLAN_PRIVATE_H
#define LM_CORE_PLAN_PRIVATE_H

#include "core/lora_private.h"
#include "core/model_private.h"
#include "core/params_private.h"
#include "libmerge/plan.h"

struct lm_plan {
    lm_context *ctx;
    bool has_output_dtype;
    lm_dtype output_dtype;
    bool allow_nonfinite;
    lm_rows_policy rows; /* lm_plan_set_rows_policy */
    lm_progress_fn progress;
    void *progress_user;
    const lm_strategy_vtable *vt;
    lm_params *params;
    const lm_model *base;
    const lm_model **models;        /* NULL where the task is an adapter */
    const struct lm_lora **loras;   /* NULL where the task is a model */
    /* Non-NULL where the task is a task vector (deltas, not weights). */
    const struct lm_task_vector **tvs;
    double *weights;
    size_t n_models, cap_models;
    const struct lm_stats *stats;
    /* Transformations of the task vectors before the strategy (stage.h),
     * in the order they run. */
    struct lm__plan_stage *stages;
    size_t n_stages, cap_stages;
    struct lm__tie *ties;
    size_t n_ties, cap_ties;
    /* lm_plan_set_transposed (layout.c) */
    char **transposed;
    size_t n_transposed, cap_transposed;
    struct lm__name_set transposed_index;
};

struct lm__tie {
    char *alias, *source; /* lm_plan_tie(alias, source) */
};

struct lm__plan_stage {
    const struct lm__stage_vtable *vt;
    void *self;
    bool measuring; /* asked for a measuring pass in this execution */
};

/* The plan's stages (stages.c; stage.h declares the interface): check
 * before running (streaming: for a load-time merger), begin an execution
 * (*measure: some stage wants a pass over every tensor first), end that
 * pass, run one tensor through every stage (the measuring pass calls only
 * the stages that asked for it), and bracket executions whose inputs do
 * not change. */
lm_status lm__stages_check(const lm_plan *p, bool streaming);
lm_status lm__stages_begin(lm_plan *p, bool *measure);
void lm__stages_measured(lm_plan *p);
struct lm__stage_tensor;
lm_status lm__stages_run(const lm_plan *p, bool measure_pass,
                         const struct lm__stage_tensor *t);
lm_status lm__stages_reuse_begin(lm_plan *p);
void lm__stages_reuse_end(lm_plan *p);
void lm__stages_destroy(lm_plan *p);

/* Merge tensor `name` with base values `base` (tensor_merge.c): on
 * success *merged holds the result (write it out with lm__merged_write,
 * free it with lm__merged_free). `from_plan_base` lets a file-backed plan
 * base drop the tensor's pages afterwards. Other passes return nothing. */
enum lm__pass {
    LM__PASS_MERGE = 0,   /* merge_tensor, result returned              */
    LM__PASS_PREPARE = 1, /* the strategy's prepare_tensor              */
    LM__PASS_MEASURE = 2  /* the stages' measuring pass only            */
};
struct lm__merged {
    float *block;         /* owned                                          */
    const float *values;  /* merged values; the merged task vector when     */
    double *base64;       /* base64 (owned) is set: an input was f64         */
};
lm_status lm__merge_tensor(lm_plan *p, void *state, const char *name,
                           const lm_tensor *base, bool from_plan_base,
                           enum lm__pass pass, struct lm__merged *merged);
/* The job merge_tensor gets for tensor `name` (tensor_merge.c), without
 * data (base, deltas, out NULL): the parameters' view for the tensor in
 * *view, its per-model weights (*tensor_weights, to lm_free, when they
 * differ from the plan's). */
lm_status lm__tensor_job_init(lm_plan *p, const char *name,
                              const lm_tensor *base, const int64_t *shape,
                              lm_params *view, double **tensor_weights,
                              lm_tensor_job *job);
/* Merge tensor `index` of the plan's base in one fused pass when its
 * strategy declares a linear rule (core/linear_rule.h) and nothing else
 * (stages, task vectors, transposition, row policies, lazy
 * tensors, a non-finite value under the default policy) needs the plain
 * path: the result goes to the sink (through `scratch`, a buffer of
 * *scratch_size bytes the caller keeps across tensors and frees, when the
 * sink has no buffer of its own). *done false: nothing was emitted, merge
 * it the plain way (fused.c). */
struct lm__fused_scratch {
    void *data;
    size_t size;
};
lm_status lm__fused_merge(lm_plan *p, void *state, const char *name,
                          const lm_tensor *base, size_t index,
                          const lm_tensor_desc *out,
                          const lm_sink_vtable *sink,
                          struct lm__fused_scratch *scratch, bool *done);
/* The same for a load-time merger: the result goes to `out` (which may
 * be `base` itself); *done false: merge it the plain way. */
lm_status lm__fused_merge_into(lm_plan *p, void *state, const char *name,
                               const lm_tensor *base, lm_tensor *out,
                               bool *done);
/* The base added back to a merged task vector `out` (n values; base64
 * when merging wide, else the f32 base b), failing on a non-finite result
 * under the default policy. */
lm_status lm__add_base(lm_plan *p, const char *name, float *out,
                       const float *b, const double *base64, size_t n);
/* Tensor `name` merged through its strategy's sum rule (core/sum_rule.h,
 * sum_route.c) when the strategy has one that wants it and every input
 * can be read in place; *taken false (and nothing done) otherwise, the
 * plain path's case. */
lm_status lm__sum_route(lm_plan *p, void *state, const char *name,
                        const lm_tensor *base, bool from_plan_base,
                        struct lm__merged *merged, bool *taken);
/* The n merged values converted once to `dtype` into dst. */
void lm__merged_write(const struct lm__merged *merged, size_t n, void *dst,
                      lm_dtype dtype);
void lm__merged_free(lm_context *ctx, struct lm__merged *merged);

/* The passes over every tensor that come before merging any (executor.c):
 * the stages' measuring pass and a two-pass strategy's prepare pass, with
 * the strategy state `state` (from its init), on the context's threads.
 * For load-time mergers; needs the plan's base. */
lm_status lm__first_passes(lm_plan *p, void *state);
/* How many prepare passes the strategy asks for with state `state` (its
 * init's): prepare_passes, else 1 when it has prepare_tensor, else 0. */
unsigned lm__prepare_passes(const lm_plan *p, void *state);

/* Does model tensor t differ from base tensor b only in its row count, as
 * the plan's rows policy accepts (tensor_merge.c)? */
bool lm__rows_differ(const lm_plan *p, const lm_tensor *b, const lm_tensor *t);

/* Tensors stored [in, out] (layout.c): is `name` one, every one a 2-D
 * base tensor (error naming it otherwise), free the list, and transpose
 * `count` consecutive rows x cols matrices in place. */
bool lm__plan_transposed(const lm_plan *p, const char *name);
lm_status lm__layout_check(const lm_plan *p);
void lm__layout_free(lm_plan *p);
lm_status lm__transpose_each(lm_context *ctx, float *data, size_t count,
                             size_t rows, size_t cols);

/* Tied tensors (ties.c): for each base entry, the index of the entry it
 * is merged as (the root of its ties), or SIZE_MAX; an array of
 * base->count the caller frees. Errors name unknown tensors, differing
 * shapes and cycles. */
lm_status lm__ties_resolve(const lm_plan *p, size_t **src);
/* Without a base (a load-time merger): the name `name` is merged as,
 * following lm_plan_tie to its root; and a tensor sharing storage (same
 * dtype and shape) with `name` in every model and not tied to it by
 * lm_plan_tie, which an execution ties to it when its base shares that
 * storage too, or NULL. */
const char *lm__ties_declared_root(const lm_plan *p, const char *name);
const char *lm__ties_shared_in_models(const lm_plan *p, const char *name);
void lm__ties_free(lm_plan *p);

/* Run the plan into a sink (executor.c). */
lm_status lm__execute(lm_plan *plan, const lm_sink_vtable *sink);

/* A sink collecting results into a new model (memory_sink.c). */
struct lm__memory_sink {
    lm_sink_vtable vtable;
    lm_context *ctx;
    lm_model *model;
};
void lm__memory_sink_init(struct lm__memory_sink *sink, lm_context *ctx);

#endif /* LM_CORE_PLAN_PRIVATE_H */
