/* NSC merging state: per-(module, task) coefficients over cached LoRA
 * factors, the null-space ratio and its gradient, the factored coefficient
 * gradient and the AdamW update. The SPSA driver is in spsa.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nsc/nsc_internal.h"

static lm_status check_options(lm_context *ctx, const lm_nsc_options *o)
{
    if (o->struct_size < sizeof(lm_nsc_options))
        return lm_context_set_error(ctx, LM_ERR_ABI,
                                    "nsc: options struct_size %u too small",
                                    o->struct_size);
    const char *bad = NULL;
    if (!(o->lr > 0) || !isfinite(o->lr))
        bad = "lr must be positive";
    else if (!(o->beta1 >= 0 && o->beta1 < 1) || !(o->beta2 >= 0 && o->beta2 < 1))
        bad = "betas must be in [0, 1)";
    else if (!(o->adam_eps > 0) || !(o->weight_decay >= 0) || !(o->ridge >= 0))
        bad = "adam_eps must be positive, weight_decay and ridge >= 0";
    else if (!isfinite(o->init))
        bad = "init must be finite";
    else if (isnan(o->lambda_min) || isnan(o->lambda_max) ||
             !(o->lambda_min <= o->lambda_max) || o->lambda_min == HUGE_VAL ||
             o->lambda_max == -HUGE_VAL)
        bad = "need lambda_min <= lambda_max (not NaN)";
    else if (!(o->trust_radius > 0))
        bad = "trust_radius must be positive (HUGE_VAL: none)";
    if (bad)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_RANGE, "nsc: %s", bad);
    return LM_OK;
}

static const char *module_name(const void *table, size_t i)
{
    return ((const struct nsc_module *)table)[i].name;
}

static size_t find_module(const lm_nsc *n, const char *name)
{
    return lm__name_set_find(&n->names, name, module_name, n->modules);
}

static struct nsc_module *find_or_add(lm_nsc *n, const char *name,
                                      int64_t d_out, int64_t d_in,
                                      lm_status *st)
{
    size_t found = find_module(n, name);
    if (found != SIZE_MAX) {
        struct nsc_module *m = &n->modules[found];
        if (m->d_out != d_out || m->d_in != d_in) {
            *st = lm_context_set_error(
                n->ctx, LM_ERR_SHAPE,
                "nsc: module '%s' is [%lld, %lld] in one adapter and "
                "[%lld, %lld] in another", name, (long long)m->d_out,
                (long long)m->d_in, (long long)d_out, (long long)d_in);
            return NULL;
        }
        return m;
    }
    struct nsc_module *room = lm__reserve(n->ctx, n->modules, &n->cap,
                                          n->n_modules, sizeof(*n->modules), 8);
    if (!room) {
        *st = LM_ERR_OUT_OF_MEMORY;
        return NULL;
    }
    n->modules = room;
    struct nsc_module *m = &n->modules[n->n_modules];
    memset(m, 0, sizeof(*m));
    m->name = lm__strdup(n->ctx, name);
    m->tasks = lm__calloc(n->ctx, n->n_tasks, sizeof(*m->tasks));
    m->coef = lm__calloc(n->ctx, 5 * n->n_tasks, sizeof(double));
    if (!m->name || !m->tasks || !m->coef ||
        lm__name_set_add(n->ctx, &n->names, n->n_modules, module_name,
                         n->modules) != LM_OK) {
        lm_free(n->ctx, m->name);
        lm_free(n->ctx, m->tasks);
        lm_free(n->ctx, m->coef);
        *st = LM_ERR_OUT_OF_MEMORY;
        return NULL;
    }
    m->d_out = d_out;
    m->d_in = d_in;
    m->grad = m->coef + n->n_tasks;
    m->adam_m = m->grad + n->n_tasks;
    m->adam_v = m->adam_m + n->n_tasks;
    m->centre = m->adam_v + n->n_tasks;
    n->n_modules++;
    return m;
}

/* A Cholesky factor whose smallest pivot is negligible against the largest
 * means A A^T (plus ridge) is singular to working precision. */
