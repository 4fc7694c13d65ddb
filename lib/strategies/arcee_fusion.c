/* `arcee_fusion` (Arcee AI; mergekit/merge_methods/arcee_fusion.py): keep
 * the model's change only where it matters most. With a = base, b = the
 * model and tau = b - a, per row (last dimension; a 1-D tensor is one
 * row):
 *   p = softmax(b) + 1e-8,  q = softmax(a) + 1e-8,
 *   importance_i = |tau_i| * sum_row p log(p / q)   (KL divergence),
 * then over the whole tensor threshold = median + 1.5 (Q3 - Q1), the
 * quantiles being the sorted importances at floor(q (n - 1)) for q = 0.5,
 * 0.25, 0.75, and merged = a + tau where importance >= threshold, a
 * elsewhere. mergekit estimates the quantiles of tensors above 10^6
 * entries from a random sample of 10^6; libmerge always uses every entry
 * (deterministic, and the sample's expectation). Computed in f64. */
#include <math.h>
#include <stdlib.h>

#include "strategies/geometry.h"

static lm_status arcee_fusion_init(const lm_strategy_init_info *info,
                                   void **state, void *user)
{
    (void)user;
    return lm__geo_init(info, state, "arcee_fusion", 1, 1,
                        "arcee_fusion merges the base with exactly one "
                        "model");
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* Softmax of row c of base (+ delta when `model`) into s, stable. */
static void softmax(const lm_tensor_job *job, const struct lm__vec_layout *l,
                    size_t c, int model, double *s)
{
    double mx = -HUGE_VAL, sum = 0;
    for (size_t j = 0; j < l->len; j++) {
        size_t i = lm__vec_at(l, c, j);
        s[j] = job->base[i] + (model ? (double)job->deltas[0][i] : 0.0);
        mx = fmax(mx, s[j]);
    }
    for (size_t j = 0; j < l->len; j++)
        sum += s[j] = exp(s[j] - mx);
    for (size_t j = 0; j < l->len; j++)
        s[j] /= sum;
}

static lm_status arcee_fusion_merge(void *state, const lm_tensor_job *job,
                                    void *user)
{
    (void)state;
    (void)user;
    size_t n = job->numel;
    if (n == 0)
        return LM_OK;
    struct lm__vec_layout l = lm__vec_rows(job);
    /* importance, its sorted copy, and two rows of probabilities */
    double *imp = lm_alloc(job->ctx, (2 * n + 2 * l.len) * sizeof(double));
    if (!imp)
        return lm__geo_oom(job, "arcee_fusion");
    double *sorted = imp + n, *p = sorted + n, *q = p + l.len;
    const float *d = job->deltas[0];
    for (size_t c = 0; c < l.count; c++) {
        softmax(job, &l, c, 1, p);
        softmax(job, &l, c, 0, q);
        double kl = 0;
        for (size_t j = 0; j < l.len; j++) {
            double pj = p[j] + 1e-8, qj = q[j] + 1e-8;
            kl += pj * log(pj / qj);
        }
        for (size_t j = 0; j < l.len; j++) {
            size_t i = lm__vec_at(&l, c, j);
            imp[i] = fabs((double)d[i]) * kl;
        }
    }
    for (size_t i = 0; i < n; i++)
        sorted[i] = imp[i];
    qsort(sorted, n, sizeof(double), cmp_double);
    double med = sorted[(size_t)(0.5 * (double)(n - 1))];
    double q1 = sorted[(size_t)(0.25 * (double)(n - 1))];
    double q3 = sorted[(size_t)(0.75 * (double)(n - 1))];
    double threshold = med + 1.5 * (q3 - q1);
    for (size_t i = 0; i < n; i++)
        job->out[i] = imp[i] >= threshold ? d[i] : 0.0f;
    lm_free(job->ctx, imp);
    return LM_OK;
}

const lm_strategy_vtable lm__arcee_fusion_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "arcee_fusion",
    .description = "keep the model's changes whose importance (|change| x "
                   "row KL divergence) is an outlier (mergekit arcee_fusion)",
    .params = NULL,
    .n_params = 0,
    .init = arcee_fusion_init,
    .merge_tensor = arcee_fusion_merge,
};
