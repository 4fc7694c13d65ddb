/* ESM's merge of one layer from activation statistics, in the released
 * order of operations (docs/methods/esm.md): essential subspaces from
 * Delta_W (X^T X) Delta_W^T, projection, inter-task and eigenvalue
 * weighting, concatenation, input-column scaling, rescaled polar factors,
 * product x 2. */
#include <math.h>
#include <string.h>

#include "linalg/linalg.h"
#include "strategies/esm.h"

/* P (d x d, columns = essential directions, descending) and lambda (d)
 * of one task: eigenvectors and eigenvalues / (n - 1) of
 * G = dW C dW^T; with pad_identity and n < d, the official padding. */
static lm_status essential_subspace(lm_context *ctx, const struct esm_opts *o,
                                    const double *dw, const double *gram,
                                    size_t d_out, size_t d_in, uint64_t n_rows,
                                    double *p, double *lambda)
{
    double *y = lm__calloc(ctx, d_out * d_in + d_out * d_out, sizeof(double));
    if (!y)
        return LM_ERR_OUT_OF_MEMORY;
    double *g = y + d_out * d_in;
    lm__gemm(false, false, d_out, d_in, d_in, 1.0, dw, gram, 0.0, y);
    lm__gemm(false, true, d_out, d_out, d_in, 1.0, y, dw, 0.0, g);
    /* Exact symmetry for the eigensolver. */
    for (size_t i = 0; i < d_out; i++)
        for (size_t j = i + 1; j < d_out; j++)
            g[j * d_out + i] = g[i * d_out + j] =
                0.5 * (g[i * d_out + j] + g[j * d_out + i]);
    lm_status st = lm__eigh(ctx, g, d_out, lambda, p);
    lm_free(ctx, y);
    if (st != LM_OK)
        return st;
    double denom = n_rows > 1 ? (double)(n_rows - 1) : 1.0;
    for (size_t i = 0; i < d_out; i++)
        lambda[i] = lambda[i] > 0 ? lambda[i] / denom : 0.0;
    if (o->pad_identity && n_rows < d_out) {
        /* The released code takes the SVD of the n x d_out output shift,
         * which has only n directions, and fills the rest with identity
         * columns (not an orthogonal complement). */
        size_t r = (size_t)n_rows;
        for (size_t i = 0; i < d_out; i++)
            for (size_t j = r; j < d_out; j++)
                p[i * d_out + j] = i == j ? 1.0 : 0.0;
        for (size_t j = r; j < d_out; j++)
            lambda[j] = 0.0;
    }
    return LM_OK;
}

/* Everything one task contributes, computed on its own so tasks run in
 * parallel: task t writes columns [t k, (t+1) k) of pcat, the same rows of
 * acat (not yet divided by the mean norm) and norms[t]. */
struct esm_tasks {
    lm_context *ctx;
    const struct esm_opts *o;
    const double *x;
    const double *const *grams;
    const uint64_t *n_rows;
    size_t d_out, d_in, k, cols;
    double *pcat, *acat, *norms;
};

