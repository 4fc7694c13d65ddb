/* Parameter values of a plan and per-tensor views of them. Not installed.
 *
 * A plan's lm_params holds the plan-wide values (lm_plan_set_float) and
 * the overrides of lm_plan_set_float_for: per model, per tensor, or per
 * (tensor, model). Strategies see a view for the tensor they merge
 * (lm_tensor_job.params), which resolves lookups against that tensor's
 * overrides first.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LM_CORE_PARAMS_PRIVATE_H
#define LM_CORE_PARAMS_PRIVATE_H

#include <stdbool.h>

#include "core/name_set.h"
#include "libmerge/sys/strategy.h"

/* `param` of an override that sets a model's weight instead of a
 * strategy parameter. */
#define LM__PARAM_WEIGHT (-1)

struct lm__param_value {
    int param;    /* index in the strategy's table, or LM__PARAM_WEIGHT */
    size_t model; /* model index or LM_ALL_MODELS */
    double value;
};

struct lm__param_values {
    struct lm__param_value *v;
    size_t n, cap;
};

struct lm__param_overrides {
    struct lm__param_values every_tensor;
    char **tensors;                     /* owned names, indexed below */
    struct lm__param_values *by_tensor; /* one list per name */
    size_t n_tensors, cap_tensors;
    struct lm__name_set index;
};

struct lm_params {
    lm_context *ctx;
    const lm_strategy_vtable *vt;
    double *values;
    char **choices; /* CHOICE values, owned */
    bool *set;
    struct lm__param_overrides *overrides; /* NULL until the first one */
    /* In a view: the viewed tensor's overrides (NULL when it has none). */
    const struct lm__param_values *tensor;
    /* The plan these parameters belong to, so that a built-in strategy
     * reaches plan-level inputs the strategy vtable does not carry (ESM:
     * user subspaces, lm_plan_subspace_find). Set by lm_plan_create. */
    const struct lm_plan *plan;
    /* Strategy attachment (lm__params_attach); views borrow it. */
    const void *attach_tag;
    void *attach_data;
    void (*attach_destroy)(lm_context *ctx, void *data);
};

/* Parameter values for a plan (params.c). */
lm_status lm__params_create(lm_context *ctx, const lm_strategy_vtable *vt,
                            lm_params **out);
void lm__params_destroy(lm_params *params);
lm_status lm__params_set_float(lm_params *params, const char *name,
                               double value);
lm_status lm__params_set_string(lm_params *params, const char *name,
                                const char *value);

/* Data a module outside the core attaches to a plan for its strategy to
 * find at init through lm_strategy_init_info.params (e.g. lib/nsc's host
 * forward callback for the `nsc` strategy), so the core needs to know
 * neither. One per plan: attaching under the same tag replaces (and
 * destroys) the old data, NULL data detaches; another tag is
 * LM_ERR_STATE. Destroyed with the plan. */
lm_status lm__params_attach(lm_params *params, const void *tag, void *data,
                            void (*destroy)(lm_context *ctx, void *data));
/* The data attached under `tag`, or NULL. */
void *lm__params_attachment(const lm_params *params, const void *tag);

/* Index of parameter `name` in the strategy's table, or -1. */
int lm__params_index(const lm_params *params, const char *name);
/* The declared [min, max] of parameter i. */
void lm__params_range(const lm_params *params, int i, double *min,
                      double *max);
/* Is `value` valid for parameter i? Sets the context's error if not. */
lm_status lm__params_check_value(const lm_params *params, int i,
                                 double value);

/* Overrides (param_overrides.c). `tensor` NULL = every tensor. */
lm_status lm__params_set_for(lm_params *params, const char *name,
                             double value, const char *tensor, size_t model);
void lm__params_overrides_free(lm_params *params);
/* A view of `params` for tensor `name` (borrows everything). */
void lm__params_view(const lm_params *params, const char *name,
                     lm_params *view);
/* The value of parameter i for `model` (LM_ALL_MODELS: the tensor-wide
 * value) as the view sees it. */
double lm__params_value(const lm_params *view, int i, size_t model);
/* Was parameter i set for this view at all (plan-wide or overridden)? */
bool lm__params_overridden(const lm_params *view, int i);
/* Model m's weight in this view: its override, else `plan_weight`. */
double lm__params_weight(const lm_params *view, size_t m, double plan_weight);
bool lm__params_has_weights(const lm_params *params);
/* Every tensor named by an override is in `names` (found by `has`);
 * else LM_ERR_NOT_FOUND naming it. */
lm_status lm__params_check_tensors(const lm_params *params,
                                   bool (*has)(const void *table,
                                               const char *name),
                                   const void *table);

#endif /* LM_CORE_PARAMS_PRIVATE_H */