static bool well_conditioned(const double *l, size_t r)
{
    double lo = INFINITY, hi = 0;
    for (size_t i = 0; i < r; i++) {
        double p = l[i * r + i] * l[i * r + i];
        lo = p < lo ? p : lo;
        hi = p > hi ? p : hi;
    }
    return hi > 0 && lo > 1e-14 * hi;
}

/* Copies A and B to f64 and caches (A A^T + ridge I)^-1. */
static lm_status add_factor(lm_nsc *n, struct nsc_module *m, size_t task,
                            const char *name, const lm_tensor *a,
                            const lm_tensor *b, double scale)
{
    lm_context *ctx = n->ctx;
    size_t r = (size_t)lm_tensor_dim(a, 0), d_in = (size_t)m->d_in,
           d_out = (size_t)m->d_out;
    struct nsc_factor *f = &m->tasks[task];
    if (f->a)
        return lm_context_set_error(ctx, LM_ERR_INVALID_ARGUMENT,
                                    "nsc: adapter %zu targets '%s' twice",
                                    task, name);
    double *buf = lm__calloc(ctx, r * d_in + d_out * r + 2 * r * r,
                             sizeof(double));
    float *tmp = lm__calloc(ctx, r * d_in > d_out * r ? r * d_in : d_out * r,
                            sizeof(float));
    lm_status st = buf && tmp ? LM_OK : LM_ERR_OUT_OF_MEMORY;
    if (st == LM_OK)
        st = lm__read_f32(ctx, a, tmp);
    if (st == LM_OK) {
        lm__f32_to_f64(tmp, buf, r * d_in);
        st = lm__read_f32(ctx, b, tmp);
    }
    if (st == LM_OK) {
        lm__f32_to_f64(tmp, buf + r * d_in, d_out * r);
        double *aat = buf + r * d_in + d_out * r, *ginv = aat + r * r;
        lm__gemm(false, true, r, r, d_in, 1.0, buf, buf, 0.0, aat);
        double *l = lm__calloc(ctx, r * r, sizeof(double));
        st = l ? lm__cholesky(ctx, aat, r, n->opts.ridge, l)
               : LM_ERR_OUT_OF_MEMORY;
        if (st == LM_OK && !well_conditioned(l, r))
            st = LM_ERR_LINALG;
        if (st == LM_OK) {
            for (size_t i = 0; i < r; i++)
                ginv[i * r + i] = 1.0;
            st = lm__cholesky_solve(ctx, l, r, ginv, r);
        } else if (st != LM_ERR_OUT_OF_MEMORY) {
            lm_context_clear_error(ctx);
            st = lm_context_set_error(ctx, LM_ERR_LINALG,
                                      "nsc: adapter %zu, module '%s': A A^T "
                                      "is singular (rank-deficient lora_A)",
                                      task, name);
        }
        lm_free(ctx, l);
    }
    lm_free(ctx, tmp);
    if (st != LM_OK) {
        lm_free(ctx, buf);
        return st;
    }
    f->r = r;
    f->scale = scale;
    f->a = buf;
    f->b = buf + r * d_in;
    f->ginv = buf + r * d_in + d_out * r + r * r;
    m->coef[task] = m->centre[task] = n->opts.init;
    return LM_OK;
}

