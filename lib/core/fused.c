/* The fused single-pass path for linear-combination strategies
 * (task_arithmetic, linear, average: core/linear_rule.h). The plain path
 * (tensor_merge.c) converts the base and every model to whole-tensor f32
 * copies, forms every task vector in a separate pass, calls merge_tensor,
 * adds the base back, then converts to the output dtype: k + 2 tensor-
 * sized buffers written and read again. Here each block of a few thousand
 * elements is read once from every input in its own dtype (straight from
 * the mapping), combined in L2-resident buffers and converted once into
 * the output, so memory traffic is the inputs read once and the output
 * written once.
 *
 * Bit-identical to the plain path: the same conversions (lm_convert on a
 * sub-range is the same element-wise function), and per element the same
 * operations in the same order (the rule's contract), only grouped by
 * block. A tensor whose tasks are all LoRA adapters goes to
 * core/fused_lora.c (one sgemm of the packed factors per row block, not
 * bit-identical to the plain path). Adapters mixed with models go by
 * row blocks here: each
 * adapter's update is formed a row block at a time by the same BLAS calls
 * the plain path's lm__lora_delta makes (lm__lora_rows), so an adapter's
 * whole-tensor f32 update is never materialised. Anything else the plain
 * path treats specially (stages, task vectors, transposed layouts, row
 * policies, lazy tensors, adapters with an f64 input, a non-finite value
 * under the default policy, whose error message names the first
 * offending input and element) is left to the plain path.
 * Sparse rules (ties, DARE) share this entry and its helpers
 * (core/fused_private.h) and run in core/fused_sparse.c. */
#define _DEFAULT_SOURCE /* madvise */
#include <math.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "core/fused_private.h"
#include "core/vector_clones.h"

/* Block: its f32 and f64 buffers (about 70 KB) stay in L2. */
#define BLOCK LM__FUSED_BLOCK
#define CHUNK LM__FUSED_CHUNK
#define MAX_MODELS LM__FUSED_MAX_MODELS
#define DECLINE LM__FUSED_DECLINE
#define fused lm__fused

struct work {
    float *b, *x, *o;
    double *acc, *b64, *x64;
};

/* The plain path is forced with LIBMERGE_FUSED=0 (for tests and A/B
 * measurements; documented in docs/architecture.md). */
bool lm__fused_enabled(void)
{
    const char *e = getenv("LIBMERGE_FUSED");
    return !(e && strcmp(e, "0") == 0);
}

/* Any Inf/NaN among x[0..n)? Branch-free so that it vectorises. */
LM_VECTOR_CLONES
static bool fused_any_nonfinite_f32_clones(const float *x, size_t n)
{
    uint32_t bad = 0;
    for (size_t j = 0; j < n; j++) {
        uint32_t u;
        memcpy(&u, &x[j], sizeof(u));
        bad |= (uint32_t)((u & 0x7f800000u) == 0x7f800000u);
    }
    return bad != 0;
}

bool lm__fused_any_nonfinite_f32(const float *x, size_t n)
{
    return fused_any_nonfinite_f32_clones(x, n);
}

bool lm__fused_any_nonfinite_f64(const double *x, size_t n)
{
    uint64_t bad = 0;
    for (size_t j = 0; j < n; j++) {
        uint64_t u;
        memcpy(&u, &x[j], sizeof(u));
        bad |= (uint64_t)((u & 0x7ff0000000000000u) == 0x7ff0000000000000u);
    }
    return bad != 0;
}

/* bf16 <-> f32 as lm_bf16_to_f32 / lm_f32_to_bf16 (dtype.c) compute them,
 * bit for bit, written branch-free so that the compiler vectorises them
 * (dtype.c's per-element calls do not vectorise; bf16 is the common
 * checkpoint dtype). core_fused checks them against the plain path. */
LM_VECTOR_CLONES
static void bf16_to_f32(const uint16_t *src, float *dst, size_t n)
{
    for (size_t j = 0; j < n; j++) {
        uint32_t u = (uint32_t)src[j] << 16;
        memcpy(&dst[j], &u, sizeof(u));
    }
}

LM_VECTOR_CLONES
static void fused_f32_to_bf16_clones(const float *src, uint16_t *dst, size_t n)
{
    for (size_t j = 0; j < n; j++) {
        uint32_t x;
        memcpy(&x, &src[j], sizeof(x));
        uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
        uint32_t quiet_nan = (x >> 16) | 0x0040u;
        dst[j] = (uint16_t)((x & 0x7fffffffu) > 0x7f800000u ? quiet_nan
                                                             : rounded);
    }
}

