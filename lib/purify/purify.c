/* Subspace purification (PAVE, An et al., arXiv:2510.14697): prune each
 * task vector in the input-weighted subspace of its fine-tuned weight
 * before merging. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "libmerge/projector.h"
#include "libmerge/stats.h"
#include "linalg/linalg.h"
#include "linalg/projector_private.h"
#include "purify/state.h"
#include "stats/lookup.h"

static void factored_free(lm_context *ctx, struct lm__factored *f)
{
    if (!f->borrowed)
        lm_free(ctx, f->u);
    f->u = NULL;
}

/* C~ = G / n + eps I with eps doubled until ||C~^-1 C~ - I||_F < tol;
 * cinv receives C~^-1 and c the regularised matrix. */
static lm_status regularise(lm_context *ctx, const lm_purify_options *o,
                            const double *g, uint64_t rows, size_t d,
                            double *c, double *cinv, double *work,
                            double *eps_used)
{
    double eps = o->epsilon;
    for (int attempt = 0; attempt < 64; attempt++, eps *= 2) {
        for (size_t i = 0; i < d * d; i++)
            c[i] = g[i] / (double)rows;
        for (size_t i = 0; i < d; i++)
            c[i * d + i] += eps;
        double *l = work, *prod = work + d * d;
        lm_status st = lm__cholesky(ctx, c, d, 0.0, l);
        /* Not positive definite: retry with more ridge. Running out of
         * memory (the factorisation's copy) is not a reason to change the
         * regularisation silently. */
        if (st == LM_ERR_OUT_OF_MEMORY)
            return st;
        if (st != LM_OK) {
            lm_context_clear_error(ctx);
            continue;
        }
        memset(cinv, 0, d * d * sizeof(double));
        for (size_t i = 0; i < d; i++)
            cinv[i * d + i] = 1.0;
        LM_TRY(lm__cholesky_solve(ctx, l, d, cinv, d));
        lm__gemm(false, false, d, d, d, 1.0, cinv, c, 0.0, prod);
        double err = 0;
        for (size_t i = 0; i < d; i++)
            for (size_t j = 0; j < d; j++) {
                double e = prod[i * d + j] - (i == j);
                err += e * e;
            }
        if (sqrt(err) < o->tolerance) {
            *eps_used = eps;
            return LM_OK;
        }
    }
    return lm_context_set_error(ctx, LM_ERR_LINALG,
                                "purify: the input covariance stays "
                                "ill-conditioned after 64 doublings of eps");
}

/* Task t's user subspace for tensor `name` (lm_plan_set_subspace), or
 * NULL. */
static const lm_projector *user_subspace(const lm_plan *p, size_t t,
                                         const char *name)
{
    const lm_projector *u = NULL;
    if (lm_plan_subspace_find(p, LM_SUBSPACE_PURIFY, name, t, &u) != LM_OK)
        u = NULL;
    return u;
}

/* SVD of (W_0 + tau) C~ for task t; f->u stays NULL when there are no
 * statistics for (t, name) or the user gave the task's subspace (which
 * then takes no part in the rank allocation). */
