/* Internal definitions shared by the library's modules. Not installed.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LM_CORE_INTERNAL_H
#define LM_CORE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "libmerge/context.h"
#include "libmerge/model.h"
#include "libmerge/plan.h"
#include "libmerge/tensor.h"
#include "libmerge/sys/strategy.h"
#include "libmerge/lora.h"
#include "core/name_set.h"

#define LM_ERROR_CAPACITY 1024

struct lm_context {
    int n_threads;
    /* Threads merging for this context right now (executor workers,
     * load-time merges, parallel-loop helpers): loops borrow the rest. */
    atomic_int busy_threads;
    uint64_t seed;
    lm_log_fn log;
    void *log_user;
    int log_level;
    lm_allocator allocator;
    bool has_allocator;

    pthread_mutex_t error_lock;
    lm_status error_status;
    char error[LM_ERROR_CAPACITY];
    /* A message longer than `error` holds, allocated to its size (never
     * truncated); the current message only while long_current. Freed at
     * the next failure, not when the error is cleared, so the pointer
     * lm_context_error returned stays valid until the next failure. */
    char *error_long;
    bool long_current;

    /* Registration order; each entry individually allocated so pointers
     * handed out stay valid, with its params table normalised to the
     * current lm_param_desc layout and owned by the registry. */
    lm_strategy_vtable **strategies;
    size_t n_strategies;
    size_t cap_strategies;
};

struct lm_tensor {
    lm_context *ctx;
    lm_dtype dtype;
    int ndim;
    int64_t shape[LM_MAX_DIMS];
    size_t numel;
    void *data;
    bool owns_data;
    /* Lazy tensors: data is NULL and bytes come from the host. */
    lm_tensor_read_fn lazy_read;
    void *lazy_user;
    const char *lazy_name; /* the model entry's name */
};

struct lm_model_entry {
    char *name;
    lm_tensor *tensor;
};

struct lm_model {
    lm_context *ctx;
    struct lm_model_entry *entries; /* insertion order */
    size_t count, cap;
    struct lm__name_set names;      /* entries by name */
    /* An external resource the tensors point into (e.g. a file mapping);
     * released after the tensors when the model is destroyed. */
    void (*release)(void *resource);
    void *resource;
    /* Optional: called after the executor is done with a tensor, so a
     * file-backed model can drop its pages (bounded resident memory). */
    void (*done_with)(void *resource, const lm_tensor *tensor);
    char **meta_keys, **meta_values; /* insertion order */
    size_t n_meta, meta_cap;
    struct lm__name_set meta_names;  /* meta_keys by name */
    /* What the format a model was read from keeps beside its tensors and
     * metadata, for a writer of the same format to carry over (e.g. typed
     * key/values that text metadata cannot hold). Opaque here: `tag` names the owner (lib/io), who
     * alone reads `data`; `destroy` frees it, before `release`, since
     * `data` may point into the resource. */
    const void *attachment_tag;
    void *attachment;
    void (*attachment_destroy)(lm_context *ctx, void *data);
};

struct lm_lora_entry {
    char *target;
    lm_tensor *a, *b;
    double scale;
};

struct lm_lora {
    lm_context *ctx;
    struct lm_lora_entry *entries;
    size_t count, cap;
    struct lm__name_set targets; /* entries by target */
};

struct lm_plan {
    lm_context *ctx;
    bool has_output_dtype;
    lm_dtype output_dtype;
    bool allow_nonfinite;
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
};

struct lm__plan_stage {
    const struct lm__stage_vtable *vt;
    void *self;
    bool measuring; /* asked for a measuring pass in this execution */
};

struct lm_task_vector {
    lm_context *ctx;
    lm_model *deltas; /* f32, owned */
};

/* The passes over every tensor that come before merging any (executor.c):
 * the stages' measuring pass and a two-pass strategy's prepare pass, with
 * the strategy state `state` (from its init), on the context's threads.
 * For load-time mergers; needs the plan's base. */
lm_status lm__first_passes(lm_plan *p, void *state);

/* delta = scale * B A of the adapter's factors for `name` (zero when the
 * adapter does not target it); `m` names the adapter in errors. */
lm_status lm__lora_delta(lm_context *ctx, const lm_lora *l, size_t m,
                         const char *name, const lm_tensor *base,
                         float *delta);

/* A sink collecting results into a new model (memory_sink.c). */
struct lm__memory_sink {
    lm_sink_vtable vtable;
    lm_context *ctx;
    lm_model *model;
};
void lm__memory_sink_init(struct lm__memory_sink *sink, lm_context *ctx);

/* Merge tensor `name` with base values `base` (tensor_merge.c): on
 * success *result points to numel f32 merged values inside *block, which
 * the caller frees with lm_free. `from_plan_base` lets a file-backed plan
 * base drop the tensor's pages afterwards. Other passes return nothing. */