lm_status lm_nsc_create(lm_context *ctx, const lm_lora *const *adapters,
                        size_t n_tasks, const lm_nsc_options *options,
                        lm_nsc **out)
{
    if (!ctx || !adapters || !n_tasks || !out)
        return LM_ERR_INVALID_ARGUMENT;
    *out = NULL;
    lm_nsc_options o = LM_NSC_OPTIONS_INIT;
    if (options) {
        LM_TRY(check_options(ctx, options));
        o = *options;
        o.struct_size = sizeof(o);
    }
    if (o.init < 0)
        o.init = 0.4;
    if (o.init < o.lambda_min || o.init > o.lambda_max)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_RANGE,
                                    "nsc: init %g is outside [%g, %g] "
                                    "(lambda_min, lambda_max)", o.init,
                                    o.lambda_min, o.lambda_max);
    lm_nsc *n = lm__calloc(ctx, 1, sizeof(*n));
    if (!n)
        return LM_ERR_OUT_OF_MEMORY;
    n->ctx = ctx;
    n->opts = o;
    n->n_tasks = n_tasks;
    n->obs = lm__calloc(ctx, 2 * n_tasks, sizeof(double));
    lm_status st = n->obs ? LM_OK : LM_ERR_OUT_OF_MEMORY;
    if (st == LM_OK)
        n->obs_rows = n->obs + n_tasks;
    if (st == LM_OK && pthread_mutex_init(&n->lock, NULL) != 0)
        st = LM_ERR_OUT_OF_MEMORY;
    else if (st == LM_OK)
        n->lock_ready = true;
    for (size_t t = 0; st == LM_OK && t < n_tasks; t++) {
        if (!adapters[t]) {
            st = lm_context_set_error(ctx, LM_ERR_INVALID_ARGUMENT,
                                      "nsc: adapter %zu is NULL", t);
            break;
        }
        for (size_t i = 0; st == LM_OK && i < lm_lora_count(adapters[t]);
             i++) {
            const char *name;
            const lm_tensor *a, *b;
            double scale;
            st = lm_lora_at(adapters[t], i, &name, &a, &b, &scale);
            if (st != LM_OK)
                break;
            /* Its buffers are [out, in]; a Conv1D target is [in, out]. */
            if (lm_lora_is_transposed(adapters[t], name)) {
                st = lm_context_set_error(ctx, LM_ERR_UNSUPPORTED,
                                          "nsc: adapter %zu targets '%s' "
                                          "with fan_in_fan_out (a [in, out] "
                                          "weight), which NSC does not "
                                          "support yet", t, name);
                break;
            }
            struct nsc_module *m = find_or_add(n, name, lm_tensor_dim(b, 0),
                                               lm_tensor_dim(a, 1), &st);
            if (m)
                st = add_factor(n, m, t, name, a, b, scale);
        }
    }
    if (st != LM_OK) {
        lm_nsc_destroy(n);
        return st;
    }
    *out = n;
    return LM_OK;
}

void lm_nsc_destroy(lm_nsc *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->n_modules; i++) {
        struct nsc_module *m = &n->modules[i];
        for (size_t t = 0; t < n->n_tasks; t++)
            lm_free(n->ctx, m->tasks[t].a);
        lm_free(n->ctx, m->tasks);
        lm_free(n->ctx, m->coef);
        lm_free(n->ctx, m->name);
    }
    lm_free(n->ctx, n->modules);
    lm__name_set_free(n->ctx, &n->names);
    lm_free(n->ctx, n->obs);
    if (n->lock_ready)
        pthread_mutex_destroy(&n->lock);
    lm_free(n->ctx, n);
}

size_t lm_nsc_task_count(const lm_nsc *n) { return n ? n->n_tasks : 0; }
size_t lm_nsc_module_count(const lm_nsc *n) { return n ? n->n_modules : 0; }

const char *lm_nsc_module_at(const lm_nsc *n, size_t i, int64_t *d_out,
                               int64_t *d_in)
{
    if (!n || i >= n->n_modules)
        return NULL;
    if (d_out)
        *d_out = n->modules[i].d_out;
    if (d_in)
        *d_in = n->modules[i].d_in;
    return n->modules[i].name;
}

lm_status lm_nsc_module_find(const lm_nsc *n, const char *name,
                              size_t *index)
{
    if (!n || !name || !index)
        return LM_ERR_INVALID_ARGUMENT;
    size_t i = find_module(n, name);
    if (i != SIZE_MAX) {
        *index = i;
        return LM_OK;
    }
    return lm_context_set_error(n->ctx, LM_ERR_NOT_FOUND,
                                "nsc: no adapter targets '%s'", name);
}

