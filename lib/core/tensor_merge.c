/* Merging one tensor: read the base and every task's delta (models by
 * name, adapters expanded from their factors), run the strategy, add the
 * base back. Shared by plan execution and load-time mergers.
 *
 * Inputs may mix dtypes. When any of them is f64 the tensor is merged
 * "wide": each delta is the f64 difference rounded once to f32, and the
 * base is added back in f64 at the end, so an f64 model loses only the
 * f32 rounding of its (small) task vectors, not of its weights. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/plan_private.h"
#include "core/stage.h"

static void done_with(const lm_model *model, const lm_tensor *t)
{
    if (model->done_with)
        model->done_with(model->resource, t);
}

/* Under the default policy, the first NaN/Inf of an input is an error
 * naming where it came from. */
static lm_status check_finite(lm_plan *p, const char *what, const char *name,
                              const float *x, size_t n)
{
    if (p->allow_nonfinite)
        return LM_OK;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return lm_context_set_error(
                p->ctx, LM_ERR_NONFINITE,
                "%s has a non-finite value in tensor '%s' at element %zu "
                "(lm_plan_set_nonfinite(LM_NONFINITE_ALLOW) merges anyway)",
                what, name, i);
    return LM_OK;
}

/* A task vector's delta for `name`, zero where it has none. */
static lm_status stored_delta(lm_plan *p, const lm_task_vector *tv,
                              const char *what, const char *name,
                              const lm_tensor *base, float *delta)
{
    lm_tensor *t = lm__model_lookup(tv->deltas, name);
    if (!t) {
        memset(delta, 0, base->numel * sizeof(float));
        return LM_OK;
    }
    bool same = t->ndim == base->ndim;
    for (int d = 0; same && d < t->ndim; d++)
        same = t->shape[d] == base->shape[d];
    if (!same)
        return lm_context_set_error(p->ctx, LM_ERR_SHAPE,
                                    "%s: tensor '%s' has another shape than "
                                    "the base's", what, name);
    return lm__read_f32(p->ctx, t, delta);
}

/* Does any input of tensor `name` hold f64 values? */
static bool needs_wide(const lm_plan *p, const char *name,
                       const lm_tensor *base)
{
    if (base->dtype == LM_F64)
        return true;
    for (size_t m = 0; m < p->n_models; m++) {
        if (!p->models[m])
            continue;
        const lm_tensor *t = lm__model_lookup(p->models[m], name);
        if (t && t->dtype == LM_F64)
            return true;
    }
    return false;
}

/* A delta of a wide merge: the f64 difference, rounded once. */
static void wide_delta(const double *base64, const double *model, float *d,
                       size_t n)
{
    for (size_t i = 0; i < n; i++)
        d[i] = (float)(model[i] - base64[i]);
}

bool lm__rows_differ(const lm_plan *p, const lm_tensor *b, const lm_tensor *t)
{
    return p->rows != LM_ROWS_ERROR && b->ndim == 2 && t->ndim == 2 &&
           b->shape[1] == t->shape[1] && b->shape[0] != t->shape[0];
}

/* The delta of a model whose tensor t has another row count than the base
 * (lm_plan_set_rows_policy): shared rows exactly (f64 difference), rows it
 * lacks as the policy says — MEAN rows are left for fill_mean_rows. */
static lm_status rows_delta(lm_plan *p, const lm_tensor *t,
                            const lm_tensor *base, const float *b,
                            const double *base64, float *d)
{
    double *v = lm__calloc(p->ctx, t->numel ? t->numel : 1, sizeof(double));
    if (!v)
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory reading tensor '%s'",
                                    t->lazy_name ? t->lazy_name : "?");
    lm_status st = lm__read_f64(p->ctx, t, v);
    size_t cols = (size_t)base->shape[1];
    size_t shared = (size_t)(t->shape[0] < base->shape[0] ? t->shape[0]
                                                          : base->shape[0]);
    for (size_t i = 0; st == LM_OK && i < shared * cols; i++)
        d[i] = (float)(v[i] - (base64 ? base64[i] : (double)b[i]));
    for (size_t i = shared * cols; st == LM_OK && i < base->numel; i++)
        d[i] = p->rows == LM_ROWS_ZERO ? -b[i] : 0.0f;
    lm_free(p->ctx, v);
    return st;
}

/* MEAN: a model's missing row r becomes the mean task-vector row of the
 * models that have it (none: the base's row, a zero delta). */
