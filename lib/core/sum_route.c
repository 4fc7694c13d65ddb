/* A tensor whose strategy needs only the weighted sum of its task vectors
 * (core/sum_rule.h): the sum formed in f64 straight from the inputs, a
 * block of elements at a time, instead of the plain path's whole-tensor
 * f32 copies of the base and every task vector (tensor_merge.c). Only
 * the merged output (and the base, when it cannot be read in place) gets
 * a tensor-sized f32 buffer. Fresh pages are what this saves: Iso-C on
 * the svd_rows layers touched T + 2 f32 copies of each tensor, each first
 * touch about 4 ms per MiB on the benchmark VM.
 *
 * Bit-identical to the plain path (same conversions, each delta the same
 * f32 subtraction, the same accumulations in the same order). Anything
 * the plain path treats specially (task vectors, adapters, an f64 input,
 * lazy tensors, stages, transposed layouts, row policies, shape errors) is
 * left to it, and so is a non-finite input under the default policy,
 * whose error message names the first offending input and element. */
#include <string.h>

#include "core/fused_private.h"
#include "core/fused_simd.h"
#include "core/plan_private.h"
#include "core/sum_rule.h"

/* Elements per block: its f32 and f64 buffers (32 KiB) stay in L1/L2. */
#define SUM_BLOCK 2048

/* An input read in place: in memory, not f64 (wide merges round
 * differently). */
static bool readable(const lm_tensor *t)
{
    return t && !t->lazy_read && t->data && t->dtype != LM_F64;
}

/* Elements [lo, lo + len) of t as f32: in place when t is f32. */
static const float *load(const lm_tensor *t, size_t lo, size_t len,
                         float *buf)
{
    if (t->dtype == LM_F32)
        return (const float *)t->data + lo;
    lm_convert((const char *)t->data + lo * lm_dtype_size(t->dtype),
               t->dtype, buf, LM_F32, len);
    return buf;
}

/* The sum and its statistics; false when an input holds a non-finite
 * value and the policy refuses them (the plain path then reports it).
 * base_copy: where the base's f32 values go when it is not read in place
 * (NULL otherwise). */
static bool form_sum(const lm_plan *p, const lm_tensor *base,
                     const lm_tensor *const *in, const double *w,
                     float *base_copy, double *sum, double *b2_out,
                     double *w2, double *m2_out)
{
    size_t n = base->numel, k = p->n_models;
    bool check = !p->allow_nonfinite;
    float bbuf[SUM_BLOCK], xbuf[SUM_BLOCK], d[SUM_BLOCK];
    double acc[SUM_BLOCK], b2 = 0, m2 = 0;
    for (size_t lo = 0; lo < n; lo += SUM_BLOCK) {
        size_t len = n - lo < SUM_BLOCK ? n - lo : SUM_BLOCK;
        const float *b = load(base, lo, len, bbuf);
        if (check && lm__simd_any_nonfinite_f32(b, len))
            return false;
        if (base_copy)
            memcpy(base_copy + lo, b, len * sizeof(float));
        for (size_t j = 0; j < len; j++) {
            double bj = (double)b[j];
            b2 += bj * bj;
            acc[j] = 0.0;
        }
        for (size_t t = 0; t < k; t++) {
            const float *x = load(in[t], lo, len, xbuf);
            if (check && lm__simd_any_nonfinite_f32(x, len))
                return false;
            double wt = w[t], s2 = w2[t];
            for (size_t j = 0; j < len; j++) {
                d[j] = x[j] - b[j];
                double dj = (double)d[j], v = (double)b[j] + dj;
                acc[j] += wt * dj;
                s2 += v * v;
            }
            w2[t] = s2;
        }
        for (size_t j = 0; j < len; j++) {
            sum[lo + j] = acc[j];
            m2 += acc[j] * acc[j];
        }
    }
    *b2_out = b2;
    *m2_out = m2;
    return true;
}

lm_status lm__sum_route(lm_plan *p, void *state, const char *name,
                        const lm_tensor *base, bool from_plan_base,
                        struct lm__merged *merged, bool *taken)
{
    *taken = false;
    const struct lm__sum_rule *rule = lm__strategy_sum_rule(p->vt);
    size_t n = base->numel, k = p->n_models;
    if (!rule || !lm__fused_enabled() || p->n_stages || !k || !n ||
        !readable(base))
        return LM_OK;
    lm_context *ctx = p->ctx;
    const lm_tensor **in = lm__calloc(ctx, k, sizeof(*in));
    if (!in)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory merging '%s'", name);
    bool ok = true;
    for (size_t m = 0; ok && m < k; m++) {
        ok = !p->tvs[m] && !p->loras[m] && p->models[m];
        in[m] = ok ? lm__model_lookup(p->models[m], name) : NULL;
        ok = ok && readable(in[m]) && lm__same_shape(base, in[m]);
    }
    lm_params view;
    double *tensor_weights = NULL;
    lm_tensor_job job;
    lm_status st = LM_OK;
    if (ok) {
        st = lm__tensor_job_init(p, name, base, base->shape, &view,
                                 &tensor_weights, &job);
        ok = st == LM_OK && rule->wants(state, &job);
    }
    if (!ok) {
        lm_free(ctx, tensor_weights);
        lm_free(ctx, (void *)in);
        return st;
    }
    /* The base is read in place when it is f32, unless its model wants
     * to hear when it is done with (a mapped file): then it is copied (in
     * f32), as the plain path does, and released at once. */
    bool copy_base = base->dtype != LM_F32 ||
                     (from_plan_base && p->base->done_with);
    float *block = lm__workspace_alloc(ctx, (copy_base ? 2 : 1) * n *
                                                sizeof(float));
    double *sum = lm__workspace_alloc(ctx, n * sizeof(double));
    double *w2 = lm__calloc(ctx, k, sizeof(double));
    if (!block || !sum || !w2) {
        st = lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                  "out of memory merging '%s' (%zu "
                                  "elements x %zu models)", name, n, k);
        goto done;
    }
    float *out = block, *base_copy = copy_base ? block + n : NULL;
    memset(out, 0, n * sizeof(float));
    struct lm__sum_stats stats = {0, 0, w2};
    if (!form_sum(p, base, in, job.weights, base_copy, sum, &stats.b2, w2,
                  &stats.m2))
        goto done; /* a non-finite input: the plain path names it */
    *taken = true;
    if (from_plan_base && copy_base && p->base->done_with)
        p->base->done_with(p->base->resource, base);
    for (size_t m = 0; m < k; m++)
        if (p->models[m]->done_with)
            p->models[m]->done_with(p->models[m]->resource, in[m]);
    const float *b = copy_base ? base_copy : (const float *)base->data;
    job.base = b;
    job.deltas = NULL;
    job.out = out;
    st = rule->merge(state, &job, sum, &stats);
    if (st > 0)
        st = lm_context_set_error(ctx, LM_ERR_INTERNAL,
                                  "strategy '%s' returned positive status "
                                  "%d for '%s'", p->vt->name, (int)st, name);
    if (st == LM_OK)
        st = lm__add_base(p, name, out, b, NULL, n);
    if (st == LM_OK) {
        merged->block = block;
        merged->values = out;
        merged->base64 = NULL;
        block = NULL;
    }
done:
    lm__workspace_free(ctx, block);
    lm__workspace_free(ctx, sum);
    lm_free(ctx, w2);
    lm_free(ctx, tensor_weights);
    lm_free(ctx, (void *)in);
    return st;
}
