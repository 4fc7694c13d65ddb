/* Built-in strategies and helpers they share. Not installed. */
#ifndef LM_STRATEGIES_BUILTIN_H
#define LM_STRATEGIES_BUILTIN_H

#include "core/internal.h"
#include "linalg/whiten.h"

/* Each built-in is a vtable registered by lm__register_builtin_strategies
 * through the public lm_register_strategy, as a plugin would be. */
extern const lm_strategy_vtable lm__average_strategy;
extern const lm_strategy_vtable lm__task_arithmetic_strategy;
extern const lm_strategy_vtable lm__ties_strategy;
extern const lm_strategy_vtable lm__dare_linear_strategy;
extern const lm_strategy_vtable lm__dare_ties_strategy;
extern const lm_strategy_vtable lm__tsv_strategy;
extern const lm_strategy_vtable lm__iso_c_strategy;
extern const lm_strategy_vtable lm__iso_cts_strategy;
extern const lm_strategy_vtable lm__knots_strategy;
extern const lm_strategy_vtable lm__esm_strategy;
/* mergekit's geometric family (geometry.h) */
extern const lm_strategy_vtable lm__linear_strategy;
extern const lm_strategy_vtable lm__slerp_strategy;
extern const lm_strategy_vtable lm__nuslerp_strategy;
extern const lm_strategy_vtable lm__multislerp_strategy;
extern const lm_strategy_vtable lm__karcher_strategy;
extern const lm_strategy_vtable lm__model_stock_strategy;
extern const lm_strategy_vtable lm__nearswap_strategy;
extern const lm_strategy_vtable lm__arcee_fusion_strategy;
extern const lm_strategy_vtable lm__passthrough_strategy;
/* mergekit's sparsification family (sparsify.h) */
extern const lm_strategy_vtable lm__breadcrumbs_strategy;
extern const lm_strategy_vtable lm__breadcrumbs_ties_strategy;
extern const lm_strategy_vtable lm__della_strategy;
extern const lm_strategy_vtable lm__della_linear_strategy;
extern const lm_strategy_vtable lm__sce_strategy;
extern const lm_strategy_vtable lm__ram_strategy;
extern const lm_strategy_vtable lm__ramplus_tl_strategy;
/* NSC LoRA merging with optimised coefficients (nsc.c) */
extern const lm_strategy_vtable lm__nsc_strategy;

/* job->out[i] per a linear rule (core/linear_rule.h): the plain path of
 * the strategies that declare one, so that both paths share the rule. */
struct lm__linear_rule;
void lm__linear_apply(const lm_tensor_job *job,
                      const struct lm__linear_rule *rule);
/* Declare the sparse rules of ties, dare_ties and dare_linear
 * (core/sparse_rule.h; ties.c). */
lm_status lm__sparse_rules_register(lm_context *ctx);
/* Iso-C's sum rule (core/sum_rule.h; svd_family.c). */
lm_status lm__svd_sum_rules_register(lm_context *ctx);
/* The rules of task_arithmetic, average and linear (lm__linear_rule_fn). */
lm_status lm__task_arithmetic_rule(void *state, const lm_tensor_job *job,
                                   struct lm__linear_rule *out);
lm_status lm__average_rule(void *state, const lm_tensor_job *job,
                           struct lm__linear_rule *out);
lm_status lm__linear_rule(void *state, const lm_tensor_job *job,
                          struct lm__linear_rule *out);

/* job->out[i] = scale * sum_t weights[t] * deltas[t][i], accumulated in
 * f64 and rounded once. */
void lm__weighted_sum(const lm_tensor_job *job, double scale);

/* Weighted task vectors w_t * tau_t in f64 (T x numel), lm_free'd by the
 * caller; NULL when out of memory. */
double *lm__weighted_tasks(const lm_tensor_job *job);
/* TSV-M of the T matrices in x (m x n each), alpha 1, exact SVDs, the
 * polar step as `whiten` and `whiten_floor` say (linalg/whiten.h). */
lm_status lm__tsv_merge(const lm_tensor_job *job, const double *x, size_t m,
                        size_t n, lm_whiten whiten, double floor_c,
                        double *out);

#endif