static lm_status factor_task(struct lm__purify *pu, const lm_plan *p,
                             size_t t, const char *name, const float *base,
                             const float *delta, size_t m, size_t n,
                             struct lm__factored *f)
{
    lm_context *ctx = p->ctx;
    memset(f, 0, sizeof(*f));
    const double *g;
    size_t d;
    uint64_t rows;
    if (!p->stats || lm__stats_lookup(p->stats, t, name, &g, &d, &rows) ||
        d != n || rows == 0 || user_subspace(p, t, name))
        return LM_OK;
    if (lm__factor_cache_get(pu, name, t, f))
        return LM_OK;
    lm_log(ctx, LM_LOG_DEBUG, "purify: factoring '%s' model %zu", name, t);
    size_t k = m < n ? m : n;
    size_t count = m * k + k + k * n + n * n;
    double *buf = lm__calloc(ctx, count, sizeof(double));
    double *tmp = lm__calloc(ctx, 2 * m * n + n * n + 2 * n * n,
                             sizeof(double));
    lm_status st = buf && tmp ? LM_OK : LM_ERR_OUT_OF_MEMORY;
    if (st == LM_OK) {
        double *w = tmp, *wc = w + m * n, *c = wc + m * n, *work = c + n * n;
        f->u = buf;
        f->s = buf + m * k;
        f->vt = f->s + k;
        f->cinv = f->vt + k * n;
        f->k = k;
        st = regularise(ctx, &pu->opts, g, rows, n, c, f->cinv, work,
                        &f->eps);
        for (size_t i = 0; st == LM_OK && i < m * n; i++)
            w[i] = (double)base[i] + (double)delta[i];
        if (st == LM_OK) {
            lm__gemm(false, false, m, n, n, 1.0, w, c, 0.0, wc);
            st = lm__svd(ctx, wc, m, n, f->u, f->s, f->vt);
        }
    }
    if (st == LM_OK)
        st = lm__factor_cache_put(pu, name, t, f, count * sizeof(double));
    lm_free(ctx, tmp);
    if (st != LM_OK) {
        lm_free(ctx, buf);
        f->u = NULL;
    }
    return st;
}

struct comp {
    double value;
    size_t task;
};

static int by_value(const void *a, const void *b)
{
    const struct comp *x = a, *y = b;
    if (x->value != y->value)
        return x->value < y->value ? -1 : 1;
    return x->task < y->task ? -1 : x->task > y->task;
}

/* Spectral allocation for one layer: remove the globally smallest
 * normalised singular values while the kept fraction stays >= keep, never
 * taking a model below its floor. ranks[t] for tasks with factors. */
static lm_status allocate(lm_context *ctx, const lm_purify_options *o,
                          const struct lm__factored *f, size_t T, size_t *ranks)
{
    size_t full = 0, count = 0, total = 0;
    for (size_t t = 0; t < T; t++)
        if (f[t].u) {
            full = f[t].k;
            count++;
            ranks[t] = full;
        }
    if (!count)
        return LM_OK;
    total = count * full;
    struct comp *c = lm__calloc(ctx, total, sizeof(*c));
    if (!c)
        return LM_ERR_OUT_OF_MEMORY;
    size_t nc = 0;
    for (size_t t = 0; t < T; t++)
        for (size_t i = 0; f[t].u && i < full; i++)
            c[nc++] = (struct comp){
                f[t].s[0] > 0 ? f[t].s[i] / f[t].s[0] : 0.0, t};
    qsort(c, nc, sizeof(*c), by_value);
    long pruned_avg = (long)full - lround((double)full * o->keep);
    long floor_rank = (long)full -
                      lround(o->max_prune_factor * (double)pruned_avg);
    if (floor_rank < 1)
        floor_rank = 1;
    size_t kept = total;
    for (size_t i = 0; i < nc; i++) {
        if ((double)(kept - 1) < o->keep * (double)total)
            break;
        if ((long)ranks[c[i].task] <= floor_rank)
            continue;
        ranks[c[i].task]--;
        kept--;
    }
    lm_free(ctx, c);
    return LM_OK;
}

static lm_status factor_all(struct lm__purify *pu, const lm_plan *p,
                            const struct lm__stage_tensor *x, size_t m,
                            size_t n, struct lm__factored *f)
{
    for (size_t t = 0; t < p->n_models; t++)
        LM_TRY(factor_task(pu, p, t, x->name, x->base, x->deltas[t], m, n,
                           &f[t]));
    return LM_OK;
}

static struct lm__factored *new_factors(const lm_plan *p)
{
    return lm__calloc(p->ctx, p->n_models, sizeof(struct lm__factored));
}