static void fill_mean_rows(const lm_plan *p, const lm_tensor *base,
                           const int64_t *rows, float *const *deltas)
{
    size_t cols = (size_t)base->shape[1];
    for (int64_t r = 0; r < base->shape[0]; r++) {
        size_t have = 0;
        for (size_t m = 0; m < p->n_models; m++)
            have += rows[m] > r;
        if (have == p->n_models || have == 0)
            continue;
        for (size_t c = 0; c < cols; c++) {
            double sum = 0;
            for (size_t m = 0; m < p->n_models; m++)
                if (rows[m] > r)
                    sum += deltas[m][(size_t)r * cols + c];
            for (size_t m = 0; m < p->n_models; m++)
                if (rows[m] <= r)
                    deltas[m][(size_t)r * cols + c] = (float)(sum / have);
        }
    }
}

/* Read the base and the task vectors of tensor `name` into `block`
 * (base, then one delta per model); base64/scratch64 (n doubles each)
 * when merging wide; rows (one per model, the base's row count on entry)
 * under the MEAN rows policy. *base_vals: the base's values, in place
 * when `in_place` and the base is an f32 tensor in memory that stays
 * (its first n floats of block are then not touched: no copy, no fresh
 * pages), else the block's copy. */
static lm_status load_inputs(lm_plan *p, const char *name,
                             const lm_tensor *base, bool from_plan_base,
                             bool in_place, float *block,
                             const float **base_vals, const float **deltas,
                             double *base64, double *scratch64,
                             int64_t *rows)
{
    size_t n = base->numel;
    float *b = block;
    in_place = in_place && !base64 && base->dtype == LM_F32 &&
               !base->lazy_read && base->data &&
               !(from_plan_base && p->base->done_with);
    *base_vals = in_place ? (const float *)base->data : block;
    if (!in_place) {
        if (base64) {
            LM_TRY(lm__read_f64(p->ctx, base, base64));
            for (size_t i = 0; i < n; i++)
                b[i] = (float)base64[i];
        } else {
            LM_TRY(lm__read_f32(p->ctx, base, b));
        }
        if (from_plan_base)
            done_with(p->base, base);
    }
    const float *bv = *base_vals;
    LM_TRY(check_finite(p, "the base", name, bv, n));
    for (size_t m = 0; m < p->n_models; m++) {
        float *d = block + n * (m + 1);
        deltas[m] = d;
        char what[48];
        if (p->tvs[m]) {
            snprintf(what, sizeof(what), "task vector %zu", m);
            LM_TRY(stored_delta(p, p->tvs[m], what, name, base, d));
            LM_TRY(check_finite(p, what, name, d, n));
            continue;
        }
        if (p->loras[m]) {
            snprintf(what, sizeof(what), "adapter %zu", m);
            LM_TRY(lm__lora_delta(p->ctx, p->loras[m], m, name, base, d));
            LM_TRY(check_finite(p, what, name, d, n));
            continue;
        }
        lm_tensor *t = lm__model_lookup(p->models[m], name);
        if (!t)
            return lm_context_set_error(p->ctx, LM_ERR_NOT_FOUND,
                                        "model %zu has no tensor '%s'", m,
                                        name);
        snprintf(what, sizeof(what), "model %zu", m);
        if (lm__rows_differ(p, base, t)) {
            LM_TRY(rows_delta(p, t, base, bv, base64, d));
            done_with(p->models[m], t);
            LM_TRY(check_finite(p, what, name, d, n));
            if (rows)
                rows[m] = t->shape[0];
            continue;
        }
        LM_TRY(lm__check_pair(p->ctx, what, name, base, t));
        if (base64) {
            LM_TRY(lm__read_f64(p->ctx, t, scratch64));
            done_with(p->models[m], t);
            wide_delta(base64, scratch64, d, n);
            LM_TRY(check_finite(p, what, name, d, n));
            continue;
        }
        LM_TRY(lm__read_f32(p->ctx, t, d));
        done_with(p->models[m], t);
        LM_TRY(check_finite(p, what, name, d, n));
        for (size_t i = 0; i < n; i++)
            d[i] -= bv[i];
    }
    if (rows)
        fill_mean_rows(p, base, rows, (float *const *)deltas);
    return LM_OK;
}

/* What lm__merge_tensor holds for a tensor while its strategy runs, as
 * lm_tensor_job.held_bytes: the block (base, deltas, output in f32), the
 * f64 base and scratch of a wide merge, and the transient buffers that
 * coexist with it (a transposition, a row-policy model read in f64, the
 * output converted for the sink). Summed rather than maxed: an upper
 * bound, never an underestimate. */