lm_status lm__nsc_module(const lm_nsc *n, size_t i, struct nsc_module **m)
{
    if (!n)
        return LM_ERR_INVALID_ARGUMENT;
    if (i >= n->n_modules)
        return lm_context_set_error(n->ctx, LM_ERR_OUT_OF_RANGE,
                                    "nsc: module %zu of %zu", i,
                                    n->n_modules);
    *m = &n->modules[i];
    return LM_OK;
}

lm_status lm_nsc_get_lambdas(const lm_nsc *n, size_t i, double *lambdas)
{
    struct nsc_module *m = NULL;
    if (!lambdas)
        return LM_ERR_INVALID_ARGUMENT;
    LM_TRY(lm__nsc_module(n, i, &m));
    for (size_t t = 0; t < n->n_tasks; t++)
        lambdas[t] = m->tasks[t].a ? m->coef[t] : 0.0;
    return LM_OK;
}

lm_status lm_nsc_set_lambdas(lm_nsc *n, size_t i, const double *lambdas)
{
    struct nsc_module *m = NULL;
    if (!lambdas)
        return LM_ERR_INVALID_ARGUMENT;
    LM_TRY(lm__nsc_module(n, i, &m));
    for (size_t t = 0; t < n->n_tasks; t++)
        if (!isfinite(lambdas[t]))
            return lm_context_set_error(n->ctx, LM_ERR_NONFINITE,
                                        "nsc: lambda %zu of '%s' is not "
                                        "finite", t, m->name);
    for (size_t t = 0; t < n->n_tasks; t++)
        if (m->tasks[t].a)
            m->coef[t] = m->centre[t] = lambdas[t];
    return LM_OK;
}

lm_status lm_nsc_set_frozen(lm_nsc *n, size_t i, int frozen)
{
    struct nsc_module *m = NULL;
    LM_TRY(lm__nsc_module(n, i, &m));
    m->frozen = frozen != 0;
    return LM_OK;
}

lm_status lm__nsc_check_task(const lm_nsc *n, size_t task, size_t module,
                             size_t d_in, const struct nsc_factor **f)
{
    struct nsc_module *m = NULL;
    LM_TRY(lm__nsc_module(n, module, &m));
    if (task >= n->n_tasks)
        return lm_context_set_error(n->ctx, LM_ERR_OUT_OF_RANGE,
                                    "nsc: task %zu of %zu", task, n->n_tasks);
    if (d_in != (size_t)m->d_in)
        return lm_context_set_error(n->ctx, LM_ERR_SHAPE,
                                    "nsc: module '%s' takes inputs of width "
                                    "%lld, got %zu", m->name,
                                    (long long)m->d_in, d_in);
    if (!m->tasks[task].a)
        return lm_context_set_error(n->ctx, LM_ERR_NOT_FOUND,
                                    "nsc: task %zu has no adapter for '%s'",
                                    task, m->name);
    *f = &m->tasks[task];
    return LM_OK;
}

/* Per row: y = A z, w = G y, q = y^T w, omega = sqrt(1 - q / |z|^2);
 * d omega / dz = (q z / |z|^4 - A^T w / |z|^2) / omega. */