void lm__fused_f32_to_bf16(const float *src, uint16_t *dst, size_t n)
{
    fused_f32_to_bf16_clones(src, dst, n);
}

/* Elements [lo, lo + len) of src as f32: in place when src is f32. */
const float *lm__fused_load_f32(const void *src, lm_dtype dt, size_t lo,
                                size_t len, float *buf)
{
    if (dt == LM_F32)
        return (const float *)src + lo;
    if (dt == LM_BF16)
        bf16_to_f32((const uint16_t *)src + lo, buf, len);
    else
        lm_convert((const char *)src + lo * lm_dtype_size(dt), dt, buf,
                   LM_F32, len);
    return buf;
}

const double *lm__fused_load_f64(const void *src, lm_dtype dt, size_t lo,
                                 size_t len, double *buf)
{
    if (dt == LM_F64)
        return (const double *)src + lo;
    lm_convert((const char *)src + lo * lm_dtype_size(dt), dt, buf, LM_F64,
               len);
    return buf;
}

/* acc = base_term ? base_coef * b : 0 (the rule's first term). */
static void acc_init(const struct lm__linear_rule *r, const float *b,
                     double *acc, size_t len)
{
    if (r->base_term)
        for (size_t j = 0; j < len; j++)
            acc[j] = r->base_coef * (double)b[j];
    else
        for (size_t j = 0; j < len; j++)
            acc[j] = 0.0;
}

/* acc += wt * d for an adapter's task vector d (zero when the adapter
 * does not target the tensor, as lm__lora_delta's memset). */
static lm_status add_adapter(const struct fused *f, struct work *w, size_t t,
                             size_t lo, size_t len, double *restrict acc)
{
    double wt = f->w[t];
    if (f->slot[t] == LM__SLOT_ZERO) {
        const float zero = 0.0f;
        for (size_t j = 0; j < len; j++)
            acc[j] += wt * (double)zero;
        return LM_OK;
    }
    const float *d = w->x;
    lm__lora_rows(&f->lora[t], lo / f->cols, len / f->cols, w->x);
    if (f->check && lm__fused_any_nonfinite_f32(d, len))
        return DECLINE;
    for (size_t j = 0; j < len; j++)
        acc[j] += wt * (double)d[j];
    return LM_OK;
}

/* Inputs of no f64: as tensor_merge.c's load_inputs + run_strategy. With
 * adapters, [lo, lo + len) is a whole row block. */
static lm_status block_narrow(const struct fused *f, struct work *w,
                              size_t lo, size_t len)
{
    const float *b = lm__fused_load_f32(f->base, f->base_dt, lo, len, w->b);
    if (f->check && lm__fused_any_nonfinite_f32(b, len))
        return DECLINE;
    double *restrict acc = w->acc;
    acc_init(&f->rule, b, acc, len);
    for (size_t t = 0; t < f->k; t++) {
        if (f->slot[t] != LM__SLOT_MODEL) {
            LM_TRY(add_adapter(f, w, t, lo, len, acc));
            continue;
        }
        const float *x =
            lm__fused_load_f32(f->in[t], f->in_dt[t], lo, len, w->x);
        if (f->check && lm__fused_any_nonfinite_f32(x, len))
            return DECLINE;
        double wt = f->w[t];
        for (size_t j = 0; j < len; j++) {
            float d = x[j] - b[j]; /* the task vector, rounded to f32 */
            acc[j] += wt * (double)d;
        }
    }
    float *o = f->out_dt == LM_F32 ? (float *)f->dst + lo : w->o;
    double mul = f->rule.mul, div = f->rule.div;
    for (size_t j = 0; j < len; j++) {
        float v = (float)(mul * (acc[j] / div));
        o[j] = v + b[j];
    }
    if (f->check && lm__fused_any_nonfinite_f32(o, len))
        return DECLINE;
    if (o == w->o && f->out_dt == LM_BF16)
        lm__fused_f32_to_bf16(o, (uint16_t *)f->dst + lo, len);
    else if (o == w->o)
        lm_convert(o, LM_F32, (char *)f->dst + lo * lm_dtype_size(f->out_dt),
                   f->out_dt, len);
    return LM_OK;
}

/* An input is f64: deltas are f64 differences rounded once to f32, the
 * base is added back in f64 and the sum rounded once to the output. */
