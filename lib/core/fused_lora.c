/* The fused path for a tensor whose task vectors all come from LoRA
 * adapters under a linear rule (task_arithmetic, linear, average). The
 * plain path expands every adapter's s_t B_t A_t into a whole-tensor f32
 * task vector and then combines them: T + 2 tensor-sized buffers written
 * and read again (core/fused.c, which takes adapters mixed with models,
 * forms each adapter's rows by its own sgemm and adds them in f64). Here,
 * when every task is an adapter, the factors of all adapters are packed
 * once per tensor,
 *
 *     left  = [c_1 s_1 L_1 | ... | c_T s_T L_T]   (rows x sum r)
 *     right = [R_1; ...; R_T]                      (sum r x cols)
 *
 * (L = B, R = A; for a target stored [in, out], L = A^T, R = B^T) with
 * c_t the rule's coefficient of task t, and every block of rows is one
 * sgemm into an L2-sized f32 buffer that already holds the base:
 * out = base + left[rows] right, f32 accumulation, converted once into
 * the output dtype. The base is read once in its own dtype.
 *
 * Not bit-identical to the plain path, which rounds each adapter's
 * product to f32 before summing the tasks in f64: tests/python/
 * test_fused_lora.py bounds both against a float64 reference. Blocks
 * have a fixed number of rows (from the column count alone) and BLAS runs
 * single-threaded inside a block, so the result is the same for any
 * thread count. */
#include <cblas.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include "core/fused_private.h"
#include "core/lora_private.h"

/* Elements of one block's f32 buffer (256 KB: stays in L2 beside the
 * packed factors BLAS streams through it). */
#define BLOCK_ELEMS ((size_t)1 << 16)
/* Elements per parallel item, as the dense fused path. */
#define CHUNK_ELEMS LM__FUSED_CHUNK
#define DECLINE LM__FUSED_DECLINE

struct job {
    lm_context *ctx;
    size_t rows, cols, rank; /* rank: sum of the adapters' ranks */
    size_t block_rows, blocks_per_item;
    const float *left, *right;
    double base_extra; /* the rule's base term, as a multiple of the base */
    const void *base;
    lm_dtype base_dt;
    struct lm__file_source base_src; /* the base's file, when read so */
    void *dst; /* NULL: each block goes to sink's write_range */
    lm_dtype out_dt;
    const lm_sink_vtable *sink;
    size_t sink_index;
    bool check;
    const struct lm__simd *simd;
};

/* Does the entry's update have the base's [rows, cols]? */
static bool fits(const struct lm_lora_entry *e, const lm_tensor *base)
{
    size_t in = (size_t)e->a->shape[1], out = (size_t)e->b->shape[0];
    size_t rows = e->transposed ? in : out, cols = e->transposed ? out : in;
    return (size_t)base->shape[0] == rows && (size_t)base->shape[1] == cols;
}

bool lm__fused_lora_eligible(const lm_plan *p, const char *name,
                             const lm_tensor *base)
{
    if (!lm__strategy_linear_rule(p->vt) || p->n_stages || !base->numel ||
        !base->data || base->ndim != 2 || base->dtype == LM_F64 ||
        !lm_dtype_size(base->dtype) || !p->n_models ||
        base->shape[1] > INT_MAX / 2 || base->shape[0] > INT_MAX / 2 ||
        p->n_models > LM__FUSED_MAX_MODELS || !lm__fused_enabled())
        return false;
    for (size_t m = 0; m < p->n_models; m++) {
        if (!p->loras[m])
            return false; /* dense task vectors and models: plain path */
        const struct lm_lora_entry *e = lm__lora_entry(p->loras[m], name);
        /* A shape mismatch is the plain path's error to report. */
        if (e && !fits(e, base))
            return false;
    }
    return true;
}

static bool all_finite(const struct lm__simd *simd, const float *x, size_t n)
{
    return !simd->any_nonfinite_f32(x, n);
}

/* Pack every adapter's factors into left (scaled by coef[t] * s_t) and
 * right; DECLINE when a factor is not finite under the default policy
 * (the plain path names the adapter). */
