/* The fused single-pass path for linear-combination strategies
 * (task_arithmetic, linear, average: core/linear_rule.h). The plain path
 * (tensor_merge.c) converts the base and every model to whole-tensor f32
 * copies, forms every task vector in a separate pass, calls merge_tensor,
 * adds the base back, then converts to the output dtype: k + 2 tensor-
 * sized buffers written and read again. Here each block of a few thousand
 * elements is read once from every input in its own dtype (pread from the
 * input's file, core/file_source.h, or straight from memory), combined in
 * L2-resident buffers (the kernel: core/fused_narrow.c, one build per
 * instruction set, core/simd.h) and converted once into the output,
 * which goes to the sink a read at a time when it takes ranges: memory
 * traffic is the inputs read once and the output written once.
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
#include <stddef.h>
#include <sys/mman.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "core/fused_private.h"
#include "core/fused_simd.h"

/* Block: its f32 and f64 buffers (about 70 KB) stay in L2. */
#define BLOCK LM__FUSED_BLOCK
#define CHUNK LM__FUSED_CHUNK
#define MAX_MODELS LM__FUSED_MAX_MODELS
#define DECLINE LM__FUSED_DECLINE
#define fused lm__fused
#define work lm__fused_work
#define view lm__fused_view

/* The plain path is forced with LIBMERGE_FUSED=0 (for tests and A/B
 * measurements; documented in docs/architecture.md). */
