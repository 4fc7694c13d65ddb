/* NSC inside a plan (lm_plan_set_nsc_forward): the host's forward
 * callback and options, attached to the plan's parameters, and the
 * optimisation the `nsc` strategy runs with them at init. Not installed. */
#ifndef LM_NSC_FORWARD_H
#define LM_NSC_FORWARD_H

#include "core/internal.h"
#include "libmerge/experimental/nsc.h"

struct lm__nsc_forward {
    lm_plan *plan;
    lm_nsc_eval_fn evaluate;
    void *user;
    lm_nsc_options options;
    lm_nsc_spsa_options spsa;
    lm_nsc *nsc;                 /* the last optimisation, or NULL */
    const lm_lora **adapters;    /* the tasks it was run for */
};

/* The plan's forward attachment (NULL when none is set). */
struct lm__nsc_forward *lm__nsc_forward_of(const lm_params *params);

/* The optimised lm_nsc for the plan's n_models tasks (borrowed): the
 * previous result when the plan's adapters are the same ones, else a new
 * SPSA run through the host's callback. Every task must be an adapter
 * (LM_ERR_UNSUPPORTED naming it); errors of lm_nsc_create / lm_nsc_spsa. */
lm_status lm__nsc_forward_run(struct lm__nsc_forward *fw, size_t n_models,
                              lm_nsc **out);

#endif
