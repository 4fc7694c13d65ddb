/* ESM's merge of one layer from activation statistics, in the released
 * order of operations (docs/methods/esm.md): each task's essential
 * subspace (esm_subspace.c, by the route the layer's size calls for),
 * projection, inter-task and eigenvalue weighting, concatenation,
 * input-column scaling, rescaled polar factors, product x 2. Memory is
 * estimated against memory_budget before the large allocations. */
#include <math.h>
#include <string.h>

#include "linalg/linalg.h"
#include "linalg/projector_private.h"
#include "linalg/whiten.h"
#include "strategies/esm.h"

/* Everything one task contributes, computed on its own so tasks run in
 * parallel: task t writes columns [off[t], off[t] + kept[t]) of pcat
 * (d_out x cols, room for cap[t] columns), the same rows of acat (not yet
 * divided by the mean norm) and norms[t]. */
struct esm_tasks {
    lm_context *ctx;
    const struct esm_opts *o;
    enum esm_route route;
    uint64_t seed;
    const double *x;
    const double *const *grams;
    const uint64_t *n_rows;
    const lm_projector *const *user;
    const double *rho;
    size_t d_out, d_in, cols;
    const size_t *cap, *off;
    size_t *kept;
    double *pcat, *acat, *norms;
};

/* A user's subspace for the task (lm_plan_set_subspace) in place of the
 * one built from statistics: every direction it has (cap = its rank),
 * the strengths where ESM uses eigenvalues (only their ratios matter),
 * and ||dW||_F for the inter-task weight, which is ||P^T dW|| over a
 * complete orthonormal P, the released norm for pad=complete. */
static lm_status user_subspace(const lm_projector *u,
                               const struct esm_task_in *in, double *p,
                               double *lambda, size_t *kept, double *norm)
{
    size_t r = lm_projector_rank(u);
    memcpy(p, lm_projector_basis(u), in->d_out * r * sizeof(double));
    for (size_t j = 0; j < r; j++)
        lambda[j] = lm__projector_strength(u, j);
    double s2 = 0;
    for (size_t i = 0; i < in->d_out * in->d_in; i++)
        s2 += in->dw[i] * in->dw[i];
    *norm = sqrt(s2);
    *kept = r;
    return LM_OK;
}