bool lm__fused_enabled(void)
{
    const char *e = getenv("LIBMERGE_FUSED");
    return !(e && strcmp(e, "0") == 0);
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

/* Elements [lo, lo + len) of src as f32: in place when src is f32. */
const float *lm__fused_load_f32(const struct lm__simd *simd, const void *src,
                                lm_dtype dt, size_t lo, size_t len,
                                float *buf)
{
    if (dt == LM_BF16) {
        simd->bf16_to_f32((const uint16_t *)src + lo, buf, len);
        return buf;
    }
    return lm__simd_load_f32(src, dt, lo, len, buf);
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

/* An input is f64: deltas are f64 differences rounded once to f32, the
 * base is added back in f64 and the sum rounded once to the output. */
static lm_status block_wide(const struct fused *f, const struct view *io,
                            struct work *w, size_t lo, size_t len)
{
    const double *b64 = lm__fused_load_f64(io->base, f->base_dt,
                                           lo - io->base_origin, len, w->b64);
    float *b = w->b;
    for (size_t j = 0; j < len; j++)
        b[j] = (float)b64[j];
    if (f->check && f->simd->any_nonfinite_f32(b, len))
        return DECLINE;
    double *acc = w->acc;
    lm__simd_acc_init(&f->rule, b, acc, len);
    for (size_t t = 0; t < f->k; t++) {
        const double *x = lm__fused_load_f64(io->in[t], f->in_dt[t],
                                             lo - io->origin[t], len, w->x64);
        float *d = w->x;
        for (size_t j = 0; j < len; j++)
            d[j] = (float)(x[j] - b64[j]);
        if (f->check && f->simd->any_nonfinite_f32(d, len))
            return DECLINE;
        double wt = f->w[t];
        for (size_t j = 0; j < len; j++)
            acc[j] += wt * (double)d[j];
    }
    char *dst = (char *)io->out +
                (lo - io->out_origin) * lm_dtype_size(f->out_dt);
    double *o = f->out_dt == LM_F64 ? (double *)dst : w->x64;
    double mul = f->rule.mul, div = f->rule.div;
    for (size_t j = 0; j < len; j++) {
        float merged = (float)(mul * (acc[j] / div));
        o[j] = b64[j] + (double)merged;
    }
    if (f->check && lm__fused_any_nonfinite_f64(o, len))
        return DECLINE;
    if (o == w->x64)
        lm_convert(o, LM_F64, dst, f->out_dt, len);
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

/* Bytes of input read per file read, all inputs together: large enough
 * that a read's cost is its copy, small enough to stay in cache for the
 * blocks that use it (bench/perf/elementwise.py measured 0.5-2 MiB). */
#define READ_BYTES ((size_t)1 << 20)

static bool read_from_file(const struct lm__file_source *s)
{
    return lm__file_source_open_ok(s);
}

size_t lm__fused_line_up(size_t bytes)
{
    return (bytes + 63) / 64 * 64;
}

size_t lm__fused_read_elems(const struct fused *f, size_t block,
                            size_t *bytes)
{
    size_t per_elem = 0, inputs = 0;
    if (read_from_file(&f->base_src)) {
        per_elem += lm_dtype_size(f->base_dt);
        inputs++;
    }
    for (size_t t = 0; t < f->k; t++)
        if (f->slot[t] == LM__SLOT_MODEL && read_from_file(&f->src[t]) &&
            !f->same_as[t]) {
            per_elem += lm_dtype_size(f->in_dt[t]);
            inputs++;
        }
    /* With nothing read from a file the step still sizes the ranges
     * handed to a ranged sink: about READ_BYTES of output each, not one
     * system call per block. */
    size_t step = per_elem ? per_elem : lm_dtype_size(f->out_dt);
    size_t n = step ? READ_BYTES / step / block * block : 0;
    n = n ? n : block;
    *bytes = n * per_elem + 64 * inputs;
    return n;
}

void lm__fused_read_inputs(const struct fused *f, char *raw, size_t lo,
                           size_t len, struct view *v)
{
    v->out = f->dst;
    v->out_origin = 0;
    v->base = f->base;
    v->base_origin = 0;
    if (read_from_file(&f->base_src)) {
        size_t sz = lm_dtype_size(f->base_dt);
        lm__file_source_read(&f->base_src, lo * sz, len * sz, raw);
        v->base = raw;
        v->base_origin = lo;
        raw += lm__fused_line_up(len * sz);
    }
    for (size_t t = 0; t < f->k; t++) {
        v->in[t] = f->in[t];
        v->origin[t] = 0;
        if (f->slot[t] != LM__SLOT_MODEL || !read_from_file(&f->src[t]))
            continue;
        if (f->same_as[t]) { /* the same bytes, read already */
            size_t j = f->same_as[t] - LM__SAME_BASE;
            v->in[t] = j ? v->in[j - 1] : v->base;
            v->origin[t] = j ? v->origin[j - 1] : v->base_origin;
            continue;
        }
        size_t sz = lm_dtype_size(f->in_dt[t]);
        lm__file_source_read(&f->src[t], lo * sz, len * sz, raw);
        v->in[t] = raw;
        v->origin[t] = lo;
        raw += lm__fused_line_up(len * sz);
    }
}

lm_status lm__fused_write_range(const lm_sink_vtable *sink, size_t index,
                                lm_dtype dt, const void *out, size_t lo,
                                size_t len)
{
    size_t sz = lm_dtype_size(dt);
    lm_status st = sink->write_range(index, (uint64_t)lo * sz, out, len * sz,
                                     sink->user);
    return st > 0 ? LM_ERR_CALLBACK : st;
}

lm_status lm__fused_hand_over(const struct fused *f, const void *out,
                              size_t lo, size_t len)
{
    return lm__fused_write_range(f->sink, f->sink_index, f->out_dt, out, lo,
                                 len);
}

/* One chunk of the tensor, with its own block and read buffers. */
static lm_status run_chunk(void *arg, size_t item)
{
    const struct fused *f = arg;
    size_t block = block_elems(f), chunk = chunk_elems(f);
    size_t lo = item * chunk, hi = lo + chunk < f->n ? lo + chunk : f->n;
    size_t raw_bytes, reads = lm__fused_read_elems(f, block, &raw_bytes);
    size_t out_bytes = f->dst ? 0 : reads * lm_dtype_size(f->out_dt);
    size_t floats = 3 * block, doubles = 3 * block;
    size_t work_bytes = lm__fused_line_up(floats * sizeof(float) +
                                doubles * sizeof(double));
    char *mem = lm_alloc(f->ctx, work_bytes + lm__fused_line_up(raw_bytes) +
                                     out_bytes);
    if (!mem)
        return lm_context_set_error(f->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory for merge buffers");
    double *d = (double *)mem;
    float *s = (float *)(d + doubles);
    char *raw = mem + work_bytes, *out = raw + lm__fused_line_up(raw_bytes);
    struct work w = {s, s + block, s + 2 * block, d, d + block,
                     d + 2 * block};
    struct view v;
    lm_status st = LM_OK;
    for (size_t r = lo; r < hi && st == LM_OK; r += reads) {
        size_t rhi = hi - r < reads ? hi : r + reads;
        lm__fused_read_inputs(f, raw, r, rhi - r, &v);
        if (!f->dst) {
            v.out = out;
            v.out_origin = r;
        }
        for (size_t i = r; i < rhi && st == LM_OK; i += block) {
            size_t len = rhi - i < block ? rhi - i : block;
            st = f->wide ? block_wide(f, &v, &w, i, len)
                         : f->simd->fused_narrow(f, &v, &w, i, len);
        }
        if (st == LM_OK && !f->dst)
            st = lm__fused_hand_over(f, out, r, rhi - r);
    }
    lm_free(f->ctx, mem);
    return st;
}

/* Can tensor `name` go the fused way? Fills f's inputs when it can; *st
 * is set only by an allocation failure (any other error is the plain
 * path's to report, with its message). */
static bool eligible(const lm_plan *p, const char *name, const lm_tensor *base,
                     struct fused *f, lm_status *st)
{
    *st = LM_OK;
    f->base_src.fd = -1;
    for (size_t m = 0; m < MAX_MODELS; m++)
        f->src[m].fd = -1;
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
        if (!t || !t->data || !lm__same_shape(base, t) ||
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
    lm__file_source_close(&f->base_src);
    for (size_t m = 0; m < f->k; m++)
        lm__file_source_close(&f->src[m]);
}

/* Same file (device and inode, as checked when each was opened), same
 * offset and dtype: the same bytes. */
static bool same_bytes(const struct lm__file_source *a, lm_dtype a_dt,
                       const struct lm__file_source *b, lm_dtype b_dt)
{
    return read_from_file(a) && read_from_file(b) && a_dt == b_dt &&
           a->offset == b->offset && a->dev == b->dev && a->ino == b->ino;
}

/* f->same_as: which file-read inputs repeat the base or an earlier one. */
static void find_repeats(struct fused *f)
{
    for (size_t m = 0; m < f->k; m++) {
        f->same_as[m] = 0;
        if (f->slot[m] != LM__SLOT_MODEL)
            continue;
        if (same_bytes(&f->src[m], f->in_dt[m], &f->base_src, f->base_dt))
            f->same_as[m] = LM__SAME_BASE;
        for (size_t j = 0; j < m && !f->same_as[m]; j++)
            if (f->slot[j] == LM__SLOT_MODEL && !f->same_as[j] &&
                same_bytes(&f->src[m], f->in_dt[m], &f->src[j], f->in_dt[j]))
                f->same_as[m] = (unsigned short)(LM__SAME_BASE + 1 + j);
        if (f->same_as[m])
            atomic_fetch_add(&f->ctx->repeated_inputs, 1);
    }
}

/* File-backed inputs are read with pread (file_source.h).
 * The base only when it is the plan's own tensor: a merger's caller may
 * hand in a tensor of its own. */
static void open_sources(const lm_plan *p, const char *name,
                         const lm_tensor *base, struct fused *f)
{
    if (p->base && lm__model_lookup(p->base, name) == base)
        lm__file_source_open(p->base, base, &f->base_src);
    for (size_t m = 0; m < f->k; m++)
        if (f->slot[m] == LM__SLOT_MODEL)
            lm__file_source_open(p->models[m],
                                 lm__model_lookup(p->models[m], name),
                                 &f->src[m]);
    find_repeats(f);
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

/* Does the sink take outputs in ranges (a write_range its struct_size
 * covers)? */
static bool takes_ranges(const lm_sink_vtable *sink)
{
    return sink->struct_size >= offsetof(lm_sink_vtable, write_range) +
                                    sizeof(sink->write_range) &&
           sink->write_range;
}

/* Where tensor `index`'s output goes: the sink's buffer; else nowhere
 * (*dst NULL) when the sink takes ranges; else the worker's scratch grown
 * to fit (kept across tensors, so large outputs do not fault in fresh
 * pages for every tensor). */
static lm_status destination(lm_context *ctx, const lm_sink_vtable *sink,
                             size_t index, const lm_tensor_desc *out,
                             struct lm__fused_scratch *scratch, void **dst)
{
    *dst = sink->buffer ? sink->buffer(index, sink->user) : NULL;
    if (*dst || takes_ranges(sink))
        return LM_OK;
    if (scratch->size < out->nbytes) {
        lm_free(ctx, scratch->data);
        scratch->data = lm_alloc(ctx, out->nbytes);
        scratch->size = scratch->data ? out->nbytes : 0;
    }
    *dst = scratch->data;
    return *dst ? LM_OK
                : lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                       "out of memory for output '%s'",
                                       out->name);
}

/* Tensor `name` merged the fused way into dst (NULL: already handed over
 * by range): the inputs are released and the output goes to the sink. */
static lm_status deliver(lm_plan *p, const char *name, const lm_tensor *base,
                         size_t index, const lm_tensor_desc *out,
                         const lm_sink_vtable *sink, const void *dst)
{
    done_with_inputs(p, name, base);
    atomic_fetch_add(&p->ctx->fused_tensors, 1);
    if (!dst) {
        atomic_fetch_add(&p->ctx->ranged_tensors, 1);
        return LM_OK;
    }
    lm_status st = sink->write(index, dst, out->nbytes, sink->user);
    return st > 0 ? LM_ERR_CALLBACK : st;
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
    f->simd = lm__simd_pick();
    pr->sparse.simd = f->simd;
    f->sparse = linear ? NULL : &pr->sparse;
    f->ctx = ctx;
    f->w = pr->job.weights;
    f->check = !p->allow_nonfinite;
    f->n = base->numel;
    open_sources(p, name, base, f);
    *ok = true;
    return LM_OK;
}

/* Merge into f->dst: LM_OK, an error, or DECLINE. */
static lm_status run(struct fused *f)
{
    if (!read_from_file(&f->base_src))
        populate(f->base, f->n * lm_dtype_size(f->base_dt));
    for (size_t m = 0; m < f->k; m++)
        if (f->slot[m] == LM__SLOT_MODEL && !read_from_file(&f->src[m]))
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
    void *dst;
    if (lm__fused_lora_eligible(p, name, base)) {
        /* Every task an adapter: one sgemm per row block (fused_lora.c). */
        LM_TRY(destination(ctx, sink, index, out, scratch, &dst));
        LM_TRY(lm__fused_lora_merge(p, state, name, base, dst, out->dtype,
                                    sink, index, done));
        return *done ? deliver(p, name, base, index, out, sink, dst) : LM_OK;
    }
    struct prepared pr;
    bool ok;
    LM_TRY(prepare(p, state, name, base, &pr, &ok));
    if (!ok)
        return LM_OK;
    lm_status st = destination(ctx, sink, index, out, scratch, &dst);
    pr.f.out_dt = out->dtype;
    pr.f.dst = dst; /* NULL: handed over by range */
    pr.f.sink = sink;
    pr.f.sink_index = index;
    if (st == LM_OK)
        st = run(&pr.f);
    finish(ctx, &pr);
    if (st == DECLINE)
        return LM_OK;
    LM_TRY(st);
    *done = true;
    return deliver(p, name, base, index, out, sink, dst);
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
                                    out->dtype, NULL, 0, done));
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
