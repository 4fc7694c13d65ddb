/* The fused path for sparse rules (core/sparse_rule.h: ties, dare_ties,
 * dare_linear). The plain path copies every task vector to a whole-tensor
 * f32 buffer, trims each with a quickselect over another copy of its
 * magnitudes, then combines. Here:
 *
 *  1. a sample of each trimmed task's magnitudes (SAMPLE elements at
 *     fixed strides, read straight from the inputs) brackets its
 *     threshold between two sample values lo <= hi, wide enough that the
 *     true k-th largest magnitude falls inside for any tensor but a
 *     pathological one;
 *  2. one streaming pass over every input counts per chunk the
 *     magnitudes above hi, equal to hi, equal to lo, and keeps those
 *     strictly between (a few percent of the tensor); the k-th largest
 *     is then found among those by quickselect (O(n) overall, no sort),
 *     with how many entries equal to it each chunk holds;
 *  3. one fused pass per L2 block reads every input once in its own
 *     dtype, trims (magnitude above the threshold, or equal to it while
 *     fewer than k - #above equal ones came before: lm__keep_top_k's
 *     index order), masks (DARE: the same per-index draws), combines
 *     (sign election, disjoint mean, scale), adds the base and converts
 *     once to the output dtype.
 *
 * Bit-identical to the plain path: the same f32 task vectors, the same
 * threshold (a value, so however it is found), the same kept set, and
 * the strategy's own mask and combine functions applied per block. When
 * the bracket misses (the sample lied) or the band between lo and hi is
 * too full, the tensor declines to the plain path, which is only slower.
 * Chunks are fixed by the tensor (LM__FUSED_CHUNK), not by the threads,
 * so 1 and N threads give the same bytes. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/fused_private.h"
#include "core/l1_norm.h"
#include "core/scratch.h"
#include "core/select.h"

#define BLOCK LM__FUSED_BLOCK
#define CHUNK LM__FUSED_CHUNK
#define DECLINE LM__FUSED_DECLINE
/* The L1 pass's partial sums are the plain path's blocks. */
_Static_assert(LM__FUSED_BLOCK == LM__L1_BLOCK, "L1 blocks are fused blocks");
/* Sampled magnitudes per trimmed task: a tensor this small is sampled
 * whole, so its threshold is exact before the streaming pass. The band
 * the counting pass keeps narrows as 1/sqrt(SAMPLE) (about 1.3 % of a
 * large tensor here, 2.6 % at 16384, whose band cost more than the
 * larger sample's selection). */
#define SAMPLE 65536
/* A chunk keeps at most this fraction of its elements as candidates (the
 * bracket expects about 1.3 %); more declines the tensor. */
#define CAND_DIV 8
/* Room for the candidates of one chunk and trimmed task in one buffer
 * kept between tensors (core/scratch.h): fresh memory for each would
 * fault its pages in again. A fuller band moves to its own allocation. */
#define CAND_SLICE (CHUNK / 32 + BLOCK)

/* What the streaming pass learns about one task in one chunk. */
struct chunk_task {
    size_t above, eq_hi, eq_lo; /* magnitudes > hi, == hi, == lo (< hi) */
    float *cand;                /* lo < magnitude < hi, in index order */
    size_t n_cand, cap;
    bool own; /* cand is its own allocation, not a slice of s->cand_mem */
    size_t eq_before; /* entries equal to the threshold in earlier chunks */
};

struct sparse {
    const struct lm__fused *f;
    const struct lm__sparse_rule *r;
    size_t k, items;
    bool trims; /* some task is trimmed: the counting pass ran */
    float lo[LM__SPARSE_MAX_TASKS], hi[LM__SPARSE_MAX_TASKS];
    float thr[LM__SPARSE_MAX_TASKS];
    size_t ties_left[LM__SPARSE_MAX_TASKS]; /* equal entries kept */
    struct chunk_task *ct;                  /* items x k */
    float *cand_mem; /* each chunk task's first CAND_SLICE candidates */
    size_t cand_size;
    bool l1s; /* some masked task restores its L1 norm: the L1 pass ran */
    double *l1_part; /* blocks x k x {before, after} block sums */
    double l1_scale[LM__SPARSE_MAX_TASKS];
};