static void free_factors(const lm_plan *p, struct lm__factored *f)
{
    for (size_t t = 0; f && t < p->n_models; t++)
        factored_free(p->ctx, &f[t]);
    lm_free(p->ctx, f);
}

lm_status lm__purify_measure(struct lm__purify *pu, const lm_plan *p,
                             const struct lm__stage_tensor *x)
{
    if (x->ndim != 2)
        return LM_OK;
    size_t m = (size_t)x->shape[0], n = (size_t)x->shape[1];
    struct lm__factored *f = new_factors(p);
    size_t *ranks = lm__calloc(p->ctx, p->n_models, sizeof(size_t));
    lm_status st = f && ranks ? factor_all(pu, p, x, m, n, f)
                              : LM_ERR_OUT_OF_MEMORY;
    lm_purify_options o = lm__purify_options_for(pu, x->name);
    if (st == LM_OK)
        st = allocate(p->ctx, &o, f, p->n_models, ranks);
    if (st == LM_OK) {
        pthread_mutex_lock(&pu->lock);
        for (size_t t = 0; t < p->n_models && t < pu->n_kept; t++)
            if (f[t].u) {
                pu->kept[t] += (double)ranks[t];
                pu->full[t] += (double)f[t].k;
            }
        pthread_mutex_unlock(&pu->lock);
    }
    lm_free(p->ctx, ranks);
    free_factors(p, f);
    return st;
}

/* W' = P D P^T W with W = base + delta, D = diag((s_j / mean s)^polarize),
 * s_j = sqrt(strength_j): what the statistics route computes,
 * U_r S~_r V_r^T C~^-1 = U_r diag(S~_r / S_r) U_r^T W, with the user's P in
 * place of U_r (docs/methods/purify.md, "User subspaces"). delta is
 * replaced by W' - base. */
static lm_status purify_user(const lm_plan *p, const lm_purify_options *o,
                             const char *name, size_t t,
                             const lm_projector *u, const float *base,
                             float *delta, size_t m, size_t n)
{
    size_t r = lm_projector_rank(u);
    if (lm_projector_dim(u) != m)
        return lm_context_set_error(
            p->ctx, LM_ERR_SHAPE,
            "purify: tensor '%s' [%zu, %zu]: the user subspace of model %zu "
            "has dimension %zu; purification's subspace lies in the output "
            "space (dimension %zu)", name, m, n, t, lm_projector_dim(u), m);
    double *buf = lm__calloc(p->ctx, m * n + r * n + r + 1, sizeof(double));
    if (!buf)
        return LM_ERR_OUT_OF_MEMORY;
    double *w = buf, *c = w + m * n, *d = c + r * n;
    const double *basis = lm_projector_basis(u);
    double mean = 0;
    for (size_t j = 0; j < r; j++) {
        d[j] = sqrt(lm__projector_strength(u, j));
        mean += d[j];
    }
    mean /= r ? (double)r : 1.0;
    for (size_t j = 0; j < r; j++)
        d[j] = o->polarize > 0 && mean > 0 ? pow(d[j] / mean, o->polarize)
                                           : 1.0;
    for (size_t i = 0; i < m * n; i++)
        w[i] = (double)base[i] + (double)delta[i];
    lm__gemm(true, false, r, n, m, 1.0, basis, w, 0.0, c); /* P^T W */
    for (size_t j = 0; j < r; j++)
        for (size_t i = 0; i < n; i++)
            c[j * n + i] *= d[j];
    lm__gemm(false, false, m, n, r, 1.0, basis, c, 0.0, w); /* P D P^T W */
    for (size_t i = 0; i < m * n; i++)
        delta[i] = (float)(w[i] - (double)base[i]);
    lm_log(p->ctx, LM_LOG_DEBUG,
           "purify: tensor '%s' model %zu: user subspace, rank %zu of %zu",
           name, t, r, m);
    lm_free(p->ctx, buf);
    return LM_OK;
}