static lm_status pack(const struct lm__simd *simd, const lm_plan *p,
                      const char *name, const lm_tensor *base,
                      const double *coef, bool check,
                      float *left, float *right, size_t rows, size_t cols,
                      size_t rank)
{
    lm_context *ctx = p->ctx;
    size_t off = 0;
    for (size_t m = 0; m < p->n_models; m++) {
        const struct lm_lora_entry *e = lm__lora_entry(p->loras[m], name);
        if (!e)
            continue;
        struct lm__lora_factors f;
        bool found;
        LM_TRY(lm__lora_factors_load(ctx, p->loras[m], m, name, base, &f,
                                     &found));
        size_t r = f.r, in = f.in, out = f.out;
        const float *fa = f.a, *fb = f.b;
        if (check && !(all_finite(simd, fa, r * in) &&
                       all_finite(simd, fb, r * out))) {
            lm__lora_factors_free(ctx, &f);
            return DECLINE;
        }
        double c = coef[m] * e->scale;
        /* left[i, off + q]: B[i, q], or A[q, i] for a transposed target. */
        for (size_t i = 0; i < rows; i++)
            for (size_t q = 0; q < r; q++) {
                float v = e->transposed ? fa[q * in + i] : fb[i * r + q];
                left[i * rank + off + q] = (float)(c * (double)v);
            }
        /* right[off + q, j]: A[q, j], or B[j, q] for a transposed target. */
        for (size_t q = 0; q < r; q++)
            for (size_t j = 0; j < cols; j++)
                right[(off + q) * cols + j] =
                    e->transposed ? fb[j * r + q] : fa[q * in + j];
        lm__lora_factors_free(ctx, &f);
        off += r;
    }
    return LM_OK;
}

/* Where a block's f32 rows, its raw base read and its converted output
 * sit in the block buffer: f32 first, then the raw base (when the base is
 * read from its file), then the output in its dtype (when handed over by
 * range and not f32). */
static size_t raw_offset(const struct job *j)
{
    return lm__fused_line_up(j->block_rows * j->cols * sizeof(float));
}

static size_t out_offset(const struct job *j)
{
    size_t raw = lm__file_source_open_ok(&j->base_src)
                     ? lm_dtype_size(j->base_dt)
                     : 0;
    return raw_offset(j) +
           lm__fused_line_up(j->block_rows * j->cols * raw);
}

static size_t block_buffer_bytes(const struct job *j)
{
    size_t out = !j->dst && j->out_dt != LM_F32 ? lm_dtype_size(j->out_dt)
                                                : 0;
    return out_offset(j) + j->block_rows * j->cols * out;
}

/* Rows [r0, r0 + m) into the output, through buf when the output is not
 * f32 or goes by range; DECLINE on a non-finite value under the default
 * policy. A base read from its file (file_source.h) comes through buf's
 * raw part. */
static lm_status block(const struct job *j, size_t r0, size_t m, float *buf)
{
    size_t n = m * j->cols, lo = r0 * j->cols;
    float *c = j->dst && j->out_dt == LM_F32 ? (float *)j->dst + lo : buf;
    const void *base = j->base;
    size_t at = lo;
    if (lm__file_source_open_ok(&j->base_src)) {
        size_t es = lm_dtype_size(j->base_dt);
        void *raw = j->base_dt == LM_F32 ? (void *)c
                                         : (void *)((char *)buf +
                                                    raw_offset(j));
        lm__file_source_read(&j->base_src, lo * es, n * es, raw);
        base = raw;
        at = 0;
    }
    const float *b = lm__fused_load_f32(j->simd, base, j->base_dt, at, n, c);
    if (b != c) /* an f32 base, not already where the output goes */
        memcpy(c, b, n * sizeof(float));
    if (j->check && j->simd->any_nonfinite_f32(c, n))
        return DECLINE;
    if (j->base_extra != 0.0)
        for (size_t e = 0; e < n; e++)
            c[e] += (float)(j->base_extra * (double)c[e]);
    if (j->rank)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m,
                    (int)j->cols, (int)j->rank, 1.0f,
                    j->left + r0 * j->rank, (int)j->rank, j->right,
                    (int)j->cols, 1.0f, c, (int)j->cols);
    if (j->check && j->simd->any_nonfinite_f32(c, n))
        return DECLINE;
    if (j->out_dt == LM_F32) /* c is the output, or goes by range */
        return j->dst ? LM_OK
                      : lm__fused_write_range(j->sink, j->sink_index,
                                              LM_F32, c, lo, n);
    void *out = j->dst ? (char *)j->dst + lo * lm_dtype_size(j->out_dt)
                       : (char *)buf + out_offset(j);
    if (j->out_dt == LM_BF16)
        j->simd->f32_to_bf16(c, out, n);
    else
        lm_convert(c, LM_F32, out, j->out_dt, n);
    return j->dst ? LM_OK
                  : lm__fused_write_range(j->sink, j->sink_index, j->out_dt,
                                          out, lo, n);
}