static lm_status block_wide(const struct fused *f, struct work *w,
                            size_t lo, size_t len)
{
    const double *b64 =
        lm__fused_load_f64(f->base, f->base_dt, lo, len, w->b64);
    float *b = w->b;
    for (size_t j = 0; j < len; j++)
        b[j] = (float)b64[j];
    if (f->check && lm__fused_any_nonfinite_f32(b, len))
        return DECLINE;
    double *acc = w->acc;
    acc_init(&f->rule, b, acc, len);
    for (size_t t = 0; t < f->k; t++) {
        const double *x =
            lm__fused_load_f64(f->in[t], f->in_dt[t], lo, len, w->x64);
        float *d = w->x;
        for (size_t j = 0; j < len; j++)
            d[j] = (float)(x[j] - b64[j]);
        if (f->check && lm__fused_any_nonfinite_f32(d, len))
            return DECLINE;
        double wt = f->w[t];
        for (size_t j = 0; j < len; j++)
            acc[j] += wt * (double)d[j];
    }
    double *o = f->out_dt == LM_F64 ? (double *)f->dst + lo : w->x64;
    double mul = f->rule.mul, div = f->rule.div;
    for (size_t j = 0; j < len; j++) {
        float v = (float)(mul * (acc[j] / div));
        o[j] = b64[j] + (double)v;
    }
    if (f->check && lm__fused_any_nonfinite_f64(o, len))
        return DECLINE;
    if (o == w->x64)
        lm_convert(o, LM_F64, (char *)f->dst + lo * lm_dtype_size(f->out_dt),
                   f->out_dt, len);
    return LM_OK;
}

/* Elements per block and per parallel item: by rows with adapters (whole
 * row blocks, as lm__lora_delta forms them), else fixed. */
static size_t block_elems(const struct fused *f)
{
    return f->by_rows ? f->block_rows * f->cols : BLOCK;
}

static size_t chunk_elems(const struct fused *f)
{
    size_t block = block_elems(f);
    return f->by_rows ? (CHUNK > block ? CHUNK / block * block : block)
                      : CHUNK;
}

/* One chunk of the tensor, with its own block buffers. */
static lm_status run_chunk(void *arg, size_t item)
{
    const struct fused *f = arg;
    size_t block = block_elems(f), chunk = chunk_elems(f);
    size_t lo = item * chunk, hi = lo + chunk < f->n ? lo + chunk : f->n;
    size_t floats = 3 * block, doubles = 3 * block;
    char *mem = lm_alloc(f->ctx, floats * sizeof(float) +
                                     doubles * sizeof(double));
    if (!mem)
        return lm_context_set_error(f->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory for merge buffers");
    double *d = (double *)mem;
    float *s = (float *)(d + doubles);
    struct work w = {s, s + block, s + 2 * block, d, d + block,
                     d + 2 * block};
    lm_status st = LM_OK;
    for (size_t i = lo; i < hi && st == LM_OK; i += block) {
        size_t len = hi - i < block ? hi - i : block;
        st = f->wide ? block_wide(f, &w, i, len) : block_narrow(f, &w, i, len);
    }
    lm_free(f->ctx, mem);
    return st;
}

static bool same_shape(const lm_tensor *a, const lm_tensor *b)
{
    if (a->ndim != b->ndim)
        return false;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d])
            return false;
    return true;
}

/* Can tensor `name` go the fused way? Fills f's inputs when it can; *st
 * is set only by an allocation failure (any other error is the plain
 * path's to report, with its message). */
static bool eligible(const lm_plan *p, const char *name, const lm_tensor *base,
                     struct fused *f, lm_status *st)
{
    *st = LM_OK;
    if (!(lm__strategy_linear_rule(p->vt) || lm__strategy_sparse_rule(p->vt)) ||
        p->n_stages || !base->numel || !base->data ||
        p->n_models > MAX_MODELS || !lm__fused_enabled())
        return false;
    /* A non-finite value allowed in a magnitude selection: the plain
     * path's order of NaNs is not worth reproducing. */
    if (!lm__strategy_linear_rule(p->vt) && p->allow_nonfinite)
        return false;
    if (base->ndim == 2 && lm__plan_transposed(p, name))
        return false;
    f->base = base->data;
    f->base_dt = base->dtype;
    f->wide = base->dtype == LM_F64;
    f->k = p->n_models;
    bool any_adapter = false;
    for (size_t m = 0; m < p->n_models; m++) {
        if (p->loras[m] && lm__strategy_linear_rule(p->vt)) {
            /* Errors (a shape mismatch) are the plain path's to report. */
            bool found;
            *st = lm__lora_factors_load(p->ctx, p->loras[m], m, name, base,
                                        &f->lora[m], &found);
            if (*st != LM_OK) {
                if (*st != LM_ERR_OUT_OF_MEMORY)
                    *st = LM_OK;
                return false;
            }
            any_adapter = true;
            f->slot[m] = found ? LM__SLOT_ADAPTER : LM__SLOT_ZERO;
            if (!found)
                continue;
            f->by_rows = true;
            f->cols = f->lora[m].cols;
            continue;
        }
        if (p->tvs[m] || p->loras[m] || !p->models[m])
            return false;
        const lm_tensor *t = lm__model_lookup(p->models[m], name);
        if (!t || !t->data || !same_shape(base, t) ||
            !lm_dtype_size(t->dtype))
            return false;
        f->in[m] = t->data;
        f->in_dt[m] = t->dtype;
        f->wide |= t->dtype == LM_F64;
    }
    /* Adapters with an f64 input: the plain path's wide merge. */
    if (any_adapter && f->wide)
        return false;
    if (f->by_rows)
        f->block_rows = lm__lora_block_rows(f->cols);
    return true;
}