static lm_status task_block(void *arg, size_t t)
{
    const struct esm_tasks *w = arg;
    const struct esm_opts *o = w->o;
    size_t d_out = w->d_out, d_in = w->d_in, cap = w->cap[t],
           cols = w->cols, off = w->off[t];
    double *buf = lm__calloc(w->ctx, d_out * cap + 2 * cap + cap * d_in + 1,
                             sizeof(double));
    if (!buf)
        return lm_context_set_error(w->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "esm: out of memory for task %zu", t);
    double *p = buf, *lambda = p + d_out * cap, *e = lambda + cap,
           *a = e + cap;
    const double *dw = w->x + t * d_out * d_in;
    struct esm_task_in in = {dw,    w->grams[t], w->n_rows[t], d_out,
                             d_in,  cap,         w->seed + t};
    size_t k = 0;
    lm_status st = w->user[t] ? user_subspace(w->user[t], &in, p, lambda, &k,
                                              &w->norms[t])
                              : lm__esm_subspace(w->ctx, o, w->route, &in, p,
                                                 lambda, &k, &w->norms[t]);
    if (st != LM_OK) {
        lm_free(w->ctx, buf);
        return st;
    }
    /* Rank-aware: only the directions whose output-shift singular value
     * s_i (sqrt(lambda_i), up to n - 1) is above the task's f32 floor
     * (linalg/whiten.h); lambda is descending, so they lead. A user
     * subspace is taken as given. */
    if (o->whiten == LM_WHITEN_RANK_AWARE && !w->user[t] && k) {
        double tau = lm__whiten_floor(sqrt(lambda[0] > 0 ? lambda[0] : 0),
                                      w->rho[t], d_out, d_in, 0.0);
        size_t above = 0;
        while (above < k &&
               lm__whiten_keep(sqrt(lambda[above] > 0 ? lambda[above] : 0),
                               tau))
            above++;
        k = above;
    }
    w->kept[t] = k;
    /* Pack p to k columns (row stride k; rows only move left). */
    for (size_t r = 1; k < cap && r < d_out; r++)
        memmove(p + r * k, p + r * cap, k * sizeof(double));
    /* A_t = P^T dW on the kept directions; its full-row norm (norms[t],
     * released: not the truncated norm) drives the inter-task weight. */
    lm__gemm(true, false, k, d_in, d_out, 1.0, p, dw, 0.0, a);
    double row_scale = o->inter_task ? pow(w->norms[t], o->norm_power) : 1.0;
    double lmean = 0;
    for (size_t i = 0; i < k; i++)
        lmean += lambda[i];
    lmean /= k ? (double)k : 1.0;
    double emean = 0;
    for (size_t i = 0; i < k; i++) {
        e[i] = o->eig_weighting && lmean > 0
                   ? pow(lambda[i] / lmean, o->eig_power)
                   : 1.0;
        emean += e[i];
    }
    emean /= k ? (double)k : 1.0;
    for (size_t i = 0; i < k; i++)
        e[i] = emean > 0 ? e[i] / emean : 1.0;
    for (size_t r = 0; r < d_out; r++)
        for (size_t j = 0; j < k; j++)
            w->pcat[r * cols + off + j] = p[r * k + j] * e[j];
    for (size_t j = 0; j < k; j++)
        for (size_t c = 0; c < d_in; c++)
            w->acat[(off + j) * d_in + c] = a[j * d_in + c] * row_scale * e[j];
    lm_free(w->ctx, buf);
    return LM_OK;
}

/* Bytes of the concatenation and its two polar factors (d_out x cols and
 * cols x d_in, each with its polar factor, the Gram of its smaller side
 * and the eigensolver's workspace). */
static double layer_bytes(size_t d_out, size_t d_in, size_t cols)
{
    double o = (double)d_out, i = (double)d_in, c = (double)cols;
    double so = o < c ? o : c, si = i < c ? i : c;
    return sizeof(double) * (3.0 * o * c + 3.0 * c * i + 5.0 * so * so +
                             5.0 * si * si);
}

#define GIB (1024.0 * 1024.0 * 1024.0)

/* The route for this layer: the forced one, or the cheapest exact one
 * (gram or output) within the budget, else the randomized one if it fits
 * (and the pad allows it), else an error naming the tensor and the size. */