static lm_status item_blocks(const struct job *j, size_t item, float *buf)
{
    lm_status st = LM_OK;
    size_t first = item * j->blocks_per_item * j->block_rows;
    size_t last = first + j->blocks_per_item * j->block_rows;
    if (last > j->rows)
        last = j->rows;
    for (size_t r0 = first; r0 < last && st == LM_OK; r0 += j->block_rows) {
        size_t m = last - r0 < j->block_rows ? last - r0 : j->block_rows;
        st = block(j, r0, m, buf);
    }
    return st;
}

static float *block_buffer(const struct job *j)
{
    float *buf = lm_alloc(j->ctx, block_buffer_bytes(j));
    if (!buf)
        lm_context_set_error(j->ctx, LM_ERR_OUT_OF_MEMORY,
                             "out of memory for merge buffers");
    return buf;
}

static lm_status run_item(void *arg, size_t item)
{
    const struct job *j = arg;
    float *buf = block_buffer(j);
    if (!buf)
        return LM_ERR_OUT_OF_MEMORY;
    lm_status st = item_blocks(j, item, buf);
    lm_free(j->ctx, buf);
    return st;
}

/* In place, every allocation is made before the first write, so that a
 * failure leaves the tensor as it was: one buffer, items in order. */
static lm_status run_in_place(const struct job *j, size_t items)
{
    float *buf = block_buffer(j);
    if (!buf)
        return LM_ERR_OUT_OF_MEMORY;
    lm_status st = LM_OK;
    for (size_t i = 0; i < items && st == LM_OK; i++)
        st = item_blocks(j, i, buf);
    lm_free(j->ctx, buf);
    return st;
}

/* The largest magnitude among the base's n values, from their bits
 * (magnitudes order as integers), or INFINITY when one is not finite or
 * the dtype has no such scan. */
static float base_magnitude(const void *data, lm_dtype dt, size_t n)
{
    uint32_t top = 0;
    if (dt == LM_F32) {
        const uint32_t *u = data;
        for (size_t i = 0; i < n; i++) {
            uint32_t v = u[i] & 0x7fffffffu;
            top = v > top ? v : top;
        }
        if (top >= 0x7f800000u)
            return INFINITY;
    } else if (dt == LM_BF16 || dt == LM_F16) {
        const uint16_t *u = data;
        uint16_t t16 = 0;
        for (size_t i = 0; i < n; i++) {
            uint16_t v = (uint16_t)(u[i] & 0x7fffu);
            t16 = v > t16 ? v : t16;
        }
        if (t16 >= (dt == LM_BF16 ? 0x7f80u : 0x7c00u))
            return INFINITY;
        if (dt == LM_F16) {
            float f;
            lm_convert(&t16, LM_F16, &f, LM_F32, 1);
            return f;
        }
        top = (uint32_t)t16 << 16;
    } else {
        return INFINITY;
    }
    float f;
    memcpy(&f, &top, sizeof(f));
    return f;
}

static float max_magnitude(const float *x, size_t n)
{
    float top = 0.0f;
    for (size_t i = 0; i < n; i++)
        top = fabsf(x[i]) > top ? fabsf(x[i]) : top;
    return top;
}

/* Merging into the base's own storage must not fail half-way (the
 * tensor would be left part merged): only when the base is finite and
 * |base| (1 + |extra|) + rank max|left| max|right|, a bound on every
 * output value before rounding, is far from overflow. */
static bool cannot_fail(const struct job *j)
{
    double b = base_magnitude(j->base, j->base_dt, j->rows * j->cols);
    double lr = j->rank ? (double)j->rank *
                              max_magnitude(j->left, j->rows * j->rank) *
                              max_magnitude(j->right, j->rank * j->cols)
                        : 0.0;
    double bound = b * (1.0 + fabs(j->base_extra)) + lr;
    return isfinite(bound) && bound < 0.25 * FLT_MAX;
}