enum lm__pass {
    LM__PASS_MERGE = 0,   /* merge_tensor, result returned              */
    LM__PASS_PREPARE = 1, /* the strategy's prepare_tensor              */
    LM__PASS_MEASURE = 2  /* the stages' measuring pass only            */
};
lm_status lm__merge_tensor(lm_plan *p, void *state, const char *name,
                           const lm_tensor *base, bool from_plan_base,
                           enum lm__pass pass, float **block, float **result);

/* Statistics of (model, name) without recording an error when absent:
 * 0 when found. */
int lm__stats_lookup(const struct lm_stats *stats, size_t model,
                     const char *name, const double **gram, size_t *d_in,
                     uint64_t *n_rows);

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

/* Independent work items inside one merge (parallel.c): fn(arg, i) for
 * every i < n_items, on the calling thread plus whatever of the context's
 * threads are idle. Returns the status of the first failing item by index
 * (later items may not run once one fails). */
typedef lm_status (*lm__item_fn)(void *arg, size_t item);
lm_status lm__parallel_for(lm_context *ctx, size_t n_items, lm__item_fn fn,
                           void *arg);
/* Mark n threads as busy merging (or no longer) for ctx's budget. */
void lm__threads_hold(lm_context *ctx, int n);
void lm__threads_release(lm_context *ctx, int n);

/* Run the plan into a sink (executor.c). */
lm_status lm__execute(lm_plan *plan, const lm_sink_vtable *sink);

/* Attach a resource released (after all tensors) when the model dies. Only
 * one per model; returns LM_ERR_STATE if one is already attached. */
lm_status lm__model_attach_resource(lm_model *model,
                                    void (*release)(void *resource),
                                    void *resource);

/* Attach format data to a model (see struct lm_model): one per model;
 * LM_ERR_STATE if one is attached. `destroy` may be NULL. */
lm_status lm__model_attach(lm_model *model, const void *tag, void *data,
                           void (*destroy)(lm_context *ctx, void *data));
/* The data attached under `tag`, or NULL. */
void *lm__model_attachment(const lm_model *model, const void *tag);

/* The tensor named `name`, or NULL (no error recorded). */
lm_tensor *lm__model_lookup(const lm_model *model, const char *name);

/* Helpers for the rest of the library. */
size_t lm__numel_checked(int ndim, const int64_t *shape, bool *overflow);
/* Convert a tensor's elements to a caller-provided f32 buffer, reading
 * lazy tensors through their callback. */
lm_status lm__read_f32(lm_context *ctx, const lm_tensor *tensor, float *dst);
/* A lazy tensor (no storage; bytes from `read`). */
lm_status lm__tensor_create_lazy(lm_context *ctx, lm_dtype dtype, int ndim,
                                 const int64_t *shape, lm_tensor_read_fn read,
                                 void *user, lm_tensor **out);
/* 64-bit mix (splitmix64 finaliser) and string hash for seeds. */
uint64_t lm__mix64(uint64_t x);
uint64_t lm__hash_string(uint64_t seed, const char *s);
/* malloc-style helpers through the context allocator. */
void *lm__calloc(lm_context *ctx, size_t n, size_t size);
char *lm__strdup(lm_context *ctx, const char *s);
/* Room for one more item in a growable array (`count` items of `size`
 * bytes, capacity *cap): the array itself, or a copy of twice the capacity
 * (`first` when empty) after freeing it. NULL, with the array and *cap
 * unchanged, when out of memory. */
void *lm__reserve(lm_context *ctx, void *items, size_t *cap, size_t count,
                  size_t size, size_t first);
/* Same shape and dtype as the base tensor, or a message naming the tensor
 * prefixed by `what`. */
lm_status lm__check_pair(lm_context *ctx, const char *what, const char *name,
                         const lm_tensor *base, const lm_tensor *other);
/* Parameter values for a plan (params.c). */
lm_status lm__params_create(lm_context *ctx, const lm_strategy_vtable *vt,
                            lm_params **out);
void lm__params_destroy(lm_params *params);
lm_status lm__params_set_float(lm_params *params, const char *name,
                               double value);
lm_status lm__params_set_string(lm_params *params, const char *name,
                                const char *value);
/* Register the built-in strategies (lib/strategies/builtin.c). */
lm_status lm__register_builtin_strategies(lm_context *ctx);

/* Return early on failure. */
#define LM_TRY(expr)                     \
    do {                                 \
        lm_status lm_try_s_ = (expr);    \
        if (lm_try_s_ != LM_OK)          \
            return lm_try_s_;            \
    } while (0)

#endif /* LM_CORE_INTERNAL_H */