lm_status lm__purify_apply(struct lm__purify *pu, const lm_plan *p,
                           const struct lm__stage_tensor *x, bool *purified)
{
    *purified = false;
    if (x->ndim != 2)
        return LM_OK;
    const char *name = x->name;
    const float *base = x->base;
    float *const *deltas = x->deltas;
    size_t m = (size_t)x->shape[0], n = (size_t)x->shape[1];
    const lm_purify_options opts = lm__purify_options_for(pu, name);
    const lm_purify_options *o = &opts;
    struct lm__factored *f = new_factors(p);
    size_t *ranks = lm__calloc(p->ctx, p->n_models, sizeof(size_t));
    double *a = lm__calloc(p->ctx, m * n * 2 + n * n, sizeof(double));
    lm_status st = f && ranks && a ? factor_all(pu, p, x, m, n, f)
                                   : LM_ERR_OUT_OF_MEMORY;
    if (st == LM_OK && o->allocation == LM_PURIFY_LAYER)
        st = allocate(p->ctx, o, f, p->n_models, ranks);
    for (size_t t = 0; st == LM_OK && t < p->n_models; t++) {
        const lm_projector *u = f[t].u ? NULL : user_subspace(p, t, name);
        if (u) {
            *purified = true;
            st = purify_user(p, o, name, t, u, base, deltas[t], m, n);
            continue;
        }
        if (!f[t].u)
            continue;
        *purified = true;
        size_t k = f[t].k, r;
        if (o->allocation == LM_PURIFY_LAYER) {
            r = ranks[t];
        } else {
            double ratio = o->keep;
            if (o->allocation == LM_PURIFY_MODEL && t < pu->n_kept &&
                pu->full[t] > 0)
                ratio = pu->kept[t] / pu->full[t];
            r = (size_t)lround(ratio * (double)k);
        }
        if (r < 1)
            r = 1;
        if (r > k)
            r = k;
        lm_log(p->ctx, LM_LOG_DEBUG,
               "purify: tensor '%s' model %zu: eps %g, rank %zu of %zu", name,
               t, f[t].eps, r, k);
        /* Every component kept, none re-weighted: W' = W C~ C~^-1 = W
         * exactly, so tau is left as it is. Rebuilding it in f64 would
         * only add rounding, and the SVD family's isotropic merges lift
         * the directions where the task vectors are (near) zero to full
         * weight, where that rounding decides them (keep 1 then moved
         * Iso-CTS's accuracy by up to a point). */
        if (r == k && !(o->polarize > 0))
            continue;
        /* W' = U_r S_r (V_r^T C~^-1); polarize reweights the kept S. */
        double mean = 0;
        for (size_t i = 0; i < r; i++)
            mean += f[t].s[i];
        mean /= (double)r;
        double *us = a, *vc = a + m * n;
        for (size_t i = 0; i < m; i++)
            for (size_t j = 0; j < r; j++) {
                double s = f[t].s[j];
                if (o->polarize > 0 && mean > 0)
                    s *= pow(s / mean, o->polarize);
                us[i * r + j] = f[t].u[i * k + j] * s;
            }
        lm__gemm(false, false, r, n, n, 1.0, f[t].vt, f[t].cinv, 0.0, vc);
        double *w = vc + r * n; /* m*n more: fits as r <= n */
        lm__gemm(false, false, m, n, r, 1.0, us, vc, 0.0, w);
        for (size_t i = 0; i < m * n; i++)
            deltas[t][i] = (float)(w[i] - (double)base[i]);
    }
    lm_free(p->ctx, a);
    lm_free(p->ctx, ranks);
    free_factors(p, f);
    if (st != LM_OK && st != LM_ERR_OUT_OF_MEMORY &&
        !strstr(lm_context_error(p->ctx), name)) {
        char msg[LM_ERROR_CAPACITY];
        lm_context_copy_error(p->ctx, msg, sizeof(msg));
        lm_context_set_error(p->ctx, st, "purify: tensor '%s': %s", name, msg);
    }
    return st;
}
