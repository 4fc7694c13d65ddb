/* Gradient-free NSC: simultaneous-perturbation stochastic approximation of
 * the objective's gradient, fed to the same AdamW update as the gradient
 * protocol. The host runs the network through a callback. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "nsc/nsc_internal.h"

lm_status lm_nsc_observe(lm_nsc *n, size_t task, size_t module,
                         const float *z, size_t rows, size_t d)
{
    const struct nsc_factor *f;
    if (!n || !z)
        return LM_ERR_INVALID_ARGUMENT;
    if (!rows)
        return LM_OK;
    LM_TRY(lm__nsc_check_task(n, task, module, d, &f));
    double sum = 0;
    LM_TRY(lm__nsc_ratio_sum(n->ctx, f, z, rows, d, &sum, NULL, 0.0));
    pthread_mutex_lock(&n->lock);
    n->obs[task] += sum;
    n->obs_rows[task] += (double)rows;
    pthread_mutex_unlock(&n->lock);
    return LM_OK;
}

/* Mean over tasks of the mean omega their evaluation reported. */
static lm_status evaluate(lm_nsc *n, lm_nsc_eval_fn fn, void *user,
                          size_t step, double *out)
{
    memset(n->obs, 0, 2 * n->n_tasks * sizeof(double));
    double total = 0;
    size_t seen = 0;
    for (size_t t = 0; t < n->n_tasks; t++) {
        if (fn(n, t, step, user) != 0)
            return lm_context_set_error(n->ctx, LM_ERR_CALLBACK,
                                        "nsc: the evaluation callback "
                                        "stopped at step %zu, task %zu",
                                        step, t);
        if (n->obs_rows[t] > 0) {
            total += n->obs[t] / n->obs_rows[t];
            seen++;
        }
    }
    if (!seen)
        return lm_context_set_error(n->ctx, LM_ERR_STATE,
                                    "nsc: the evaluation reported no inputs "
                                    "(call lm_nsc_observe from the callback)");
    *out = total / (double)seen;
    return LM_OK;
}

/* Rademacher sign of coefficient j at a step, from the context seed. */
static double sign_of(uint64_t seed, size_t step, size_t j)
{
    uint64_t h = lm__mix64(seed ^ lm__mix64(0x5350534100000000ULL + step) ^
                           lm__mix64((uint64_t)j * 0x9e3779b97f4a7c15ULL));
    return (h >> 63) ? 1.0 : -1.0;
}

/* Frozen modules are not perturbed: their gradient is known to be zero,
 * and perturbing them would feed the slope's noise into their update. */
static void perturb(lm_nsc *n, size_t step, double by)
{
    size_t j = 0;
    for (size_t i = 0; i < n->n_modules; i++)
        for (size_t t = 0; t < n->n_tasks; t++, j++)
            if (n->modules[i].tasks[t].a && !n->modules[i].frozen)
                n->modules[i].coef[t] += by * sign_of(n->ctx->seed, step, j);
}

lm_status lm_nsc_spsa(lm_nsc *n, const lm_nsc_spsa_options *o,
                      lm_nsc_eval_fn fn, void *user, double *first,
                      double *last, double *curve)
{
    if (!n || !fn)
        return LM_ERR_INVALID_ARGUMENT;
    lm_nsc_spsa_options opts = LM_NSC_SPSA_OPTIONS_INIT;
    if (o) {
        if (o->struct_size < sizeof(*o))
            return lm_context_set_error(n->ctx, LM_ERR_ABI,
                                        "nsc: spsa options struct_size %u "
                                        "too small", o->struct_size);
        opts = *o;
    }
    if (!(opts.perturbation > 0) || !(opts.lr > 0) ||
        !isfinite(opts.perturbation) || !isfinite(opts.lr))
        return lm_context_set_error(n->ctx, LM_ERR_OUT_OF_RANGE,
                                    "nsc: spsa perturbation and lr must be "
                                    "positive");
    if (opts.steps > SIZE_MAX - opts.first_step)
        return lm_context_set_error(n->ctx, LM_ERR_OUT_OF_RANGE,
                                    "nsc: spsa first_step + steps "
                                    "overflows");
    double c = opts.perturbation, value = 0;
    if (first) {
        LM_TRY(evaluate(n, fn, user, opts.first_step, &value));
        *first = value;
    }
    size_t end = opts.first_step + opts.steps;
    for (size_t step = opts.first_step; step < end; step++) {
        double plus, minus;
        perturb(n, step, c);
        lm_status st = evaluate(n, fn, user, step, &plus);
        perturb(n, step, -2 * c);
        if (st == LM_OK)
            st = evaluate(n, fn, user, step, &minus);
        perturb(n, step, c);
        LM_TRY(st);
        if (curve)
            curve[step - opts.first_step] = 0.5 * (plus + minus);
        double slope = (plus - minus) / (2 * c);
        size_t j = 0;
        for (size_t i = 0; i < n->n_modules; i++)
            for (size_t t = 0; t < n->n_tasks; t++, j++)
                n->modules[i].grad[t] =
                    n->modules[i].tasks[t].a
                        ? slope * sign_of(n->ctx->seed, step, j)
                        : 0.0;
        lm__nsc_adamw(n, opts.lr);
    }
    if (last) {
        LM_TRY(evaluate(n, fn, user, end, &value));
        *last = value;
    }
    return LM_OK;
}