lm_status lm__nsc_ratio_sum(lm_context *ctx, const struct nsc_factor *f,
                            const float *z, size_t rows, size_t d,
                            double *sum, float *grad, double grad_scale)
{
    size_t r = f->r;
    double *zd = lm__calloc(ctx, rows * d + 2 * rows * r +
                                     (grad ? rows * d : 0),
                            sizeof(double));
    if (!zd)
        return LM_ERR_OUT_OF_MEMORY;
    double *y = zd + rows * d, *w = y + rows * r, *aw = w + rows * r;
    lm__f32_to_f64(z, zd, rows * d);
    lm__gemm(false, true, rows, r, d, 1.0, zd, f->a, 0.0, y);
    lm__gemm(false, false, rows, r, r, 1.0, y, f->ginv, 0.0, w);
    if (grad)
        lm__gemm(false, false, rows, d, r, 1.0, w, f->a, 0.0, aw);
    double total = 0;
    for (size_t i = 0; i < rows; i++) {
        const double *zi = zd + i * d;
        double nz = 0, q = 0;
        for (size_t j = 0; j < d; j++)
            nz += zi[j] * zi[j];
        for (size_t j = 0; j < r; j++)
            q += y[i * r + j] * w[i * r + j];
        double omega = nz > 0 ? sqrt(fmax(0.0, 1.0 - q / nz)) : 0.0;
        total += omega;
        if (!grad)
            continue;
        float *gi = grad + i * d;
        if (!(omega > 0)) {
            memset(gi, 0, d * sizeof(float));
            continue;
        }
        double c = grad_scale / omega;
        for (size_t j = 0; j < d; j++)
            gi[j] = (float)(c * (q * zi[j] / (nz * nz) - aw[i * d + j] / nz));
    }
    lm_free(ctx, zd);
    *sum = total;
    return LM_OK;
}

lm_status lm_nsc_ratio(const lm_nsc *n, size_t task, size_t module,
                       const float *z, size_t rows, size_t d, double *mean,
                       float *grad_z, double grad_scale)
{
    const struct nsc_factor *f = NULL;
    if (!n || !z || !mean || !rows)
        return LM_ERR_INVALID_ARGUMENT;
    LM_TRY(lm__nsc_check_task(n, task, module, d, &f));
    double sum = 0;
    LM_TRY(lm__nsc_ratio_sum(n->ctx, f, z, rows, d, &sum, grad_z,
                             grad_scale / (double)rows));
    *mean = sum / (double)rows;
    return LM_OK;
}

static lm_status check_shape(const lm_nsc *n, const struct nsc_module *m,
                             const lm_tensor *t, const char *what)
{
    if (lm_tensor_ndim(t) != 2 || lm_tensor_dim(t, 0) != m->d_out ||
        lm_tensor_dim(t, 1) != m->d_in)
        return lm_context_set_error(n->ctx, LM_ERR_SHAPE,
                                    "nsc: %s for module '%s' must be [%lld, "
                                    "%lld]", what, m->name,
                                    (long long)m->d_out, (long long)m->d_in);
    return LM_OK;
}

lm_status lm_nsc_materialize(const lm_nsc *n, size_t i, const lm_tensor *base,
                             lm_tensor *out)
{
    struct nsc_module *m = NULL;
    if (!base || !out)
        return LM_ERR_INVALID_ARGUMENT;
    LM_TRY(lm__nsc_module(n, i, &m));
    LM_TRY(check_shape(n, m, base, "the base weight"));
    LM_TRY(check_shape(n, m, out, "the output"));
    size_t count = (size_t)(m->d_out * m->d_in);
    float *w0 = lm__calloc(n->ctx, count, sizeof(float));
    double *w = lm__calloc(n->ctx, count, sizeof(double));
    lm_status st = w0 && w ? lm__read_f32(n->ctx, base, w0)
                           : LM_ERR_OUT_OF_MEMORY;
    if (st == LM_OK) {
        lm__f32_to_f64(w0, w, count);
        for (size_t t = 0; t < n->n_tasks; t++) {
            const struct nsc_factor *f = &m->tasks[t];
            if (f->a && m->coef[t] != 0)
                lm__gemm(false, false, (size_t)m->d_out, (size_t)m->d_in,
                         f->r, m->coef[t] * f->scale, f->b, f->a, 1.0, w);
        }
        st = lm_convert(w, LM_F64, lm_tensor_data(out), lm_tensor_dtype(out),
                        count);
    }
    lm_free(n->ctx, w0);
    lm_free(n->ctx, w);
    return st;
}