static void release(lm_context *ctx, struct fused *f)
{
    for (size_t m = 0; m < f->k; m++)
        if (f->slot[m] == LM__SLOT_ADAPTER)
            lm__lora_factors_free(ctx, &f->lora[m]);
}

/* Map an input's pages in one call instead of one fault per 16 pages
 * (MADV_POPULATE_READ, Linux 5.14; elsewhere or on failure nothing
 * happens and the pages fault in as they are read). */
static void populate(const void *data, size_t nbytes)
{
#ifdef MADV_POPULATE_READ
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t start = (uintptr_t)data / page * page;
    uintptr_t end = (uintptr_t)data + nbytes;
    (void)madvise((void *)start, end - start, MADV_POPULATE_READ);
#else
    (void)data;
    (void)nbytes;
#endif
}

/* base NULL: the base is the caller's (a merger's), not the plan's. */
static void done_with_inputs(const lm_plan *p, const char *name,
                             const lm_tensor *base)
{
    if (base && p->base->done_with)
        p->base->done_with(p->base->resource, base);
    for (size_t m = 0; m < p->n_models; m++) {
        const lm_model *model = p->models[m];
        if (model && !p->loras[m] && model->done_with)
            model->done_with(model->resource, lm__model_lookup(model, name));
    }
}

/* The output buffer: the sink's, or the worker's scratch grown to fit
 * (kept across tensors, so large outputs do not fault in fresh pages for
 * every tensor). */
static void *output_buffer(lm_context *ctx, const lm_sink_vtable *sink,
                           size_t index, size_t nbytes,
                           struct lm__fused_scratch *scratch)
{
    void *dst = sink->buffer ? sink->buffer(index, sink->user) : NULL;
    if (dst)
        return dst;
    if (scratch->size < nbytes) {
        lm_free(ctx, scratch->data);
        scratch->data = lm_alloc(ctx, nbytes);
        scratch->size = scratch->data ? nbytes : 0;
    }
    return scratch->data;
}

/* A tensor ready to go the fused way: its inputs, rule and job. */
struct prepared {
    struct fused f;
    struct lm__sparse_rule sparse;
    lm_params view;
    double *tensor_weights;
    lm_tensor_job job;
};

static void finish(lm_context *ctx, struct prepared *pr)
{
    release(ctx, &pr->f);
    lm_free(ctx, pr->tensor_weights);
    pr->tensor_weights = NULL;
}

/* *ok false: tensor `name` goes the plain way (nothing held). */
static lm_status prepare(lm_plan *p, void *state, const char *name,
                         const lm_tensor *base, struct prepared *pr, bool *ok)
{
    *ok = false;
    memset(pr, 0, sizeof(*pr));
    struct fused *f = &pr->f;
    lm_context *ctx = p->ctx;
    lm_status st;
    if (!eligible(p, name, base, f, &st)) {
        release(ctx, f);
        return st;
    }
    st = lm__tensor_job_init(p, name, base, base->shape, &pr->view,
                                       &pr->tensor_weights, &pr->job);
    if (st != LM_OK) {
        release(ctx, f);
        return st;
    }
    /* A rule that fails (weights summing to 0, ...) fails the same way in
     * merge_tensor, after the plain path's input checks: let it report. */
    lm__linear_rule_fn linear = lm__strategy_linear_rule(p->vt);
    st = linear ? linear(state, &pr->job, &f->rule)
                : lm__strategy_sparse_rule(p->vt)(state, &pr->job,
                                                  &pr->sparse);
    if (st != LM_OK || (!linear && !pr->sparse.fusable)) {
        finish(ctx, pr);
        return LM_OK;
    }
    f->sparse = linear ? NULL : &pr->sparse;
    f->ctx = ctx;
    f->w = pr->job.weights;
    f->check = !p->allow_nonfinite;
    f->n = base->numel;
    *ok = true;
    return LM_OK;
}

