/* LoRA adapters: factor pairs per target tensor, kept factored. */
#include <math.h>
#include <cblas.h>
#include <string.h>

#include "core/lora_private.h"
#include "core/model_private.h"
#include "libmerge/lora.h"

lm_status lm_lora_create(lm_context *ctx, lm_lora **out)
{
    if (!ctx || !out)
        return LM_ERR_INVALID_ARGUMENT;
    lm_lora *l = lm__calloc(ctx, 1, sizeof(*l));
    if (!l)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "lora: out of memory");
    l->ctx = ctx;
    *out = l;
    return LM_OK;
}

void lm_lora_destroy(lm_lora *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->count; i++) {
        lm_free(l->ctx, l->entries[i].target);
        lm_tensor_destroy(l->entries[i].a);
        lm_tensor_destroy(l->entries[i].b);
    }
    lm_free(l->ctx, l->entries);
    lm__name_set_free(l->ctx, &l->targets);
    lm_free(l->ctx, l);
}

static const char *target_of(const void *entries, size_t i)
{
    return ((const struct lm_lora_entry *)entries)[i].target;
}

static const struct lm_lora_entry *find(const lm_lora *l, const char *target)
{
    size_t i = lm__name_set_find(&l->targets, target, target_of, l->entries);
    return i != SIZE_MAX ? &l->entries[i] : NULL;
}

lm_status lm_lora_add(lm_lora *l, const char *target, lm_tensor *a,
                      lm_tensor *b, double scale)
{
    if (!l || !target || !*target || !a || !b)
        return LM_ERR_INVALID_ARGUMENT;
    if (a->ndim != 2 || b->ndim != 2 || a->shape[0] != b->shape[1] ||
        a->shape[0] < 1)
        return lm_context_set_error(l->ctx, LM_ERR_SHAPE,
                                    "lora '%s': A must be [r, in] and B "
                                    "[out, r] with the same r >= 1", target);
    if (!isfinite(scale))
        return lm_context_set_error(l->ctx, LM_ERR_OUT_OF_RANGE,
                                    "lora '%s': scale is not finite", target);
    if (find(l, target))
        return lm_context_set_error(l->ctx, LM_ERR_EXISTS,
                                    "lora: target '%s' given twice", target);
    struct lm_lora_entry *e = lm__reserve(l->ctx, l->entries, &l->cap,
                                          l->count, sizeof(*e), 16);
    if (!e)
        return lm_context_set_error(l->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "lora: out of memory adding '%s'",
                                    target);
    l->entries = e;
    char *name = lm__strdup(l->ctx, target);
    if (!name)
        return lm_context_set_error(l->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "lora: out of memory adding '%s'",
                                    target);
    l->entries[l->count] = (struct lm_lora_entry){name, a, b, scale, false};
    if (lm__name_set_add(l->ctx, &l->targets, l->count, target_of,
                         l->entries) != LM_OK) {
        lm_free(l->ctx, name);
        return lm_context_set_error(l->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "lora: out of memory adding '%s'",
                                    target);
    }
    l->count++;
    return LM_OK;
}

size_t lm_lora_count(const lm_lora *l) { return l ? l->count : 0; }

static void unpack(const struct lm_lora_entry *e, const lm_tensor **a,
                   const lm_tensor **b, double *scale)
{
    if (a)
        *a = e->a;
    if (b)
        *b = e->b;
    if (scale)
        *scale = e->scale;
}

lm_status lm_lora_at(const lm_lora *l, size_t i, const char **target,
                        const lm_tensor **a, const lm_tensor **b,
                        double *scale)
{
    if (!l || i >= l->count)
        return LM_ERR_OUT_OF_RANGE;
    if (target)
        *target = l->entries[i].target;
    unpack(&l->entries[i], a, b, scale);
    return LM_OK;
}

lm_status lm_lora_find(const lm_lora *l, const char *target,
                       const lm_tensor **a, const lm_tensor **b,
                       double *scale)
{
    if (!l || !target)
        return LM_ERR_INVALID_ARGUMENT;
    const struct lm_lora_entry *e = find(l, target);
    if (!e)
        return LM_ERR_NOT_FOUND;
    unpack(e, a, b, scale);
    return LM_OK;
}

const struct lm_lora_entry *lm__lora_entry(const lm_lora *l,
                                           const char *target)
{
    return find(l, target);
}

lm_status lm_lora_set_transposed(lm_lora *l, const char *target,
                                 int transposed)
{
    if (!l || !target)
        return LM_ERR_INVALID_ARGUMENT;
    struct lm_lora_entry *e = (struct lm_lora_entry *)find(l, target);
    if (!e)
        return lm_context_set_error(l->ctx, LM_ERR_NOT_FOUND,
                                    "lora: no target '%s'", target);
    e->transposed = transposed != 0;
    return LM_OK;
}

int lm_lora_is_transposed(const lm_lora *l, const char *target)
{
    const struct lm_lora_entry *e = l && target ? find(l, target) : NULL;
    return e && e->transposed;
}