lm_status lm_nsc_accumulate(lm_nsc *n, size_t i, const lm_tensor *g,
                            double *grads)
{
    struct nsc_module *m = NULL;
    if (!g)
        return LM_ERR_INVALID_ARGUMENT;
    LM_TRY(lm__nsc_module(n, i, &m));
    LM_TRY(check_shape(n, m, g, "the weight gradient"));
    size_t d_out = (size_t)m->d_out, d_in = (size_t)m->d_in,
           count = d_out * d_in, rmax = 0;
    for (size_t t = 0; t < n->n_tasks; t++)
        if (m->tasks[t].r > rmax)
            rmax = m->tasks[t].r;
    float *gf = lm__calloc(n->ctx, count, sizeof(float));
    double *gd = lm__calloc(n->ctx, count + rmax * d_in, sizeof(double));
    lm_status st = gf && gd ? lm__read_f32(n->ctx, g, gf)
                            : LM_ERR_OUT_OF_MEMORY;
    if (st == LM_OK) {
        lm__f32_to_f64(gf, gd, count);
        double *btg = gd + count;
        pthread_mutex_lock(&n->lock);
        for (size_t t = 0; t < n->n_tasks; t++) {
            const struct nsc_factor *f = &m->tasks[t];
            double dl = 0;
            if (f->a) {
                lm__gemm(true, false, f->r, d_in, d_out, 1.0, f->b, gd, 0.0,
                         btg);
                for (size_t k = 0; k < f->r * d_in; k++)
                    dl += btg[k] * f->a[k];
                dl *= f->scale;
                m->grad[t] += dl;
            }
            if (grads)
                grads[t] = dl;
        }
        pthread_mutex_unlock(&n->lock);
    }
    lm_free(n->ctx, gf);
    lm_free(n->ctx, gd);
    return st;
}

/* torch.optim.AdamW's update: decoupled decay, then the bias-corrected
 * moment step. */
void lm__nsc_adamw(lm_nsc *n, double lr)
{
    const lm_nsc_options *o = &n->opts;
    n->steps++;
    double c1 = 1.0 - pow(o->beta1, (double)n->steps),
           c2 = 1.0 - pow(o->beta2, (double)n->steps);
    for (size_t i = 0; i < n->n_modules; i++) {
        struct nsc_module *m = &n->modules[i];
        for (size_t t = 0; t < n->n_tasks; t++) {
            if (!m->tasks[t].a || m->frozen) {
                m->grad[t] = 0;
                continue;
            }
            double g = m->grad[t];
            m->coef[t] *= 1.0 - lr * o->weight_decay;
            m->adam_m[t] = o->beta1 * m->adam_m[t] + (1 - o->beta1) * g;
            m->adam_v[t] = o->beta2 * m->adam_v[t] + (1 - o->beta2) * g * g;
            m->coef[t] -= lr * (m->adam_m[t] / c1) /
                          (sqrt(m->adam_v[t] / c2) + o->adam_eps);
            m->grad[t] = 0;
            /* The projection: a no-op with the released (infinite)
             * bounds, so the released trajectory is unchanged. */
            double lo = fmax(o->lambda_min, m->centre[t] - o->trust_radius);
            double hi = fmin(o->lambda_max, m->centre[t] + o->trust_radius);
            m->coef[t] = fmin(fmax(m->coef[t], lo), hi);
        }
    }
}

lm_status lm_nsc_step(lm_nsc *n)
{
    if (!n)
        return LM_ERR_INVALID_ARGUMENT;
    for (size_t i = 0; i < n->n_modules; i++)
        for (size_t t = 0; t < n->n_tasks; t++)
            if (!isfinite(n->modules[i].grad[t]))
                return lm_context_set_error(
                    n->ctx, LM_ERR_NONFINITE,
                    "nsc: the gradient of lambda %zu of '%s' is not finite", t,
                    n->modules[i].name);
    lm__nsc_adamw(n, n->opts.lr);
    return LM_OK;
}
