/* `model_stock` (Jang et al. 2024, "Model Stock: All we need is just a
 * few fine-tuned models", arXiv:2403.19522), as mergekit computes it
 * (mergekit/merge_methods/model_stock.py): with N >= 2 task vectors
 * tau_t = m_t - base (the base is the pre-trained anchor and not one of
 * the N),
 *   cos = mean over pairs i < j of clamp(tau_i . tau_j / max(|tau_i|
 *         |tau_j|, 1e-6), -1, 1),
 *   t   = N cos / (1 + (N - 1) cos),
 *   merged = t * mean(m_t) + (1 - t) base = base + t * mean(tau_t).
 * `filter_wise`: one ratio per row (last dimension; a 1-D tensor is one
 * row) instead of one per tensor. Weights are not used (mergekit ignores
 * them too). A row whose ratio is undefined (1 + (N - 1) cos = 0, e.g.
 * two opposite task vectors; |1 + (N - 1) cos| < 1e-6) is an error naming
 * the tensor: mergekit would write NaN or Inf there. Sums in f64. */
#include <math.h>

#include "strategies/geometry.h"

static const lm_param_desc model_stock_params[] = {
    {sizeof(lm_param_desc), "filter_wise", LM_PARAM_BOOL, 0.0, 0.0, 1.0, NULL,
     "one interpolation ratio per row instead of per tensor",
     LM_PARAM_PER_TENSOR},
};

static lm_status model_stock_init(const lm_strategy_init_info *info,
                                  void **state, void *user)
{
    (void)user;
    return lm__geo_init(info, state, "model_stock", 2, (size_t)-1,
                        "model_stock needs at least two fine-tuned models "
                        "besides the base");
}

/* Mean pairwise cosine of the task vectors over vector c of layout l;
 * nrm: T scratch. */
static double mean_cosine(const lm_tensor_job *job,
                          const struct lm__vec_layout *l, size_t c,
                          double *nrm)
{
    size_t T = job->n_models;
    for (size_t t = 0; t < T; t++) {
        double s = 0;
        for (size_t j = 0; j < l->len; j++) {
            double v = job->deltas[t][lm__vec_at(l, c, j)];
            s += v * v;
        }
        nrm[t] = sqrt(s);
    }
    double sum = 0;
    for (size_t a = 0; a < T; a++)
        for (size_t b = a + 1; b < T; b++) {
            double d = 0;
            for (size_t j = 0; j < l->len; j++) {
                size_t i = lm__vec_at(l, c, j);
                d += (double)job->deltas[a][i] * job->deltas[b][i];
            }
            double cs = d / fmax(nrm[a] * nrm[b], 1e-6);
            sum += fmin(fmax(cs, -1.0), 1.0);
        }
    return sum / (double)(T * (T - 1) / 2);
}

static lm_status model_stock_merge(void *state, const lm_tensor_job *job,
                                   void *user)
{
    (void)user;
    int filter_wise;
    LM_TRY(lm_params_get_bool(job->params, "filter_wise",
                              &filter_wise));
    size_t T = job->n_models;
    double *nrm = lm_alloc(job->ctx, T * sizeof(double));
    if (!nrm)
        return lm__geo_oom(job, "model_stock");
    struct lm__vec_layout l =
        filter_wise ? lm__vec_rows(job) : lm__vec_whole(job);
    lm_status st = LM_OK;
    for (size_t c = 0; c < l.count && st == LM_OK; c++) {
        double cs = mean_cosine(job, &l, c, nrm);
        double den = 1.0 + (double)(T - 1) * cs;
        if (fabs(den) < 1e-6) {
            st = lm_context_set_error(
                job->ctx, LM_ERR_OUT_OF_RANGE,
                "model_stock: tensor '%s'%s: the task vectors' mean cosine "
                "is -1/(N-1) (e.g. two opposite task vectors), so the "
                "interpolation ratio is undefined",
                job->name, filter_wise ? " (a row)" : "");
            break;
        }
        double ratio = (double)T * cs / den;
        for (size_t j = 0; j < l.len; j++) {
            size_t i = lm__vec_at(&l, c, j);
            double acc = 0;
            for (size_t t = 0; t < T; t++)
                acc += job->deltas[t][i];
            job->out[i] = (float)(ratio * (acc / (double)T));
        }
    }
    lm_free(job->ctx, nrm);
    return st;
}

const lm_strategy_vtable lm__model_stock_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "model_stock",
    .description = "Model Stock: the models' mean pulled toward the base by "
                   "their task vectors' angle",
    .params = model_stock_params,
    .n_params = sizeof(model_stock_params) / sizeof(model_stock_params[0]),
    .init = model_stock_init,
    .merge_tensor = model_stock_merge,
};