/* About 32 K elements per block (L2-sized with the fused path's other
 * buffers), and at least 16 rows so that BLAS's packing of A (r x cols
 * per call) stays small beside the block it produces. */
size_t lm__lora_block_rows(size_t cols)
{
    size_t rows = cols ? 32768 / cols : 1;
    return rows < 16 ? 16 : rows;
}

lm_status lm__lora_factors_load(lm_context *ctx, const lm_lora *l, size_t m,
                                const char *name, const lm_tensor *base,
                                struct lm__lora_factors *f, bool *found)
{
    memset(f, 0, sizeof(*f));
    const struct lm_lora_entry *e = find(l, name);
    *found = e != NULL;
    if (!e)
        return LM_OK;
    size_t r = (size_t)e->a->shape[0], in = (size_t)e->a->shape[1],
           out = (size_t)e->b->shape[0];
    size_t rows = e->transposed ? in : out, cols = e->transposed ? out : in;
    if (base->ndim != 2 || (size_t)base->shape[0] != rows ||
        (size_t)base->shape[1] != cols)
        return lm_context_set_error(ctx, LM_ERR_SHAPE,
                                    "adapter %zu: '%s' is [%zu, %zu]%s but "
                                    "the base tensor is not", m, name, rows,
                                    cols, e->transposed ? " (fan_in_fan_out)"
                                                        : "");
    float *fa = lm__calloc(ctx, r * in + r * out, sizeof(float));
    if (!fa)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory expanding adapter '%s'",
                                    name);
    *f = (struct lm__lora_factors){fa, fa + r * in, r, in, out, rows, cols,
                                   (float)e->scale, e->transposed};
    lm_status st = lm__read_f32(ctx, e->a, f->a);
    if (st == LM_OK)
        st = lm__read_f32(ctx, e->b, f->b);
    if (st != LM_OK)
        lm__lora_factors_free(ctx, f);
    return st;
}

void lm__lora_factors_free(lm_context *ctx, struct lm__lora_factors *f)
{
    lm_free(ctx, f->a);
    f->a = f->b = NULL;
}

void lm__lora_rows(const struct lm__lora_factors *f, size_t r0, size_t n,
                   float *out)
{
    /* B A is [out, in]: its rows are B's. A transposed target takes
     * A^T B^T, [in, out]: its rows are A's columns. */
    if (!f->transposed)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n,
                    (int)f->in, (int)f->r, f->scale, f->b + r0 * f->r,
                    (int)f->r, f->a, (int)f->in, 0.0f, out, (int)f->in);
    else
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasTrans, (int)n,
                    (int)f->out, (int)f->r, f->scale, f->a + r0, (int)f->in,
                    f->b, (int)f->r, 0.0f, out, (int)f->out);
}

lm_status lm__lora_delta(lm_context *ctx, const lm_lora *l, size_t m,
                         const char *name, const lm_tensor *base,
                         float *delta)
{
    struct lm__lora_factors f;
    bool found;
    LM_TRY(lm__lora_factors_load(ctx, l, m, name, base, &f, &found));
    if (!found) {
        memset(delta, 0, base->numel * sizeof(float));
        return LM_OK;
    }
    size_t step = lm__lora_block_rows(f.cols);
    for (size_t r0 = 0; r0 < f.rows; r0 += step)
        lm__lora_rows(&f, r0, f.rows - r0 < step ? f.rows - r0 : step,
                      delta + r0 * f.cols);
    lm__lora_factors_free(ctx, &f);
    return LM_OK;
}

lm_status lm_task_vector_from_lora(lm_context *ctx, const lm_lora *lora,
                                   const lm_model *base, lm_task_vector **out)
{
    if (!ctx || !lora || !base || !out)
        return LM_ERR_INVALID_ARGUMENT;
    lm_task_vector *tv = lm__calloc(ctx, 1, sizeof(*tv));
    lm_status st = tv ? lm_model_create(ctx, &tv->deltas)
                      : LM_ERR_OUT_OF_MEMORY;
    if (tv)
        tv->ctx = ctx;
    for (size_t i = 0; st == LM_OK && i < lora->count; i++) {
        const char *name = lora->entries[i].target;
        lm_tensor *b = lm__model_lookup(base, name), *d = NULL;
        if (!b) {
            st = lm_context_set_error(ctx, LM_ERR_NOT_FOUND,
                                      "task vector: the adapter targets "
                                      "'%s', which the base lacks", name);
            break;
        }
        st = lm_tensor_create(ctx, LM_F32, b->ndim, b->shape, &d);
        if (st == LM_OK)
            st = lm__lora_delta(ctx, lora, 0, name, b, d->data);
        if (st == LM_OK)
            st = lm_model_add(tv->deltas, name, d);
        else
            lm_tensor_destroy(d);
    }
    if (st != LM_OK) {
        lm_task_vector_destroy(tv);
        return st == LM_ERR_OUT_OF_MEMORY && !tv
                   ? lm_context_set_error(ctx, st, "task vector: out of "
                                                   "memory")
                   : st;
    }
    *out = tv;
    return LM_OK;
}