/* Merge into f->dst: LM_OK, an error, or DECLINE. */
static lm_status run(struct fused *f)
{
    populate(f->base, f->n * lm_dtype_size(f->base_dt));
    for (size_t m = 0; m < f->k; m++)
        if (f->slot[m] == LM__SLOT_MODEL)
            populate(f->in[m], f->n * lm_dtype_size(f->in_dt[m]));
    if (f->sparse)
        return lm__fused_sparse_run(f);
    size_t chunk = chunk_elems(f), items = (f->n + chunk - 1) / chunk;
    return items == 1 ? run_chunk(f, 0)
                      : lm__parallel_for(f->ctx, items, run_chunk, f);
}

lm_status lm__fused_merge(lm_plan *p, void *state, const char *name,
                          const lm_tensor *base, size_t index,
                          const lm_tensor_desc *out,
                          const lm_sink_vtable *sink,
                          struct lm__fused_scratch *scratch, bool *done)
{
    *done = false;
    lm_context *ctx = p->ctx;
    if (lm__fused_lora_eligible(p, name, base)) {
        /* Every task an adapter: one sgemm per row block (fused_lora.c). */
        void *dst = output_buffer(ctx, sink, index, out->nbytes, scratch);
        if (!dst)
            return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                        "out of memory for output '%s'",
                                        out->name);
        LM_TRY(lm__fused_lora_merge(p, state, name, base, dst, out->dtype,
                                    done));
        if (!*done)
            return LM_OK;
        done_with_inputs(p, name, base);
        atomic_fetch_add(&ctx->fused_tensors, 1);
        lm_status st = sink->write(index, dst, out->nbytes, sink->user);
        return st > 0 ? LM_ERR_CALLBACK : st;
    }
    struct prepared pr;
    bool ok;
    LM_TRY(prepare(p, state, name, base, &pr, &ok));
    if (!ok)
        return LM_OK;
    pr.f.out_dt = out->dtype;
    pr.f.dst = output_buffer(ctx, sink, index, out->nbytes, scratch);
    if (!pr.f.dst) {
        finish(ctx, &pr);
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory for output '%s'",
                                    out->name);
    }
    lm_status st = run(&pr.f);
    finish(ctx, &pr);
    if (st == DECLINE)
        return LM_OK;
    LM_TRY(st);
    done_with_inputs(p, name, base);
    atomic_fetch_add(&ctx->fused_tensors, 1);
    *done = true;
    st = sink->write(index, pr.f.dst, out->nbytes, sink->user);
    return st > 0 ? LM_ERR_CALLBACK : st;
}

lm_status lm__fused_merge_into(lm_plan *p, void *state, const char *name,
                               const lm_tensor *base, lm_tensor *out,
                               bool *done)
{
    *done = false;
    lm_context *ctx = p->ctx;
    if (lm__fused_lora_eligible(p, name, base)) {
        /* Straight into out, even in place: fused_lora.c merges in place
         * only when it cannot fail half-way. */
        LM_TRY(lm__fused_lora_merge(p, state, name, base, out->data,
                                    out->dtype, done));
        if (*done)
            atomic_fetch_add(&ctx->fused_tensors, 1);
        return LM_OK;
    }
    struct prepared pr;
    bool ok;
    LM_TRY(prepare(p, state, name, base, &pr, &ok));
    if (!ok)
        return LM_OK;
    size_t nbytes = out->numel * lm_dtype_size(out->dtype);
    /* In place, a block that declines (a non-finite value) or fails
     * would leave the base half overwritten: merge aside. */
    const char *o = out->data, *b = base->data;
    bool aside = o < b + base->numel *
                                           lm_dtype_size(base->dtype) &&
                 b < o + nbytes;
    pr.f.out_dt = out->dtype;
    pr.f.dst = aside ? lm_alloc(ctx, nbytes ? nbytes : 1) : out->data;
    if (!pr.f.dst) {
        finish(ctx, &pr);
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory for output '%s'", name);
    }
    lm_status st = run(&pr.f);
    finish(ctx, &pr);
    if (st == LM_OK && aside)
        memcpy(out->data, pr.f.dst, nbytes);
    if (aside)
        lm_free(ctx, pr.f.dst);
    if (st == DECLINE)
        return LM_OK;
    LM_TRY(st);
    done_with_inputs(p, name, NULL);
    atomic_fetch_add(&ctx->fused_tensors, 1);
    *done = true;
    return LM_OK;
}