static uint64_t held_bytes(const lm_plan *p, const char *name,
                           const lm_tensor *base)
{
    double n = (double)base->numel, k = (double)p->n_models;
    double bytes = 4.0 * n * (k + 2.0) + 8.0 * k;
    if (needs_wide(p, name, base))
        bytes += 16.0 * n;
    if (base->ndim == 2 && lm__plan_transposed(p, name))
        bytes += 4.0 * n;
    if (p->rows != LM_ROWS_ERROR && base->ndim == 2) {
        double widest = n; /* a model with more rows is read whole */
        for (size_t m = 0; m < p->n_models; m++) {
            const lm_tensor *t = p->models[m]
                                     ? lm__model_lookup(p->models[m], name)
                                     : NULL;
            if (t && (double)t->numel > widest)
                widest = (double)t->numel;
        }
        bytes += 8.0 * widest;
    }
    bytes += 8.0 * n; /* the sink's conversion buffer, at most 8 B each */
    return bytes >= 1.8e19 ? UINT64_MAX : (uint64_t)bytes;
}

lm_status lm__tensor_job_init(lm_plan *p, const char *name,
                              const lm_tensor *base, const int64_t *shape,
                              lm_params *view, double **tensor_weights,
                              lm_tensor_job *job)
{
    lm_context *ctx = p->ctx;
    size_t k = p->n_models;
    lm__params_view(p->params, name, view);
    const double *weights = p->weights;
    *tensor_weights = NULL;
    if (lm__params_has_weights(p->params)) {
        double *w = lm__calloc(ctx, k ? k : 1, sizeof(double));
        if (!w)
            return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                        "out of memory merging '%s'", name);
        for (size_t m = 0; m < k; m++)
            w[m] = lm__params_weight(view, m, p->weights[m]);
        weights = *tensor_weights = w;
    }
    *job = (lm_tensor_job){
        .struct_size = sizeof(*job),
        .ctx = ctx,
        .name = name,
        .ndim = base->ndim,
        .shape = shape,
        .numel = base->numel,
        .n_models = k,
        .weights = weights,
        .seed = lm__hash_string(ctx->seed, name),
        .stats = p->stats,
        .loras = p->loras,
        .params = view,
        .held_bytes = held_bytes(p, name, base),
    };
    return LM_OK;
}

/* The strategy's check_tensor, before anything of the tensor is
 * allocated or read. */
static lm_status check_strategy(lm_plan *p, void *state, const char *name,
                                const lm_tensor *base, const int64_t *shape)
{
    if (!p->vt->check_tensor)
        return LM_OK;
    lm_params view;
    double *tensor_weights;
    lm_tensor_job job;
    LM_TRY(lm__tensor_job_init(p, name, base, shape, &view, &tensor_weights,
                               &job));
    lm_status st = p->vt->check_tensor(state, &job, p->vt->user);
    lm_free(p->ctx, tensor_weights);
    if (st > 0)
        return lm_context_set_error(p->ctx, LM_ERR_INTERNAL,
                                    "strategy '%s' returned positive status "
                                    "%d checking '%s'", p->vt->name, (int)st,
                                    name);
    return st;
}

static lm_status run_strategy(lm_plan *p, void *state, const char *name,
                              const lm_tensor *base, const int64_t *shape,
                              float *block, const float *b,
                              const float **deltas, const double *base64,
                              bool prepare)
{
    lm_context *ctx = p->ctx;
    size_t n = base->numel, k = p->n_models;
    float *out = block + n * (k + 1);
    lm_params view;
    double *tensor_weights;
    lm_tensor_job job;
    LM_TRY(lm__tensor_job_init(p, name, base, shape, &view, &tensor_weights,
                               &job));
    job.base = b;
    job.deltas = deltas;
    job.out = out;
    lm_status st = prepare ? p->vt->prepare_tensor(state, &job, p->vt->user)
                           : p->vt->merge_tensor(state, &job, p->vt->user);
    lm_free(ctx, tensor_weights);
    if (st > 0)
        return lm_context_set_error(ctx, LM_ERR_INTERNAL,
                                    "strategy '%s' returned positive status "
                                    "%d for '%s'", p->vt->name, (int)st, name);
    if (st != LM_OK || prepare)
        return st;
    return lm__add_base(p, name, out, b, base64, n);
}

lm_status lm__add_base(lm_plan *p, const char *name, float *out,
                       const float *b, const double *base64, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        /* Wide merges keep the task vector; lm__merged_write adds base64. */
        double v = base64 ? base64[i] + (double)out[i] : (double)(out[i] += b[i]);
        if (!p->allow_nonfinite && !isfinite(v))
            return lm_context_set_error(p->ctx, LM_ERR_NONFINITE,
                                        "strategy '%s' produced a non-finite "
                                        "value in tensor '%s' at element %zu",
                                        p->vt->name, name, i);
    }
    return LM_OK;
}