static lm_status pick_route(lm_context *ctx, const struct esm_opts *o,
                            const char *name, size_t T, size_t d_out,
                            size_t d_in, const uint64_t *n_rows,
                            size_t cap_max, enum esm_route *route)
{
    uint64_t rows = 0, few = UINT64_MAX;
    for (size_t t = 0; t < T; t++) {
        rows = n_rows[t] > rows ? n_rows[t] : rows;
        few = n_rows[t] < few ? n_rows[t] : few;
    }
    /* pad=identity with n < d_out needs every direction of G for the norm:
     * the randomized route has only the top ones. */
    bool randomized_ok = !o->pad_identity || few >= (uint64_t)d_out;
    enum esm_route r = o->route;
    if (r == ESD_AUTO) {
        double g = lm__esm_route_bytes(ESD_GRAM, d_out, d_in, rows, cap_max);
        double out = lm__esm_route_bytes(ESD_OUTPUT, d_out, d_in, rows,
                                         cap_max);
        bool g_ok = lm__esm_route_fits_lapack(ESD_GRAM, d_out, d_in, rows,
                                              cap_max);
        bool o_ok = lm__esm_route_fits_lapack(ESD_OUTPUT, d_out, d_in, rows,
                                              cap_max);
        r = g_ok && (!o_ok || g <= out) ? ESD_GRAM : ESD_OUTPUT;
        double best = r == ESD_GRAM ? g : out;
        if ((!g_ok && !o_ok) || best > o->budget) {
            if (randomized_ok &&
                lm__esm_route_fits_lapack(ESD_RANDOMIZED, d_out, d_in, rows,
                                          cap_max) &&
                lm__esm_route_bytes(ESD_RANDOMIZED, d_out, d_in, rows,
                                    cap_max) <= o->budget)
                r = ESD_RANDOMIZED;
            else if (!g_ok && !o_ok)
                return lm_context_set_error(
                    ctx, LM_ERR_UNSUPPORTED,
                    "esm: tensor '%s' (%zu x %zu): no essential-subspace "
                    "route fits the LAPACK integer limits; lower rank or "
                    "route the tensor elsewhere (tsv_pattern, mean_pattern)",
                    name, d_out, d_in);
            else
                return lm_context_set_error(
                    ctx, LM_ERR_OUT_OF_RANGE,
                    "esm: tensor '%s' (%zu x %zu, %zu tasks): the cheapest "
                    "essential-subspace route (%s) needs %.2f GiB per task, "
                    "above memory_budget %.2f GiB; raise memory_budget, "
                    "lower rank (randomized route) or route the tensor "
                    "elsewhere (tsv_pattern, mean_pattern)",
                    name, d_out, d_in, T, lm__esm_route_name(r), best / GIB,
                    o->budget / GIB);
        }
        *route = r;
        return LM_OK;
    }
    if (r == ESD_RANDOMIZED && !randomized_ok)
        return lm_context_set_error(
            ctx, LM_ERR_UNSUPPORTED,
            "esm: tensor '%s': esd_route=randomized cannot reproduce "
            "pad=identity with fewer calibration rows (%llu) than outputs "
            "(%zu)", name, (unsigned long long)few, d_out);
    if (!lm__esm_route_fits_lapack(r, d_out, d_in, rows, cap_max))
        return lm_context_set_error(
            ctx, LM_ERR_UNSUPPORTED,
            "esm: tensor '%s' (%zu x %zu): esd_route=%s exceeds the "
            "LAPACK integer limits; use esd_route=auto", name, d_out, d_in,
            lm__esm_route_name(r));
    double need = lm__esm_route_bytes(r, d_out, d_in, rows, cap_max);
    if (need > o->budget)
        return lm_context_set_error(
            ctx, LM_ERR_OUT_OF_RANGE,
            "esm: tensor '%s' (%zu x %zu): esd_route=%s needs %.2f GiB per "
            "task, above memory_budget %.2f GiB", name, d_out, d_in,
            lm__esm_route_name(r), need / GIB, o->budget / GIB);
    *route = r;
    return LM_OK;
}

