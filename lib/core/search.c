/* Golden-section search of a scale parameter against a host score. */
#include <math.h>

#include "core/plan_private.h"

struct search {
    lm_plan *plan;
    const char *param;
    lm_score_fn score;
    void *user;
    int evals;
    double best_value, best_score;
};

static lm_status evaluate(struct search *s, double value, double *out)
{
    LM_TRY(lm_plan_set_float(s->plan, s->param, value));
    lm_model *merged = NULL;
    LM_TRY(lm_plan_execute(s->plan, &merged));
    double score = 0;
    int rc = s->score(value, merged, &score, s->user);
    lm_model_destroy(merged);
    if (rc != 0)
        return lm_context_set_error(s->plan->ctx, LM_ERR_CALLBACK,
                                    "search: the score callback stopped at "
                                    "%s = %g (returned %d)", s->param, value,
                                    rc);
    if (isnan(score))
        return lm_context_set_error(s->plan->ctx, LM_ERR_CALLBACK,
                                    "search: the score at %s = %g is NaN",
                                    s->param, value);
    s->evals++;
    if (s->evals == 1 || score > s->best_score) {
        s->best_score = score;
        s->best_value = value;
    }
    *out = score;
    return LM_OK;
}

lm_status lm_plan_search(lm_plan *plan, const char *param, double lo,
                         double hi, double tol, int max_evals,
                         lm_score_fn score, void *user, double *best_value,
                         double *best_score)
{
    if (!plan || !param || !score)
        return LM_ERR_INVALID_ARGUMENT;
    double current;
    LM_TRY(lm_params_get_float(plan->params, param, &current));
    if (!(lo < hi) || !(tol > 0) || max_evals < 2)
        return lm_context_set_error(plan->ctx, LM_ERR_OUT_OF_RANGE,
                                    "search: need lo < hi, tol > 0 and "
                                    "max_evals >= 2 (got [%g, %g], %g, %d)",
                                    lo, hi, tol, max_evals);
    /* Both bounds must be settable; this also checks the declared range. */
    LM_TRY(lm_plan_set_float(plan, param, lo));
    LM_TRY(lm_plan_set_float(plan, param, hi));
    LM_TRY(lm_plan_set_float(plan, param, current));

    /* Only the scale changes between evaluations: the stages' work is
     * the same for every one. */
    LM_TRY(lm__stages_reuse_begin(plan));
    const double g = (sqrt(5.0) - 1.0) / 2.0; /* 0.618... */
    struct search s = {plan, param, score, user, 0, 0.0, 0.0};
    double a = lo, b = hi;
    double c = b - g * (b - a), d = a + g * (b - a);
    double fc, fd;
    lm_status st = evaluate(&s, c, &fc);
    if (st == LM_OK)
        st = evaluate(&s, d, &fd);
    while (st == LM_OK && b - a > tol && s.evals < max_evals) {
        if (fc >= fd) { /* the maximum is in [a, d] */
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            st = evaluate(&s, c, &fc);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            st = evaluate(&s, d, &fd);
        }
    }
    lm__stages_reuse_end(plan);
    if (st != LM_OK) {
        lm_plan_set_float(plan, param, current);
        return st;
    }
    LM_TRY(lm_plan_set_float(plan, param, s.best_value));
    if (best_value)
        *best_value = s.best_value;
    if (best_score)
        *best_score = s.best_score;
    return LM_OK;
}
