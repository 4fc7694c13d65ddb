/* Least-squares output matching of one module's merged delta
 * (output_match.h). Why the mean second moment: each task's calibration
 * sample then weighs the same whatever its number of rows, as every task
 * weighs the same in NSC's objective. */
#include "nsc/output_match.h"

#include "linalg/linalg.h"
#include "stats/lookup.h"

static lm_status missing(const lm_tensor_job *job, size_t t, size_t d_in)
{
    return lm_context_set_error(job->ctx, LM_ERR_NOT_FOUND,
                                "nsc alpha_rule=output_match: no statistics "
                                "with %zu input columns for task %zu at "
                                "'%s' (collect every task's layer inputs, "
                                "e.g. libmerge.torch.collect_stats)",
                                d_in, t, job->name);
}

lm_status lm__nsc_output_match(const lm_tensor_job *job,
                               const struct lm_stats *stats,
                               const double *coef, double *f)
{
    *f = 1.0;
    if (job->ndim != 2)
        return lm_context_set_error(job->ctx, LM_ERR_SHAPE,
                                    "nsc alpha_rule=output_match: '%s' is "
                                    "not a matrix", job->name);
    size_t d_out = (size_t)job->shape[0], d_in = (size_t)job->shape[1];
    size_t n = job->numel;
    const double **grams = lm__calloc(job->ctx, job->n_models + 1,
                                      sizeof(*grams));
    uint64_t *rows = lm__calloc(job->ctx, job->n_models + 1, sizeof(*rows));
    double *m = lm__calloc(job->ctx, 3 * n, sizeof(double));
    if (!grams || !rows || !m) {
        lm_free(job->ctx, grams);
        lm_free(job->ctx, rows);
        lm_free(job->ctx, m);
        return lm_context_set_error(job->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "nsc: out of memory matching '%s'",
                                    job->name);
    }
    lm_status st = LM_OK;
    for (size_t t = 0; t < job->n_models && st == LM_OK; t++) {
        size_t d = 0;
        if (lm__stats_lookup(stats, t, job->name, &grams[t], &d, &rows[t]) ||
            d != d_in || rows[t] == 0)
            st = missing(job, t, d_in);
    }
    double *dk = m + n, *p = m + 2 * n;
    for (size_t i = 0; i < n && st == LM_OK; i++) {
        double acc = 0.0;
        for (size_t t = 0; t < job->n_models; t++)
            acc += coef[t] * (double)job->deltas[t][i];
        m[i] = acc;
    }
    double num = 0.0, den = 0.0;
    for (size_t t = 0; t < job->n_models && st == LM_OK; t++) {
        /* P = M G_t / n_t; then <deltas[t], P> and <M, P>. */
        lm__gemm(false, false, d_out, d_in, d_in, 1.0 / (double)rows[t], m,
                 grams[t], 0.0, p);
        lm__f32_to_f64(job->deltas[t], dk, n);
        for (size_t i = 0; i < n; i++) {
            num += dk[i] * p[i];
            den += m[i] * p[i];
        }
    }
    if (st == LM_OK && den > 0.0)
        *f = num > 0.0 ? num / den : 0.0;
    lm_free(job->ctx, grams);
    lm_free(job->ctx, rows);
    lm_free(job->ctx, m);
    return st;
}