/* Per-chunk block buffers, and the read buffer of the inputs read from
 * their files (core/file_source.h) with where each block finds them. */
struct bufs {
    float *b, *x, *v, *o, *rows;
    double *b64, *x64;
    void *mem;
    size_t mem_size; /* core/scratch.h's */
    char *raw;
    char *out;    /* a read's output for the sink's ranges (f->dst NULL) */
    size_t reads; /* elements per file read */
    struct lm__fused_view io;
};

static lm_status bufs_alloc(const struct lm__fused *f, struct bufs *w)
{
    size_t floats = (4 + f->k) * (size_t)BLOCK, doubles = 2 * (size_t)BLOCK;
    size_t raw_bytes, work = lm__fused_line_up(doubles * sizeof(double) +
                                               floats * sizeof(float));
    w->reads = lm__fused_read_elems(f, BLOCK, &raw_bytes);
    size_t raw = lm__fused_line_up(raw_bytes);
    size_t out = f->dst ? 0 : w->reads * lm_dtype_size(f->out_dt);
    w->mem = lm__scratch_take(f->ctx, work + raw + out, &w->mem_size);
    if (!w->mem)
        return lm_context_set_error(f->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory for merge buffers");
    w->raw = (char *)w->mem + work;
    w->out = f->dst ? NULL : w->raw + raw;
    lm__fused_read_inputs(f, w->raw, 0, 0, &w->io);
    w->b64 = w->mem;
    w->x64 = w->b64 + BLOCK;
    w->b = (float *)(w->x64 + BLOCK);
    w->x = w->b + BLOCK;
    w->v = w->x + BLOCK;
    w->o = w->v + BLOCK;
    w->rows = w->o + BLOCK;
    return LM_OK;
}

/* The base of elements [lo, lo + len) in f32 (and f64 when wide), as the
 * linear fused path and the plain path read it. */
static lm_status load_base(const struct lm__fused *f, struct bufs *w,
                           size_t lo, size_t len, const float **b,
                           const double **b64, bool check)
{
    if (!f->wide) {
        *b = lm__fused_load_f32(f->simd, w->io.base, f->base_dt,
                                lo - w->io.base_origin, len, w->b);
        *b64 = NULL;
    } else {
        *b64 = lm__fused_load_f64(w->io.base, f->base_dt,
                                  lo - w->io.base_origin, len, w->b64);
        for (size_t j = 0; j < len; j++)
            w->b[j] = (float)(*b64)[j];
        *b = w->b;
    }
    return check && f->simd->any_nonfinite_f32(*b, len) ? DECLINE : LM_OK;
}

/* Block i of chunk [lo, hi): at the start of each read (a chunk's reads
 * start at its first element, w->reads apart) its file-read inputs are
 * read and its output buffered; then the block's base is loaded. */
static lm_status begin_block(const struct lm__fused *f, struct bufs *w,
                             size_t lo, size_t hi, size_t i, size_t len,
                             const float **b, const double **b64, bool check)
{
    if ((i - lo) % w->reads == 0) {
        size_t n = hi - i < w->reads ? hi - i : w->reads;
        lm__fused_read_inputs(f, w->raw, i, n, &w->io);
        if (w->out) {
            w->io.out = w->out;
            w->io.out_origin = i;
        }
    }
    return load_base(f, w, i, len, b, b64, check);
}

/* Task t's f32 task vector on the block into d: model - base rounded to
 * f32 (narrow), or the f64 difference rounded once (wide). */
static lm_status load_delta(const struct lm__fused *f, struct bufs *w,
                            size_t t, size_t lo, size_t len, const float *b,
                            const double *b64, float *d, bool check)
{
    size_t at = lo - w->io.origin[t];
    if (!f->wide && f->in_dt[t] == LM_BF16) /* no f32 copy of the input */
        return f->simd->delta_bf16((const uint16_t *)w->io.in[t] + at, b, d,
                                   len) && check
                   ? DECLINE
                   : LM_OK;
    if (!f->wide && f->in_dt[t] == LM_F32)
        return f->simd->delta_f32((const float *)w->io.in[t] + at, b, d,
                                  len) && check
                   ? DECLINE
                   : LM_OK;
    if (!f->wide) {
        const float *x = lm__fused_load_f32(f->simd, w->io.in[t], f->in_dt[t],
                                            at, len, w->x);
        if (check && f->simd->any_nonfinite_f32(x, len))
            return DECLINE;
        f->simd->sub(x, b, d, len);
        return LM_OK;
    }
    const double *x = lm__fused_load_f64(w->io.in[t], f->in_dt[t], at, len,
                                         w->x64);
    for (size_t j = 0; j < len; j++)
        d[j] = (float)(x[j] - b64[j]);
    return check && f->simd->any_nonfinite_f32(d, len) ? DECLINE : LM_OK;
}

/* Step 1's sample positions: evenly spread and deterministic, the middle
 * of each of m runs (every index when m == n). */
static size_t sample_index(size_t j, size_t m, size_t n)
{
    return m == n ? j
                  : (size_t)(((2 * (double)j + 1) * (double)n) /
                             (2 * (double)m));
}

/* How far ahead the gather prefetches: the positions of a large tensor
 * are a page or more apart, so each load would otherwise wait on memory
 * (and its page walk) in turn. */
#define GATHER_AHEAD 16

/* Bytes per read when gathering from a file. */
#define GATHER_READ ((size_t)256 << 10)

/* One element of es bytes from `from` to `to`: a copy of fixed size
 * (memcpy of a variable size is a call, per sample). */
static inline void put(char *to, const char *from, size_t es)
{
    if (es == 2)
        memcpy(to, from, 2);
    else if (es == 4)
        memcpy(to, from, 4);
    else
        memcpy(to, from, 8);
}

/* The elements of src (es bytes each) at m sample positions, packed. */
static void gather(const void *src, size_t es, size_t m, size_t n,
                   void *dst)
{
    const char *from = src;
    char *to = dst;
    for (size_t j = 0; j < m; j++) {
        if (j + GATHER_AHEAD < m)
            __builtin_prefetch(from +
                               sample_index(j + GATHER_AHEAD, m, n) * es);
        put(to + j * es, from + sample_index(j, m, n) * es, es);
    }
}

/* The same from the input's file (core/file_source.h) when it has one
 * open: read in windows of GATHER_READ, skipping windows that hold no
 * sample. The samples of a large tensor are at most a few hundred bytes
 * apart, so this reads about the whole tensor once, which costs less
 * than touching each of its pages through the mapping (one read per
 * sample costs more again: a system call each). */
static void gather_input(const void *src, const struct lm__file_source *file,
                         size_t es, size_t m, size_t n, char *to,
                         char *window)
{
    if (!lm__file_source_open_ok(file)) {
        gather(src, es, m, n, to);
        return;
    }
    size_t win = GATHER_READ / es, j = 0;
    for (size_t lo = 0; lo < n && j < m; lo += win) {
        size_t len = n - lo < win ? n - lo : win;
        if (sample_index(j, m, n) >= lo + len)
            continue;
        lm__file_source_read(file, lo * es, len * es, window);
        for (size_t at; j < m && (at = sample_index(j, m, n)) < lo + len; j++)
            put(to + j * es, window + (at - lo) * es, es);
    }
}

/* The k-th largest of n magnitudes. Checked inputs hold no NaN (a NaN
 * declines first), so their bits order as their values; unchecked ones
 * keep the quickselect (which permutes a). */
static float kth_largest(const struct lm__fused *f, float *a, size_t n,
                         size_t k)
{
    return f->check ? lm__kth_largest_nonneg(a, n, k)
                    : lm__kth_largest(a, n, k);
}

/* Step 1: bracket task t's threshold (the keep-th largest magnitude).
 * g is f with its base and task t's input replaced by their gathered
 * sample elements (g->n == m): each sample's magnitude is then found by
 * the same loads and differences as the passes, a block at a time. */
static lm_status bracket(struct sparse *s, struct bufs *w, size_t t,
                         float *sample, const struct lm__fused *g)
{
    size_t n = s->f->n, keep = s->r->task[t].keep, m = g->n;
    for (size_t lo = 0; lo < m; lo += BLOCK) {
        size_t len = m - lo < BLOCK ? m - lo : BLOCK;
        const float *b;
        const double *b64;
        LM_TRY(load_base(g, w, lo, len, &b, &b64, g->check));
        LM_TRY(load_delta(g, w, t, lo, len, b, b64, sample + lo, g->check));
        for (size_t j = 0; j < len; j++)
            sample[lo + j] = fabsf(sample[lo + j]);
    }
    if (m == n) { /* the whole tensor: exact */
        s->lo[t] = s->hi[t] = kth_largest(s->f, sample, n, keep);
        return LM_OK;
    }
    /* The sample rank of the threshold, +-4 standard deviations of a
     * sample quantile plus a margin for discrete magnitudes. */
    double p = (double)keep / (double)n, r = p * (double)m;
    double delta = 4.0 * sqrt((double)m * p * (1.0 - p)) + 8.0;
    double hr = floor(r - delta), lr = ceil(r + delta);
    size_t k_hi = hr >= 1.0 ? (size_t)hr : 1;
    size_t k_lo = lr <= (double)m ? (size_t)lr : m;
    if (s->f->check) { /* bin edges just outside the two: one pass less */
        lm__bracket_nonneg(sample, m, k_hi, k_lo, &s->hi[t], &s->lo[t]);
    } else {
        s->hi[t] = kth_largest(s->f, sample, m, k_hi);
        s->lo[t] = kth_largest(s->f, sample, m, k_lo);
    }
    if (hr < 1.0)
        s->hi[t] = INFINITY;
    if (lr > (double)m)
        s->lo[t] = 0.0f;
    return LM_OK;
}

/* Room for `more` floats after the n_cand candidates held. */
static lm_status reserve_candidates(const struct lm__fused *f,
                                    struct chunk_task *c, size_t more)
{
    if (c->n_cand + more <= c->cap)
        return LM_OK;
    size_t cap = c->cap ? 2 * c->cap : 1024;
    if (cap < c->n_cand + more)
        cap = c->n_cand + more;
    float *grown = lm_alloc(f->ctx, cap * sizeof(float));
    if (!grown)
        return lm_context_set_error(f->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory selecting a threshold");
    if (c->n_cand)
        memcpy(grown, c->cand, c->n_cand * sizeof(float));
    if (c->own)
        lm_free(f->ctx, c->cand);
    c->cand = grown;
    c->cap = cap;
    c->own = true;
    return LM_OK;
}

/* Count one block's task vector d[0..len) against task t's bracket and
 * keep the magnitudes strictly inside it (core/sparse_kernels.c: one
 * vectorised pass; the band's few percent appended in index order). */
static lm_status count_block(const struct lm__fused *f, struct chunk_task *c,
                             float *d, size_t len, float top,
                             float bottom, size_t limit)
{
    LM_TRY(reserve_candidates(f, c, len));
    uint32_t n[4];
    f->simd->count_band(d, len, top, bottom, n, c->cand + c->n_cand);
    c->above += n[0];
    c->eq_hi += n[1];
    c->eq_lo += n[2];
    c->n_cand += n[3];
    return c->n_cand > limit ? DECLINE /* the band is too full */ : LM_OK;
}

/* Step 2 on one chunk. */
static lm_status count_chunk(void *arg, size_t item)
{
    struct sparse *s = arg;
    const struct lm__fused *f = s->f;
    size_t lo = item * CHUNK, hi = lo + CHUNK < f->n ? lo + CHUNK : f->n;
    size_t limit = (hi - lo) / CAND_DIV + 1024;
    struct bufs w;
    LM_TRY(bufs_alloc(f, &w));
    lm_status st = LM_OK;
    for (size_t i = lo; i < hi && st == LM_OK; i += BLOCK) {
        size_t len = hi - i < BLOCK ? hi - i : BLOCK;
        const float *b;
        const double *b64;
        st = begin_block(f, &w, lo, hi, i, len, &b, &b64, f->check);
        for (size_t t = 0; t < s->k && st == LM_OK; t++) {
            if (s->r->task[t].how != LM__SPARSE_TOP)
                continue;
            st = load_delta(f, &w, t, i, len, b, b64, w.v, f->check);
            if (st == LM_OK)
                st = count_block(f, &s->ct[item * s->k + t], w.v, len,
                                 s->hi[t], s->lo[t], limit);
        }
    }
    lm__scratch_give(f->ctx, w.mem, w.mem_size);
    return st;
}

/* After step 2: task t's threshold, how many entries equal to it are
 * kept, and how many of those come before each chunk. */
static lm_status settle(struct sparse *s, size_t t)
{
    const struct lm__fused *f = s->f;
    size_t keep = s->r->task[t].keep, above = 0, eq_hi = 0, eq_lo = 0,
           n_cand = 0;
    for (size_t c = 0; c < s->items; c++) {
        const struct chunk_task *x = &s->ct[c * s->k + t];
        above += x->above;
        eq_hi += x->eq_hi;
        eq_lo += x->eq_lo;
        n_cand += x->n_cand;
    }
    float thr;
    size_t greater; /* entries strictly above the threshold */
    enum { HI, BAND, LO } at;
    if (keep <= above) {
        return DECLINE; /* the threshold is above hi */
    } else if (keep <= above + eq_hi) {
        thr = s->hi[t];
        greater = above;
        at = HI;
    } else if (keep <= above + eq_hi + n_cand) {
        float *all = lm_alloc(f->ctx, n_cand * sizeof(float));
        if (!all)
            return lm_context_set_error(f->ctx, LM_ERR_OUT_OF_MEMORY,
                                        "out of memory selecting a "
                                        "threshold");
        size_t at_ = 0;
        for (size_t c = 0; c < s->items; c++) {
            const struct chunk_task *x = &s->ct[c * s->k + t];
            if (x->n_cand)
                memcpy(all + at_, x->cand, x->n_cand * sizeof(float));
            at_ += x->n_cand;
        }
        /* Strictly inside the bracket: positive, no NaN. */
        thr = lm__kth_largest_nonneg(all, n_cand, keep - above - eq_hi);
        lm_free(f->ctx, all);
        greater = above + eq_hi;
        for (size_t c = 0; c < s->items; c++) {
            const struct chunk_task *x = &s->ct[c * s->k + t];
            for (size_t j = 0; j < x->n_cand; j++)
                greater += x->cand[j] > thr;
        }
        at = BAND;
    } else if (keep <= above + eq_hi + n_cand + eq_lo) {
        thr = s->lo[t];
        greater = above + eq_hi + n_cand;
        at = LO;
    } else {
        return DECLINE; /* below lo */
    }
    s->thr[t] = thr;
    s->ties_left[t] = keep - greater;
    size_t before = 0;
    for (size_t c = 0; c < s->items; c++) {
        struct chunk_task *x = &s->ct[c * s->k + t];
        x->eq_before = before;
        if (at == HI)
            before += x->eq_hi;
        else if (at == LO)
            before += x->eq_lo;
        else
            for (size_t j = 0; j < x->n_cand; j++)
                before += x->cand[j] == thr;
    }
    return LM_OK;
}

/* The L1 pass on one chunk: each block's sums of |d_t| before and after
 * the mask, for the tasks that restore their L1 norm (core/l1_norm.h's
 * blocks: one partial sum per block, added in block order by settle_l1). */
static lm_status l1_chunk(void *arg, size_t item)
{
    struct sparse *s = arg;
    const struct lm__fused *f = s->f;
    const struct lm__sparse_rule *r = s->r;
    size_t lo = item * CHUNK, hi = lo + CHUNK < f->n ? lo + CHUNK : f->n;
    struct bufs w;
    LM_TRY(bufs_alloc(f, &w));
    lm_status st = LM_OK;
    for (size_t i = lo; i < hi && st == LM_OK; i += BLOCK) {
        size_t len = hi - i < BLOCK ? hi - i : BLOCK;
        const float *b;
        const double *b64;
        st = begin_block(f, &w, lo, hi, i, len, &b, &b64, f->check);
        double *part = s->l1_part + (i / BLOCK) * s->k * 2;
        for (size_t t = 0; t < s->k && st == LM_OK; t++) {
            if (r->task[t].how != LM__SPARSE_MASK || !r->task[t].l1)
                continue;
            st = load_delta(f, &w, t, i, len, b, b64, w.v, f->check);
            part[2 * t] = f->simd->l1_block(w.v, len);
            r->mask(r, t, w.v, len, i);
            part[2 * t + 1] = f->simd->l1_block(w.v, len);
        }
    }
    lm__scratch_give(f->ctx, w.mem, w.mem_size);
    return st;
}

/* After the L1 pass: each such task's scale, from its norms summed over
 * the blocks in order (as lm__l1_norm). */
static void settle_l1(struct sparse *s)
{
    size_t blocks = (s->f->n + BLOCK - 1) / BLOCK;
    for (size_t t = 0; t < s->k; t++) {
        s->l1_scale[t] = 1.0;
        if (s->r->task[t].how != LM__SPARSE_MASK || !s->r->task[t].l1)
            continue;
        double before = 0.0, after = 0.0;
        for (size_t blk = 0; blk < blocks; blk++) {
            before += s->l1_part[(blk * s->k + t) * 2];
            after += s->l1_part[(blk * s->k + t) * 2 + 1];
        }
        s->l1_scale[t] = lm__l1_rescale_factor(before, after);
    }
}

/* Keep magnitudes above thr, and equal ones while *seen < ties_left. */
static void trim(const struct lm__simd *simd, float *d, size_t len,
                 float thr, size_t ties_left, size_t *seen)
{
    /* A block keeps all of its equal magnitudes or none of them (low
     * precision inputs put many at the threshold), but for the one
     * block where the quota runs out: a vectorised pass, or the ordered
     * one there. */
    size_t tied = simd->count_eq(d, len, thr);
    if (*seen >= ties_left || *seen + tied <= ties_left) {
        bool keep = *seen < ties_left && tied;
        simd->trim(d, len, thr, keep);
        if (keep)
            *seen += tied;
        return;
    }
    for (size_t j = 0; j < len; j++) {
        float a = fabsf(d[j]);
        if (a > thr)
            continue;
        if (a == thr && *seen < ties_left) {
            ++*seen;
            continue;
        }
        d[j] = 0.0f;
    }
}

/* out = v + base, converted once to the output dtype at [lo, lo + len). */
static lm_status emit(const struct lm__fused *f, struct bufs *w, size_t lo,
                      size_t len, const float *b, const double *b64)
{
    const float *v = w->v;
    char *dst = (char *)w->io.out +
                (lo - w->io.out_origin) * lm_dtype_size(f->out_dt);
    if (!f->wide) {
        float *o = f->out_dt == LM_F32 ? (float *)dst : w->o;
        f->simd->add(v, b, o, len);
        if (f->check && f->simd->any_nonfinite_f32(o, len))
            return DECLINE;
        if (o == w->o && f->out_dt == LM_BF16)
            f->simd->f32_to_bf16(o, (uint16_t *)dst, len);
        else if (o == w->o)
            lm_convert(o, LM_F32, dst, f->out_dt, len);
        return LM_OK;
    }
    double *o = f->out_dt == LM_F64 ? (double *)dst : w->x64;
    for (size_t j = 0; j < len; j++)
        o[j] = b64[j] + (double)v[j];
    if (f->check && lm__fused_any_nonfinite_f64(o, len))
        return DECLINE;
    if (o == w->x64)
        lm_convert(o, LM_F64, dst, f->out_dt, len);
    return LM_OK;
}

/* Step 3 on one chunk. */
static lm_status merge_chunk(void *arg, size_t item)
{
    const struct sparse *s = arg;
    const struct lm__fused *f = s->f;
    const struct lm__sparse_rule *r = s->r;
    size_t lo = item * CHUNK, hi = lo + CHUNK < f->n ? lo + CHUNK : f->n;
    size_t seen[LM__SPARSE_MAX_TASKS];
    for (size_t t = 0; t < s->k; t++)
        seen[t] = r->task[t].how == LM__SPARSE_TOP
                      ? s->ct[item * s->k + t].eq_before
                      : 0;
    const float *rows[LM__SPARSE_MAX_TASKS];
    struct bufs w;
    LM_TRY(bufs_alloc(f, &w));
    lm_status st = LM_OK;
    for (size_t i = lo; i < hi && st == LM_OK; i += BLOCK) {
        size_t len = hi - i < BLOCK ? hi - i : BLOCK;
        const float *b;
        const double *b64;
        /* What the counting pass checked needs no second look. */
        st = begin_block(f, &w, lo, hi, i, len, &b, &b64,
                         f->check && !s->trims);
        for (size_t t = 0; t < s->k && st == LM_OK; t++) {
            float *d = w.rows + t * (size_t)BLOCK;
            bool counted = r->task[t].how == LM__SPARSE_TOP;
            st = load_delta(f, &w, t, i, len, b, b64, d,
                            f->check && !counted);
            if (r->task[t].how == LM__SPARSE_TOP)
                trim(f->simd, d, len, s->thr[t], s->ties_left[t],
                     &seen[t]);
            else if (r->task[t].how == LM__SPARSE_MASK) {
                r->mask(r, t, d, len, i);
                double scale = s->l1_scale[t];
                if (scale != 1.0) /* lm__rescale_l1's product */
                    f->simd->scale(d, len, scale);
            }
            rows[t] = d;
        }
        if (st == LM_OK) {
            r->combine(r, rows, f->w, s->k, len, w.v);
            st = emit(f, &w, i, len, b, b64);
        }
        /* The read's last block: its output to the sink. */
        size_t end = i + len;
        if (st == LM_OK && w.out && (end == hi || (end - lo) % w.reads == 0))
            st = lm__fused_hand_over(f, w.out, w.io.out_origin,
                                     end - w.io.out_origin);
    }
    lm__scratch_give(f->ctx, w.mem, w.mem_size);
    return st;
}

static lm_status run_items(const struct lm__fused *f, struct sparse *s,
                           lm__item_fn fn)
{
    return s->items == 1 ? fn(s, 0)
                         : lm__parallel_for(f->ctx, s->items, fn, s);
}

lm_status lm__fused_sparse_run(const struct lm__fused *f)
{
    struct sparse s = {.f = f, .r = f->sparse, .k = f->k};
    s.items = (f->n + CHUNK - 1) / CHUNK;
    for (size_t t = 0; t < s.k; t++) {
        s.trims |= s.r->task[t].how == LM__SPARSE_TOP;
        s.l1s |= s.r->task[t].how == LM__SPARSE_MASK && s.r->task[t].l1;
        s.l1_scale[t] = 1.0;
    }
    lm_status st = LM_OK;
    if (s.l1s) {
        size_t blocks = (f->n + BLOCK - 1) / BLOCK;
        s.l1_part = lm__calloc(f->ctx, blocks * s.k * 2, sizeof(double));
        st = s.l1_part ? run_items(f, &s, l1_chunk)
                       : lm_context_set_error(f->ctx, LM_ERR_OUT_OF_MEMORY,
                                              "out of memory for L1 norms");
        if (st == LM_OK)
            settle_l1(&s);
        lm_free(f->ctx, s.l1_part);
        s.l1_part = NULL;
    }
    if (s.trims && st == LM_OK) {
        s.ct = lm__calloc(f->ctx, s.items * s.k, sizeof(*s.ct));
        s.cand_mem = lm__scratch_take(f->ctx,
                                      s.items * s.k * CAND_SLICE *
                                          sizeof(float),
                                      &s.cand_size);
        for (size_t c = 0; s.ct && s.cand_mem && c < s.items * s.k; c++) {
            s.ct[c].cand = s.cand_mem + c * CAND_SLICE;
            s.ct[c].cap = CAND_SLICE;
        }
        size_t m = f->n < SAMPLE ? f->n : SAMPLE;
        /* f's copy that reads the sample elements, the base's and one
         * input's (at most 8 bytes each, aligned), then m magnitudes. */
        size_t head = (sizeof(*f) + 63) / 64 * 64;
        size_t mem_size;
        char *mem = lm__scratch_take(f->ctx,
                                     head + m * (16 + sizeof(float)) +
                                         GATHER_READ,
                                     &mem_size);
        struct bufs w = {0};
        st = s.ct && s.cand_mem && mem ? bufs_alloc(f, &w)
                         : lm_context_set_error(f->ctx, LM_ERR_OUT_OF_MEMORY,
                                                "out of memory selecting a "
                                                "threshold");
        if (st == LM_OK) {
            struct lm__fused *g = (struct lm__fused *)mem;
            char *base_at = mem + head, *in_at = base_at + 8 * m;
            float *sample = (float *)(in_at + 8 * m);
            memcpy(g, f, sizeof(*f));
            g->n = m;
            g->base = base_at;
            /* g's inputs are the packed samples, in memory. */
            g->base_src.fd = -1;
            for (size_t t = 0; t < s.k; t++)
                g->src[t].fd = -1;
            char *window = (char *)(sample + m);
            gather_input(f->base, &f->base_src, lm_dtype_size(f->base_dt), m,
                         f->n, base_at, window);
            for (size_t t = 0; t < s.k && st == LM_OK; t++) {
                if (s.r->task[t].how != LM__SPARSE_TOP)
                    continue;
                g->in[t] = in_at;
                gather_input(f->in[t], &f->src[t], lm_dtype_size(f->in_dt[t]),
                             m, f->n, in_at, window);
                lm__fused_read_inputs(g, NULL, 0, 0, &w.io);
                st = bracket(&s, &w, t, sample, g);
            }
        }
        lm__scratch_give(f->ctx, w.mem, w.mem_size);
        lm__scratch_give(f->ctx, mem, mem_size);
        if (st == LM_OK)
            st = run_items(f, &s, count_chunk);
        for (size_t t = 0; t < s.k && st == LM_OK; t++)
            if (s.r->task[t].how == LM__SPARSE_TOP)
                st = settle(&s, t);
        for (size_t c = 0; s.ct && c < s.items * s.k; c++)
            if (s.ct[c].own)
                lm_free(f->ctx, s.ct[c].cand);
        lm__scratch_give(f->ctx, s.cand_mem, s.cand_size);
    }
    if (st == LM_OK)
        st = run_items(f, &s, merge_chunk);
    lm_free(f->ctx, s.ct);
    return st;
}