static lm_status task_block(void *arg, size_t t)
{
    const struct esm_tasks *w = arg;
    const struct esm_opts *o = w->o;
    size_t d_out = w->d_out, d_in = w->d_in, k = w->k, cols = w->cols;
    double *buf = lm__calloc(w->ctx, d_out * d_out + d_out + d_out * d_in + k,
                             sizeof(double));
    if (!buf)
        return lm_context_set_error(w->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "esm: out of memory for task %zu", t);
    double *p = buf, *lambda = p + d_out * d_out, *a = lambda + d_out,
           *e = a + d_out * d_in;
    const double *dw = w->x + t * d_out * d_in;
    lm_status st = essential_subspace(w->ctx, o, dw, w->grams[t], d_out, d_in,
                                      w->n_rows[t], p, lambda);
    if (st != LM_OK) {
        lm_free(w->ctx, buf);
        return st;
    }
    /* A_t = P^T dW over all d_out rows; its norm drives the inter-task
     * weight (released code: not the truncated norm). */
    lm__gemm(true, false, d_out, d_in, d_out, 1.0, p, dw, 0.0, a);
    double nrm = 0;
    for (size_t i = 0; i < d_out * d_in; i++)
        nrm += a[i] * a[i];
    w->norms[t] = sqrt(nrm);
    double row_scale = o->inter_task ? pow(w->norms[t], o->norm_power) : 1.0;
    double lmean = 0;
    for (size_t i = 0; i < k; i++)
        lmean += lambda[i];
    lmean /= (double)k;
    double emean = 0;
    for (size_t i = 0; i < k; i++) {
        e[i] = o->eig_weighting && lmean > 0
                   ? pow(lambda[i] / lmean, o->eig_power)
                   : 1.0;
        emean += e[i];
    }
    emean /= (double)k;
    for (size_t i = 0; i < k; i++)
        e[i] = emean > 0 ? e[i] / emean : 1.0;
    for (size_t r = 0; r < d_out; r++)
        for (size_t j = 0; j < k; j++)
            w->pcat[r * cols + t * k + j] = p[r * d_out + j] * e[j];
    for (size_t j = 0; j < k; j++)
        for (size_t c = 0; c < d_in; c++)
            w->acat[(t * k + j) * d_in + c] =
                a[j * d_in + c] * row_scale * e[j];
    lm_free(w->ctx, buf);
    return LM_OK;
}

lm_status lm__esm_layer(lm_context *ctx, const struct esm_opts *o,
                        const double *x, const double *const *grams,
                        const uint64_t *n_rows, size_t T, size_t d_out,
                        size_t d_in, double *out)
{
    size_t k = o->rank ? o->rank : d_out / T;
    if (k < 1)
        k = 1;
    if (k > d_out)
        k = d_out;
    size_t cols = k * T;
    double *buf = lm__calloc(ctx, d_out * cols * 2 + cols * d_in * 2 + T +
                                      d_in,
                             sizeof(double));
    if (!buf)
        return LM_ERR_OUT_OF_MEMORY;
    double *pcat = buf, *po = pcat + d_out * cols, *acat = po + d_out * cols,
           *ao = acat + cols * d_in, *norms = ao + cols * d_in,
           *colnorm = norms + T;
    struct esm_tasks tasks = {ctx,  o,     x,    grams, n_rows, d_out,
                              d_in, k,     cols, pcat,  acat,   norms};
    lm_status st = lm__parallel_for(ctx, T, task_block, &tasks);
    if (st == LM_OK && o->inter_task) {
        double mean = 0;
        for (size_t t = 0; t < T; t++)
            mean += norms[t];
        mean /= (double)T;
        double div = pow(mean, o->norm_power);
        if (div > 0)
            for (size_t i = 0; i < cols * d_in; i++)
                acat[i] /= div;
    }
    if (st == LM_OK && o->inter_dim) {
        double mean = 0;
        for (size_t c = 0; c < d_in; c++) {
            double s2 = 0;
            for (size_t r = 0; r < cols; r++)
                s2 += acat[r * d_in + c] * acat[r * d_in + c];
            colnorm[c] = sqrt(s2);
            mean += colnorm[c];
        }
        mean /= (double)d_in;
        for (size_t c = 0; mean > 0 && c < d_in; c++) {
            double scale = pow(colnorm[c] / mean, o->norm_power);
            for (size_t r = 0; r < cols; r++)
                acat[r * d_in + c] *= scale;
        }
    }
    /* Polar factors rescaled by the mean singular value ("whitening"). */
    double mean_u = 0, mean_v = 0;
    if (st == LM_OK)
        st = lm__polar_pair(ctx, pcat, d_out, cols, po, &mean_u, acat, cols,
                            d_in, ao, &mean_v);
    if (st == LM_OK)
        lm__gemm(false, false, d_out, d_in, cols, 2.0 * mean_u * mean_v, po,
                 ao, 0.0, out);
    lm_free(ctx, buf);
    return st;
}