lm_status lm__esm_layer(lm_context *ctx, const struct esm_opts *o,
                        const char *name, uint64_t seed, const double *x,
                        const double *const *grams, const uint64_t *n_rows,
                        const lm_projector *const *user, const double *rho,
                        size_t T, size_t d_out, size_t d_in, double *out)
{
    size_t k = o->rank ? o->rank : d_out / T;
    if (k < 1)
        k = 1;
    if (k > d_out)
        k = d_out;
    /* Room per task: rank G <= min(n, d_in, d_out), so at most that many
     * directions survive (the released k can exceed it at lm_head sizes). */
    size_t *cap = lm__calloc(ctx, 3 * T, sizeof(size_t));
    uint64_t *stat_rows = lm__calloc(ctx, T, sizeof(uint64_t));
    if (!cap || !stat_rows) {
        lm_free(ctx, cap);
        lm_free(ctx, stat_rows);
        return LM_ERR_OUT_OF_MEMORY;
    }
    size_t *off = cap + T, *kept = off + T, cols = 0, cap_max = 0;
    size_t n_stat = 0; /* tasks whose subspace comes from statistics */
    for (size_t t = 0; t < T; t++) {
        size_t c;
        if (user[t]) {
            c = lm_projector_rank(user[t]);
        } else {
            c = k < d_in ? k : d_in;
            if (n_rows[t] < (uint64_t)c)
                c = (size_t)n_rows[t];
            cap_max = c > cap_max ? c : cap_max;
            stat_rows[n_stat++] = n_rows[t];
        }
        cap[t] = c;
        off[t] = cols;
        cols += c;
    }
    /* The route (and its memory estimate) concerns only the tasks whose
     * subspace is computed here. */
    enum esm_route route = ESD_GRAM;
    lm_status st = n_stat ? pick_route(ctx, o, name, n_stat, d_out, d_in,
                                       stat_rows, cap_max, &route)
                          : LM_OK;
    lm_free(ctx, stat_rows);
    double need = layer_bytes(d_out, d_in, cols);
    if (st == LM_OK && need > o->budget)
        st = lm_context_set_error(
            ctx, LM_ERR_OUT_OF_RANGE,
            "esm: tensor '%s' (%zu x %zu): concatenating %zu tasks' "
            "directions (%zu columns) needs %.2f GiB, above memory_budget "
            "%.2f GiB; lower rank or raise memory_budget", name, d_out, d_in,
            T, cols, need / GIB, o->budget / GIB);
    double *buf = st == LM_OK ? lm__calloc(ctx, d_out * cols * 2 +
                                                    cols * d_in * 2 + T +
                                                    d_in,
                                           sizeof(double))
                              : NULL;
    if (st == LM_OK && !buf)
        st = LM_ERR_OUT_OF_MEMORY;
    if (st != LM_OK) {
        lm_free(ctx, cap);
        return st;
    }
    double *pcat = buf, *po = pcat + d_out * cols, *acat = po + d_out * cols,
           *ao = acat + cols * d_in, *norms = ao + cols * d_in,
           *colnorm = norms + T;
    struct esm_tasks tasks = {ctx,  o,     route, seed, x,    grams,
                              n_rows, user, rho, d_out, d_in, cols, cap,
                              off,  kept,  pcat, acat, norms};
    st = lm__parallel_for(ctx, T, task_block, &tasks);
    /* Close the gaps tasks with fewer directions than room left: columns
     * of pcat and rows of acat move left, order kept. */
    size_t used = 0;
    for (size_t t = 0; st == LM_OK && t < T; t++) {
        for (size_t r = 0; r < d_out; r++)
            memmove(pcat + r * cols + used, pcat + r * cols + off[t],
                    kept[t] * sizeof(double));
        memmove(acat + used * d_in, acat + off[t] * d_in,
                kept[t] * d_in * sizeof(double));
        used += kept[t];
    }
    if (st == LM_OK && used < cols) {
        for (size_t r = 0; r < d_out; r++)
            memmove(pcat + r * used, pcat + r * cols, used * sizeof(double));
    }
    if (st == LM_OK && used == 0) { /* no task moved this layer's outputs */
        memset(out, 0, d_out * d_in * sizeof(double));
        lm_free(ctx, buf);
        lm_free(ctx, cap);
        return LM_OK;
    }
    cols = used;
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
    /* Polar factors rescaled by the mean singular value ("whitening");
     * rank-aware: against the floor of the least precise task's inputs. */
    double mean_u = 0, mean_v = 0, eps_cat = 0;
    for (size_t t = 0; o->whiten == LM_WHITEN_RANK_AWARE && t < T; t++)
        eps_cat = rho[t] > eps_cat ? rho[t] : eps_cat;
    if (st == LM_OK)
        st = lm__polar_pair_whiten(ctx, o->whiten, eps_cat, 0.0, pcat, d_out,
                                   cols, po, &mean_u, acat, cols, d_in, ao,
                                   &mean_v);
    if (st == LM_OK)
        lm__gemm(false, false, d_out, d_in, cols, 2.0 * mean_u * mean_v, po,
                 ao, 0.0, out);
    lm_free(ctx, buf);
    lm_free(ctx, cap);
    return st;
}