lm_status lm__fused_lora_merge(lm_plan *p, void *state, const char *name,
                               const lm_tensor *base, void *dst,
                               lm_dtype out_dt, const lm_sink_vtable *sink,
                               size_t sink_index, bool *done)
{
    *done = false;
    lm_context *ctx = p->ctx;
    /* The rule sees the tensor as the plain path's strategy would. */
    bool flip = lm__plan_transposed(p, name);
    int64_t flipped[2] = {base->shape[flip], base->shape[!flip]};
    lm_params view;
    double *tensor_weights;
    lm_tensor_job tj;
    LM_TRY(lm__tensor_job_init(p, name, base, flipped, &view,
                               &tensor_weights, &tj));
    struct lm__linear_rule rule;
    /* A rule that fails reports from the plain path, after its checks. */
    if (lm__strategy_linear_rule(p->vt)(state, &tj, &rule) != LM_OK) {
        lm_free(ctx, tensor_weights);
        return LM_OK;
    }
    size_t k = p->n_models, rows = (size_t)base->shape[0],
           cols = (size_t)base->shape[1], rank = 0;
    double coef[LM__FUSED_MAX_MODELS];
    for (size_t m = 0; m < k; m++) {
        coef[m] = rule.mul * (tj.weights[m] / rule.div);
        const struct lm_lora_entry *e = lm__lora_entry(p->loras[m], name);
        rank += e ? (size_t)e->a->shape[0] : 0;
    }
    lm_free(ctx, tensor_weights);
    struct job j = {
        .ctx = ctx, .rows = rows,
        .cols = cols, .rank = rank,
        .base_extra = rule.base_term ? rule.mul * (rule.base_coef / rule.div)
                                     : 0.0,
        .base = base->data, .base_dt = base->dtype, .dst = dst,
        .out_dt = out_dt, .sink = sink, .sink_index = sink_index,
        .check = !p->allow_nonfinite, .simd = lm__simd_pick()};
    j.base_src.fd = -1;
    j.block_rows = BLOCK_ELEMS / cols ? BLOCK_ELEMS / cols : 1;
    size_t block_elems = j.block_rows * cols;
    j.blocks_per_item = CHUNK_ELEMS / block_elems ? CHUNK_ELEMS / block_elems
                                                  : 1;
    size_t item_rows = j.blocks_per_item * j.block_rows;
    size_t items = (rows + item_rows - 1) / item_rows;
    float *packed = lm_alloc(ctx, (rows + cols) * (rank ? rank : 1) *
                                      sizeof(float));
    lm_status st = packed ? LM_OK
                       : lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                              "out of memory merging '%s'",
                                              name);
    if (st == LM_OK) {
        j.left = packed;
        j.right = packed + rows * rank;
        st = pack(j.simd, p, name, base, coef, j.check, packed,
                  packed + rows * rank, rows, cols, rank);
    }
    const char *o = dst, *b = base->data;
    bool in_place = o && o < b + base->numel * lm_dtype_size(base->dtype) &&
                    b < o + base->numel * lm_dtype_size(out_dt);
    if (st == LM_OK && j.check && in_place && !cannot_fail(&j))
        st = DECLINE;
    bool ran = st == LM_OK;
    /* Not in place (the base is then the caller's memory); the plan's own
     * base tensor only, as fused.c. */
    if (ran && !in_place && p->base && lm__model_lookup(p->base, name) == base)
        lm__file_source_open(p->base, base, &j.base_src);
    if (ran && in_place)
        st = run_in_place(&j, items);
    else if (ran)
        st = items == 1 ? run_item(&j, 0)
                        : lm__parallel_for(ctx, items, run_item, &j);
    if (st == DECLINE && ran && in_place) /* excluded by cannot_fail */
        st = lm_context_set_error(ctx, LM_ERR_INTERNAL,
                                  "fused adapters: '%s' failed in place",
                                  name);
    *done = st == LM_OK;
    if (st == DECLINE) /* the plain path merges it and reports the cause */
        st = LM_OK;
    lm__file_source_close(&j.base_src);
    lm_free(ctx, packed);
    return st;
}