lm_status lm__merge_tensor(lm_plan *p, void *state, const char *name,
                           const lm_tensor *base, bool from_plan_base,
                           enum lm__pass pass, struct lm__merged *merged)
{
    bool prepare = pass != LM__PASS_MERGE;
    lm_context *ctx = p->ctx;
    size_t n = base->numel, k = p->n_models;
    *merged = (struct lm__merged){0};
    /* A weight stored [in, out] is merged as [out, in] (layout.c). */
    bool flip = base->ndim == 2 && lm__plan_transposed(p, name);
    size_t r = flip ? (size_t)base->shape[0] : 0,
           c = flip ? (size_t)base->shape[1] : 0;
    int64_t flipped[2] = {base->shape[flip], base->shape[!flip]};
    const int64_t *shape = flip ? flipped : base->shape;
    LM_TRY(check_strategy(p, state, name, base, shape));
    if (pass == LM__PASS_MERGE && !flip) {
        bool taken;
        LM_TRY(lm__sum_route(p, state, name, base, from_plan_base, merged,
                             &taken));
        if (taken)
            return LM_OK;
    }
    /* One block: base, k deltas, out, then the delta pointer table. */
    size_t floats = n * (k + 2);
    if (n && floats / n != k + 2)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "tensor '%s' is too large", name);
    bool wide = needs_wide(p, name, base);
    /* load_inputs writes the base and every delta whole; only the output
     * starts from zero (strategies may accumulate into it). Clearing the
     * whole block cost a third of a load-time merge of LoRA adapters. */
    float *block = floats < SIZE_MAX / sizeof(float)
                       ? lm__workspace_alloc(ctx, (floats ? floats : 1) *
                                                    sizeof(float))
                       : NULL;
    if (block) /* fresh blocks ask for huge pages (workspace.c) */
        memset(block + n * (k + 1), 0, n * sizeof(float));
    const float **deltas = lm__calloc(ctx, k ? k : 1, sizeof(*deltas));
    double *base64 = wide ? lm__calloc(ctx, 2 * (n ? n : 1), sizeof(double))
                          : NULL;
    lm_status st = LM_OK;
    if (!block || !deltas || (wide && !base64))
        st = lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                  "out of memory merging '%s' (%zu elements "
                                  "x %zu models)", name, n, k);
    int64_t *rows = NULL;
    if (st == LM_OK && p->rows == LM_ROWS_MEAN && base->ndim == 2) {
        rows = lm__calloc(ctx, k ? k : 1, sizeof(*rows));
        if (!rows)
            st = lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                      "out of memory merging '%s'", name);
        for (size_t m = 0; rows && m < k; m++)
            rows[m] = base->shape[0];
    }
    /* Stages and transposition rewrite the block's base in place. */
    const float *base_vals = block;
    if (st == LM_OK)
        st = load_inputs(p, name, base, from_plan_base,
                         !flip && !p->n_stages, block, &base_vals, deltas,
                         base64, base64 ? base64 + n : NULL, rows);
    lm_free(ctx, rows);
    if (st == LM_OK && flip)
        st = lm__transpose_each(ctx, block, k + 1, r, c);
    if (st == LM_OK && p->n_stages) {
        struct lm__stage_tensor t = {name, block, shape, base->ndim, n,
                                     (float *const *)deltas};
        st = lm__stages_run(p, pass == LM__PASS_MEASURE, &t);
    }
    if (st == LM_OK && pass != LM__PASS_MEASURE)
        st = run_strategy(p, state, name, base, shape, block, base_vals,
                          deltas, base64, prepare);
    if (st == LM_OK && flip && !prepare)
        st = lm__transpose_each(ctx, block + n * (k + 1), 1, c, r);
    lm_free(ctx, (void *)deltas);
    if (st != LM_OK || prepare) {
        lm__workspace_free(ctx, block);
        lm_free(ctx, base64);
        return st;
    }
    merged->block = block;
    merged->values = block + n * (k + 1);
    merged->base64 = base64;
    return LM_OK;
}

void lm__merged_write(const struct lm__merged *m, size_t n, void *dst,
                      lm_dtype dtype)
{
    if (!m->base64) {
        lm_convert(m->values, LM_F32, dst, dtype, n);
        return;
    }
    /* Base + task vector in f64, converted in chunks (one rounding). */
    double chunk[256];
    size_t w = lm_dtype_size(dtype);
    for (size_t i = 0; i < n; i += 256) {
        size_t c = n - i < 256 ? n - i : 256;
        for (size_t j = 0; j < c; j++)
            chunk[j] = m->base64[i + j] + (double)m->values[i + j];
        lm_convert(chunk, LM_F64, (char *)dst + i * w, dtype, c);
    }
}

void lm__merged_free(lm_context *ctx, struct lm__merged *m)
{
    lm__workspace_free(ctx, m->block);
    lm_free(ctx, m->base64);
    *m = (struct lm__merged){0};
}
