/* ESM's merge of one layer from activation statistics, in the released
 * order of operations (docs/methods/esm.md): each task's essential
 * subspace (esm_subspace.c, by the route the layer's size calls for),
 * projection, inter-task and eigenvalue weighting, concatenation,
 * input-column scaling, rescaled polar factors, product x 2. The whole
 * memory of a layer is estimated against memory_budget before anything
 * large is allocated (lm__esm_layer_check, called by the strategy's
 * check_tensor before the library reads the tensor). */
#include <math.h>
#include <stdio.h>
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
    const float *const *deltas;
    const double *weights;
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

/* Bytes task_block allocates besides its route: the task's weighted
 * delta in f64, P, lambda, weights and A. */
static double task_block_bytes(size_t d_out, size_t d_in, size_t cap)
{
    double o = (double)d_out, i = (double)d_in, c = (double)cap;
    return sizeof(double) * (o * i + o * c + 2.0 * c + c * i + 1.0);
}

static lm_status task_block(void *arg, size_t t)
{
    const struct esm_tasks *w = arg;
    const struct esm_opts *o = w->o;
    size_t d_out = w->d_out, d_in = w->d_in, cap = w->cap[t],
           cols = w->cols, off = w->off[t], n = d_out * d_in;
    /* The task's delta is widened here, one task at a time, instead of a
     * stack of all T in f64 (T d_out d_in 8 bytes: 7.8 GiB for a
     * 32000 x 4096 head with 8 tasks); same values, same order. */
    double *buf = lm__calloc(w->ctx, n + d_out * cap + 2 * cap + cap * d_in + 1,
                             sizeof(double));
    if (!buf)
        return lm_context_set_error(w->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "esm: out of memory for task %zu", t);
    double *dw = buf + d_out * cap + 2 * cap + cap * d_in + 1;
    for (size_t i = 0; i < n; i++)
        dw[i] = w->weights[t] * (double)w->deltas[t][i];
    double *p = buf, *lambda = p + d_out * cap, *e = lambda + cap,
           *a = e + cap;
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

/* The layer's shape: per task its room (cap: directions that can
 * survive, rank G <= min(n, d_in, d_out); a user subspace's rank) and
 * column offset, the total columns, the largest cap over the tasks with
 * statistics and their row counts. */
struct layer_shape {
    size_t *cap, *off, *kept; /* T each, one allocation */
    size_t cols, cap_max, n_stat;
    uint64_t rows_max, rows_min;
};

static lm_status shape_of(lm_context *ctx, const struct esm_opts *o,
                          const uint64_t *n_rows,
                          const lm_projector *const *user, size_t T,
                          size_t d_out, size_t d_in, struct layer_shape *ls)
{
    size_t k = o->rank ? o->rank : d_out / T;
    if (k < 1)
        k = 1;
    if (k > d_out)
        k = d_out;
    *ls = (struct layer_shape){0};
    ls->rows_min = UINT64_MAX;
    ls->cap = lm__calloc(ctx, 3 * T, sizeof(size_t));
    if (!ls->cap)
        return LM_ERR_OUT_OF_MEMORY;
    ls->off = ls->cap + T;
    ls->kept = ls->off + T;
    for (size_t t = 0; t < T; t++) {
        size_t c;
        if (user[t]) {
            c = lm_projector_rank(user[t]);
        } else {
            c = k < d_in ? k : d_in;
            if (n_rows[t] < (uint64_t)c)
                c = (size_t)n_rows[t];
            ls->cap_max = c > ls->cap_max ? c : ls->cap_max;
            ls->rows_max = n_rows[t] > ls->rows_max ? n_rows[t] : ls->rows_max;
            ls->rows_min = n_rows[t] < ls->rows_min ? n_rows[t] : ls->rows_min;
            ls->n_stat++;
        }
        ls->cap[t] = c;
        ls->off[t] = ls->cols;
        ls->cols += c;
    }
    return LM_OK;
}

#define GIB (1024.0 * 1024.0 * 1024.0)

/* The estimate of one route, in bytes, and its parts for the message. */
struct estimate {
    double unit;  /* one thread's worst case */
    double need;  /* threads x unit */
    double layer, task;
};

/* One thread holds at most one tensor (the library's bytes, ESM's own,
 * the concatenation) and runs one task of it, or runs one task of
 * another tensor (parallel tasks borrow idle threads): threads x (tensor
 * + its largest task) bounds everything in flight. */
static struct estimate estimate_route(const struct esm_opts *o,
                                      const struct esm_mem *mem,
                                      const struct layer_shape *ls,
                                      enum esm_route route, size_t d_out,
                                      size_t d_in, const size_t *cap,
                                      size_t T)
{
    struct estimate e = {0};
    double biggest_cap = 0;
    for (size_t t = 0; t < T; t++)
        biggest_cap = (double)cap[t] > biggest_cap ? (double)cap[t]
                                                   : biggest_cap;
    e.task = task_block_bytes(d_out, d_in, (size_t)biggest_cap);
    if (ls->n_stat) {
        e.task += lm__esm_route_bytes(route, d_out, d_in, ls->rows_max,
                                      ls->cap_max);
        /* pad=identity's norm with n < d_out: P_r^T dW, r <= min(n, d_in). */
        if (o->pad_identity && ls->rows_min < (uint64_t)d_out) {
            double r = ls->rows_max < (uint64_t)d_in ? (double)ls->rows_max
                                                     : (double)d_in;
            e.task += sizeof(double) * r * (double)d_in;
        }
    }
    e.layer = layer_bytes(d_out, d_in, ls->cols) +
              sizeof(double) * (double)(T + d_in) + 4.0 * sizeof(size_t) * T;
    e.unit = mem->held + mem->own + e.layer + e.task;
    e.need = (double)(mem->threads > 0 ? mem->threads : 1) * e.unit;
    return e;
}

/* "12.3 MiB": bytes in the unit that keeps them readable. */
static const char *human(double bytes, char *buf, size_t size)
{
    if (bytes >= GIB)
        snprintf(buf, size, "%.2f GiB", bytes / GIB);
    else if (bytes >= 1024.0 * 1024.0)
        snprintf(buf, size, "%.2f MiB", bytes / (1024.0 * 1024.0));
    else
        snprintf(buf, size, "%.1f KiB", bytes / 1024.0);
    return buf;
}

static lm_status over_budget(lm_context *ctx, const struct esm_opts *o,
                             const struct esm_mem *mem, const char *name,
                             size_t T, size_t d_out, size_t d_in,
                             enum esm_route route, bool forced,
                             const struct estimate *e)
{
    char b[6][32];
    return lm_context_set_error(
        ctx, LM_ERR_OUT_OF_RANGE,
        "esm: tensor '%s' (%zu x %zu, %zu tasks): %s%s needs %.0f bytes "
        "(%s = %d thread%s x [%s the library's inputs + %s ESM's buffers + "
        "%s the concatenation + %s one task]), above memory_budget %.0f "
        "bytes (%s%s); raise memory_budget, lower threads or rank%s, or "
        "route the tensor elsewhere (tsv_pattern, mean_pattern)",
        name, d_out, d_in, T, forced ? "esd_route=" : "the cheapest route ",
        lm__esm_route_name(route), e->need, human(e->need, b[0], 32),
        mem->threads, mem->threads == 1 ? "" : "s",
        human(mem->held, b[1], 32), human(mem->own, b[2], 32),
        human(e->layer, b[3], 32), human(e->task, b[4], 32), o->budget,
        human(o->budget, b[5], 32),
        o->budget_auto ? ", this machine's memory" : "",
        forced ? "" : " (randomized route)");
}

lm_status lm__esm_layer_check(lm_context *ctx, const struct esm_opts *o,
                              const struct esm_mem *mem, const char *name,
                              const uint64_t *n_rows,
                              const lm_projector *const *user, size_t T,
                              size_t d_out, size_t d_in,
                              enum esm_route *route)
{
    struct layer_shape ls;
    LM_TRY(shape_of(ctx, o, n_rows, user, T, d_out, d_in, &ls));
    size_t cap_max = ls.cap_max;
    uint64_t rows = ls.rows_max;
    /* pad=identity with n < d_out needs every direction of G for the norm:
     * the randomized route has only the top ones. */
    bool randomized_ok = !o->pad_identity || ls.rows_min >= (uint64_t)d_out;
    enum esm_route r = o->route;
    lm_status st = LM_OK;
    struct estimate e;
    if (!ls.n_stat) { /* every subspace is the user's: no route */
        r = ESD_GRAM;
        e = estimate_route(o, mem, &ls, r, d_out, d_in, ls.cap, T);
        if (e.need > o->budget)
            st = over_budget(ctx, o, mem, name, T, d_out, d_in, r, true, &e);
    } else if (r == ESD_AUTO) {
        double g = lm__esm_route_bytes(ESD_GRAM, d_out, d_in, rows, cap_max);
        double out = lm__esm_route_bytes(ESD_OUTPUT, d_out, d_in, rows,
                                         cap_max);
        bool g_ok = lm__esm_route_fits_lapack(ESD_GRAM, d_out, d_in, rows,
                                              cap_max);
        bool o_ok = lm__esm_route_fits_lapack(ESD_OUTPUT, d_out, d_in, rows,
                                              cap_max);
        r = g_ok && (!o_ok || g <= out) ? ESD_GRAM : ESD_OUTPUT;
        e = estimate_route(o, mem, &ls, r, d_out, d_in, ls.cap, T);
        if ((!g_ok && !o_ok) || e.need > o->budget) {
            struct estimate er = estimate_route(o, mem, &ls, ESD_RANDOMIZED,
                                                d_out, d_in, ls.cap, T);
            if (randomized_ok &&
                lm__esm_route_fits_lapack(ESD_RANDOMIZED, d_out, d_in, rows,
                                          cap_max) &&
                er.need <= o->budget)
                r = ESD_RANDOMIZED;
            else if (!g_ok && !o_ok)
                st = lm_context_set_error(
                    ctx, LM_ERR_UNSUPPORTED,
                    "esm: tensor '%s' (%zu x %zu): no essential-subspace "
                    "route fits the LAPACK integer limits; lower rank or "
                    "route the tensor elsewhere (tsv_pattern, mean_pattern)",
                    name, d_out, d_in);
            else
                st = over_budget(ctx, o, mem, name, T, d_out, d_in, r, false,
                                 &e);
        }
    } else if (r == ESD_RANDOMIZED && !randomized_ok) {
        st = lm_context_set_error(
            ctx, LM_ERR_UNSUPPORTED,
            "esm: tensor '%s': esd_route=randomized cannot reproduce "
            "pad=identity with fewer calibration rows (%llu) than outputs "
            "(%zu)", name, (unsigned long long)ls.rows_min, d_out);
    } else if (!lm__esm_route_fits_lapack(r, d_out, d_in, rows, cap_max)) {
        st = lm_context_set_error(
            ctx, LM_ERR_UNSUPPORTED,
            "esm: tensor '%s' (%zu x %zu): esd_route=%s exceeds the "
            "LAPACK integer limits; use esd_route=auto", name, d_out, d_in,
            lm__esm_route_name(r));
    } else {
        e = estimate_route(o, mem, &ls, r, d_out, d_in, ls.cap, T);
        if (e.need > o->budget)
            st = over_budget(ctx, o, mem, name, T, d_out, d_in, r, true, &e);
    }
    lm_free(ctx, ls.cap);
    if (st == LM_OK)
        *route = r;
    return st;
}

lm_status lm__esm_layer(lm_context *ctx, const struct esm_opts *o,
                        const struct esm_mem *mem, const char *name,
                        uint64_t seed, const float *const *deltas,
                        const double *weights, const double *const *grams,
                        const uint64_t *n_rows,
                        const lm_projector *const *user, const double *rho,
                        size_t T, size_t d_out, size_t d_in, double *out)
{
    /* The same decision check_tensor took before the inputs were read. */
    enum esm_route route = ESD_GRAM;
    LM_TRY(lm__esm_layer_check(ctx, o, mem, name, n_rows, user, T, d_out,
                               d_in, &route));
    struct layer_shape ls;
    LM_TRY(shape_of(ctx, o, n_rows, user, T, d_out, d_in, &ls));
    size_t *cap = ls.cap, *off = ls.off, *kept = ls.kept, cols = ls.cols;
    double *buf = lm__calloc(ctx, d_out * cols * 2 + cols * d_in * 2 + T +
                                      d_in,
                             sizeof(double));
    lm_status st = buf ? LM_OK : LM_ERR_OUT_OF_MEMORY;
    if (st != LM_OK) {
        lm_free(ctx, cap);
        return st;
    }
    double *pcat = buf, *po = pcat + d_out * cols, *acat = po + d_out * cols,
           *ao = acat + cols * d_in, *norms = ao + cols * d_in,
           *colnorm = norms + T;
    struct esm_tasks tasks = {ctx,    o,      route, seed,  deltas, weights,
                              grams,  n_rows, user,  rho,   d_out,  d_in,
                              cols,   cap,    off,   kept,  pcat,   acat,
                              norms};
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
    /* combine=spectral: A_cat's rows to unit norm, their norms kept for
     * after the polar step. */
    double *rownorm = NULL;
    if (st == LM_OK && o->spectral) {
        rownorm = lm__calloc(ctx, cols ? cols : 1, sizeof(double));
        if (!rownorm)
            st = LM_ERR_OUT_OF_MEMORY;
        for (size_t r = 0; st == LM_OK && r < cols; r++) {
            double s2 = 0;
            for (size_t c = 0; c < d_in; c++)
                s2 += acat[r * d_in + c] * acat[r * d_in + c];
            rownorm[r] = sqrt(s2);
            for (size_t c = 0; rownorm[r] > 0 && c < d_in; c++)
                acat[r * d_in + c] /= rownorm[r];
        }
    }
    /* Polar factors rescaled by the mean singular value ("whitening");
     * rank-aware: against the floor of the least precise task's inputs. */
    double mean_u = 0, mean_v = 0, eps_cat = 0;
    for (size_t t = 0; o->whiten == LM_WHITEN_RANK_AWARE && t < T; t++)
        eps_cat = rho[t] > eps_cat ? rho[t] : eps_cat;
    if (st == LM_OK)
        st = lm__polar_pair_whiten(ctx, o->whiten, eps_cat, 0.0, LM_SVD_TOL,
                                   pcat, d_out, cols, po, &mean_u, acat,
                                   cols, d_in, ao, &mean_v, NULL);
    if (st == LM_OK && o->spectral) {
        /* P_o diag(row norms) A_o: each direction keeps its weight, as
         * TSV-M keeps each singular value between its polar factors. */
        for (size_t r = 0; r < cols; r++)
            for (size_t c = 0; c < d_in; c++)
                ao[r * d_in + c] *= rownorm[r];
        lm__gemm(false, false, d_out, d_in, cols, 1.0, po, ao, 0.0, out);
    } else if (st == LM_OK) {
        lm__gemm(false, false, d_out, d_in, cols, 2.0 * mean_u * mean_v, po,
                 ao, 0.0, out);
    }
    lm_free(ctx, rownorm);
    lm_free(ctx, buf);
    lm_free(ctx, cap);
    return st;
}
