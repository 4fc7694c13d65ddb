/* libmerge plugin API: merge strategies.
 *
 * Stability: this header is the "systems" API. Within one SONAME a vtable
 * built against an older header (smaller struct_size, same abi_version)
 * keeps working; fields are only appended.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LIBMERGE_SYS_STRATEGY_H
#define LIBMERGE_SYS_STRATEGY_H

#include "libmerge/context.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LM_STRATEGY_ABI_VERSION 1

typedef enum lm_param_type {
    LM_PARAM_FLOAT = 0,  /* double within [min, max]                       */
    LM_PARAM_INT = 1,    /* integer within [min, max]                      */
    LM_PARAM_BOOL = 2,   /* 0 or 1; strings true/false/yes/no/on/off/1/0    */
    LM_PARAM_CHOICE = 3, /* one of the '|'-separated words in `choices`    */
    LM_PARAM_STRING = 4  /* free text (e.g. a name pattern); default ""    */
} lm_param_type;

/* lm_param_desc.flags: where a strategy reads the parameter, and so which
 * lm_plan_set_float_for values it honours (others are refused rather than
 * silently ignored). */
#define LM_PARAM_PER_TENSOR 1u /* read from lm_tensor_job.params          */
#define LM_PARAM_PER_MODEL 2u  /* read with lm_params_get_model_float     */

/* Describes one parameter of a strategy. Tables of these are read by the
 * library up to struct_size. */
typedef struct lm_param_desc {
    uint32_t struct_size;
    const char *name;
    lm_param_type type;
    double default_value;       /* FLOAT/INT/BOOL default                   */
    double min_value;           /* inclusive; use -HUGE_VAL for none        */
    double max_value;           /* inclusive; use HUGE_VAL for none         */
    const char *choices;        /* CHOICE: "a|b|c"; default is choices' 1st */
    const char *help;           /* one line for `lmerge methods`/docs       */
    uint32_t flags;             /* LM_PARAM_PER_TENSOR | LM_PARAM_PER_MODEL */
                                /* (0.2; 0 in older tables)                 */
} lm_param_desc;

/* Parameter values for one plan, read by strategies. */
typedef struct lm_params lm_params;
/* Value of a parameter declared by the strategy (its default when the
 * user did not set it). Errors: LM_ERR_NOT_FOUND for an undeclared name,
 * LM_ERR_INVALID_ARGUMENT for the wrong type. */
LM_API lm_status lm_params_get_float(const lm_params *params, const char *name,
                                     double *out);
LM_API lm_status lm_params_get_int(const lm_params *params, const char *name,
                                   int64_t *out);
LM_API lm_status lm_params_get_bool(const lm_params *params, const char *name,
                                    int *out);
/* CHOICE value; the string lives as long as the plan. */
LM_API lm_status lm_params_get_choice(const lm_params *params,
                                      const char *name, const char **out);
/* STRING value ("" unless set); lives as long as the plan. */
LM_API lm_status lm_params_get_string(const lm_params *params,
                                      const char *name, const char **out);
/* 1 when the user set the parameter explicitly (plan-wide, or for this
 * tensor or any model through lm_plan_set_float_for), else 0. */
LM_API int lm_params_is_set(const lm_params *params, const char *name);
/* The value of a FLOAT/INT/BOOL parameter for model `model` (its index
 * in the plan): its per-model value (lm_plan_set_float_for) for the
 * tensor `params` is a view of (lm_tensor_job.params), else for every
 * tensor, else the value lm_params_get_float returns. LM_ALL_MODELS
 * gives that last value. Errors as lm_params_get_float. */
LM_API lm_status lm_params_get_model_float(const lm_params *params,
                                           const char *name, size_t model,
                                           double *out);

/* Everything a strategy's init receives. */
typedef struct lm_strategy_init_info {
    uint32_t struct_size;
    lm_context *ctx;
    const lm_params *params;
    size_t n_models;          /* fine-tuned models (tasks) in the plan      */
    const double *weights;    /* n_models per-model weights                 */
    const struct lm_stats *stats; /* lm_plan_set_stats, or NULL             */
} lm_strategy_init_info;

/* One tensor to merge. All arrays are f32, contiguous, row-major, with
 * `numel` elements; `out` is the merged *task vector* (the library adds the
 * base and converts to the output dtype). `out` is zero-filled on entry. */
