/* Golden-section search of a scale parameter against a host score, with
 * a bracket that moves when the best point sits at its edge. */
#include <math.h>
#include <stddef.h>

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

/* One golden-section pass on [lo, hi] (the first two points are the
 * released ESM code's lo + 0.382 w and lo + 0.618 w). *a and *b receive
 * the final bracket: *b == hi means every comparison favoured the upper
 * end, *a == lo the lower one. */
static lm_status golden(struct search *s, double lo, double hi, double tol,
                        int max_evals, double *a_out, double *b_out)
{
    const double g = (sqrt(5.0) - 1.0) / 2.0; /* 0.618... */
    const int stop = s->evals + max_evals;
    double a = lo, b = hi;
    double c = b - g * (b - a), d = a + g * (b - a);
    double fc, fd;
    lm_status st = evaluate(s, c, &fc);
    if (st == LM_OK)
        st = evaluate(s, d, &fd);
    while (st == LM_OK && b - a > tol && s->evals < stop) {
        if (fc >= fd) { /* the maximum is in [a, d] */
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            st = evaluate(s, c, &fc);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            st = evaluate(s, d, &fd);
        }
    }
    *a_out = a;
    *b_out = b;
    return st;
}

static lm_status check_bracket(lm_plan *plan, const char *param, double lo,
                               double hi, double tol, int max_evals,
                               double *current)
{
    LM_TRY(lm_params_get_float(plan->params, param, current));
    if (!(lo < hi) || !(tol > 0) || max_evals < 2)
        return lm_context_set_error(plan->ctx, LM_ERR_OUT_OF_RANGE,
                                    "search: need lo < hi, tol > 0 and "
                                    "max_evals >= 2 (got [%g, %g], %g, %d)",
                                    lo, hi, tol, max_evals);
    /* Both bounds must be settable; this also checks the declared range. */
    LM_TRY(lm_plan_set_float(plan, param, lo));
    LM_TRY(lm_plan_set_float(plan, param, hi));
    return lm_plan_set_float(plan, param, *current);
}

/* Which edge of [lo, hi] the pass ended at: +1 the upper one (the final
 * bracket [a, b] still reaches hi and the best point is within tol of
 * it), -1 the lower one, 0 neither. A bracket that max_evals stopped
 * while still wide is not an edge: its best point is inside. */
static int edge_of(double lo, double hi, double a, double b, double best,
                   double tol)
{
    if (b == hi && best >= hi - tol)
        return 1;
    if (a == lo && best <= lo + tol)
        return -1;
    return 0;
}

/* Move [lo, hi] past the edge it ended at: to [hi - w/2, hi + w] (or the
 * mirror image), clipped to the declared range [min, max]. 0 when the
 * bracket already reaches the range's end. */
static int widen(int edge, double *lo, double *hi, double min, double max)
{
    double w = *hi - *lo;
    if (edge > 0 && *hi < max) {
        *lo = *hi - w / 2;
        *hi = fmin(max, *hi + w);
        return 1;
    }
    if (edge < 0 && *lo > min) {
        *hi = *lo + w / 2;
        *lo = fmax(min, *lo - w);
        return 1;
    }
    return 0;
}

static lm_status search(lm_plan *plan, const char *param,
                        const lm_search_options *o, lm_score_fn score,
                        void *user, lm_search_result *r)
{
    double current;
    LM_TRY(check_bracket(plan, param, o->lo, o->hi, o->tol, o->max_evals,
                         &current));
    if (o->max_widen < 0)
        return lm_context_set_error(plan->ctx, LM_ERR_OUT_OF_RANGE,
                                    "search: max_widen must be >= 0 (got "
                                    "%d)", o->max_widen);
    double min, max;
    lm__params_range(plan->params, lm__params_index(plan->params, param),
                     &min, &max);

    /* Only the scale changes between evaluations: the stages' work is
     * the same for every one. */
    LM_TRY(lm__stages_reuse_begin(plan));
    struct search s = {plan, param, score, user, 0, 0.0, 0.0};
    double lo = o->lo, hi = o->hi, a, b;
    int widened = 0, at_edge = 0;
    lm_status st;
    for (;;) {
        st = golden(&s, lo, hi, o->tol, o->max_evals, &a, &b);
        if (st != LM_OK)
            break;
        int edge = edge_of(lo, hi, a, b, s.best_value, o->tol);
        at_edge = edge != 0;
        if (!edge || widened == o->max_widen ||
            !widen(edge, &lo, &hi, min, max))
            break;
        widened++;
    }
    lm__stages_reuse_end(plan);
    if (st != LM_OK) {
        lm_plan_set_float(plan, param, current);
        return st;
    }
    LM_TRY(lm_plan_set_float(plan, param, s.best_value));
    r->best_value = s.best_value;
    r->best_score = s.best_score;
    r->lo = lo;
    r->hi = hi;
    r->evals = s.evals;
    r->widened = widened;
    r->at_edge = at_edge;
    return LM_OK;
}

lm_status lm_plan_search(lm_plan *plan, const char *param, double lo,
                         double hi, double tol, int max_evals,
                         lm_score_fn score, void *user, double *best_value,
                         double *best_score)
{
    if (!plan || !param || !score)
        return LM_ERR_INVALID_ARGUMENT;
    lm_search_options o = {sizeof(o), lo, hi, tol, max_evals, 0};
    lm_search_result r = {sizeof(r), 0, 0, 0, 0, 0, 0, 0};
    LM_TRY(search(plan, param, &o, score, user, &r));
    if (best_value)
        *best_value = r.best_value;
    if (best_score)
        *best_score = r.best_score;
    return LM_OK;
}

void lm_search_options_init(lm_search_options *options)
{
    if (options)
        *options = (lm_search_options)LM_SEARCH_OPTIONS_INIT;
}

lm_status lm_plan_search_with(lm_plan *plan, const char *param,
                              const lm_search_options *options,
                              lm_score_fn score, void *user,
                              lm_search_result *result)
{
    if (!plan || !param || !score)
        return LM_ERR_INVALID_ARGUMENT;
    lm_search_options o = LM_SEARCH_OPTIONS_INIT;
    if (options) {
        if (options->struct_size < sizeof(lm_search_options))
            return lm_context_set_error(plan->ctx, LM_ERR_ABI,
                                        "search: lm_search_options."
                                        "struct_size %u is smaller than "
                                        "this library's %zu",
                                        (unsigned)options->struct_size,
                                        sizeof(lm_search_options));
        o = *options;
    }
    if (result && result->struct_size < sizeof(lm_search_result))
        return lm_context_set_error(plan->ctx, LM_ERR_ABI,
                                    "search: lm_search_result.struct_size "
                                    "%u is smaller than this library's %zu",
                                    (unsigned)result->struct_size,
                                    sizeof(lm_search_result));
    lm_search_result r = {sizeof(r), 0, 0, 0, 0, 0, 0, 0};
    LM_TRY(search(plan, param, &o, score, user, &r));
    if (result)
        *result = r;
    return LM_OK;
}