typedef struct lm_tensor_job {
    uint32_t struct_size;
    lm_context *ctx;
    const char *name;
    int ndim;
    const int64_t *shape;
    size_t numel;
    const float *base;              /* base model values                    */
    size_t n_models;
    const float *const *deltas;     /* n_models task vectors (model - base) */
    const double *weights;          /* n_models per-model weights           */
    uint64_t seed;                  /* derived from (context seed, name):   */
                                    /* same for any thread count/order      */
    float *out;
    /* Activation statistics given with lm_plan_set_stats, or NULL. Model
     * t's entry for this tensor: lm_stats_find(stats, t, name, ...). */
    const struct lm_stats *stats;
    /* n_models entries: the adapter behind task t when it was added with
     * lm_plan_add_lora (its factors via lm_lora_find(loras[t], name, ...)),
     * NULL for full models. deltas[t] holds scale * B A either way. */
    const struct lm_lora *const *loras;
    /* The parameters as this tensor sees them: lm_params_get_* return its
     * per-tensor values, lm_params_get_model_float its per-model ones
     * (lm_plan_set_float_for). `weights` above already holds this
     * tensor's per-model weights. Lives for the call. Check struct_size
     * before reading it from a library older than 0.2. */
    const lm_params *params;
    /* (0.2) Bytes the library itself holds for this tensor while the
     * strategy runs: the base, the deltas and the output in f32, f64
     * copies of a wide merge, transposition and output-conversion
     * buffers (not a stage's own). For strategies that estimate their
     * memory before allocating (check_tensor). */
    uint64_t held_bytes;
} lm_tensor_job;

/* A merge strategy. Register with lm_register_strategy; the library copies
 * the first struct_size bytes, so the table may be a temporary.
 *
 * init: called once per plan execution, before any merge_tensor; stores
 *       the strategy's state in *state (may stay NULL). Optional.
 * merge_tensor: called once per tensor, concurrently from worker threads
 *       with the same state; must not modify the state. Report failures
 *       with lm_context_set_error and return its status. Required.
 * fini: called once after execution (also after failures) when init
 *       succeeded. Optional. */
typedef struct lm_strategy_vtable {
    uint32_t struct_size;
    uint32_t abi_version;           /* LM_STRATEGY_ABI_VERSION              */
    const char *name;               /* [a-z0-9_]+, unique in the context    */
    const char *description;
    const lm_param_desc *params;
    size_t n_params;
    lm_status (*init)(const lm_strategy_init_info *info, void **state,
                      void *user);
    lm_status (*merge_tensor)(void *state, const lm_tensor_job *job,
                              void *user);
    void (*fini)(void *state, void *user);
    void *user;
    /* Optional two-pass merging, for strategies whose result for one
     * tensor depends on others (e.g. ESM's layer-level scaling): when set,
     * prepare_tensor runs on every tensor first (concurrently; it may
     * update the state under its own lock), then prepared once, then
     * merge_tensor on every tensor. A load-time merger runs these passes
     * over the plan's base at creation (lm_merger_create). */
    lm_status (*prepare_tensor)(void *state, const lm_tensor_job *job,
                                void *user);
    lm_status (*prepared)(void *state, void *user);
    /* Optional (0.2): how many prepare passes this execution needs, asked
     * once after init (0 = none: merge_tensor at once, and a load-time
     * merger needs no base). Each pass runs prepare_tensor on every tensor
     * and then prepared; the state counts the passes itself (e.g. TIES
     * with scope=model: a histogram pass, then a refining pass, for an
     * exact whole-model magnitude threshold). NULL: one pass when
     * prepare_tensor is set, else none. */
    unsigned (*prepare_passes)(void *state, void *user);
    /* Optional (0.2): called for every tensor of every pass before the
     * library allocates or reads anything of it, with a job whose base,
     * deltas and out are NULL (name, shape, numel, n_models, weights,
     * stats, params and held_bytes are set). A strategy that can
     * estimate its memory refuses here (e.g. over a budget), before
     * anything large exists: a status and lm_context_set_error, as
     * merge_tensor. Called concurrently; must not modify the state. */
    lm_status (*check_tensor)(void *state, const lm_tensor_job *job,
                              void *user);
} lm_strategy_vtable;

/* Register a strategy in ctx. Strings and the params table must outlive the
 * context; the vtable struct itself is copied.
 * Errors: LM_ERR_ABI (struct_size smaller than the first version's or
 * abi_version unknown), LM_ERR_INVALID_ARGUMENT (bad name, missing
 * merge_tensor, bad param table: duplicate names, default outside range,
 * empty choices), LM_ERR_EXISTS (name taken). */
LM_API lm_status lm_register_strategy(lm_context *ctx,
                                      const lm_strategy_vtable *vtable);
LM_API size_t lm_strategy_count(const lm_context *ctx);
/* The registered vtable at index i (registration order) or NULL. The
 * returned table is the library's copy, padded with zeros to its size. */
LM_API const lm_strategy_vtable *lm_strategy_at(const lm_context *ctx,
                                                size_t i);
/* Errors: LM_ERR_NOT_FOUND. */
LM_API lm_status lm_strategy_find(const lm_context *ctx, const char *name,
                                  const lm_strategy_vtable **out);

/* lm_context_set_error, lm_alloc, lm_free and lm_log, which strategies
 * use, are host utilities declared in libmerge/context.h (included
 * above). */

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_SYS_STRATEGY_H */
