/* Task vectors: per-tensor f32 deltas (fine-tuned minus base). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/model_private.h"

lm_status lm__check_pair(lm_context *ctx, const char *what, const char *name,
                         const lm_tensor *base, const lm_tensor *other)
{
    if (!lm__same_shape(base, other)) {
        char a[128] = "", b[128] = "";
        for (int d = 0; d < base->ndim; d++)
            snprintf(a + strlen(a), sizeof(a) - strlen(a), "%s%lld",
                     d ? "," : "", (long long)base->shape[d]);
        for (int d = 0; d < other->ndim; d++)
            snprintf(b + strlen(b), sizeof(b) - strlen(b), "%s%lld",
                     d ? "," : "", (long long)other->shape[d]);
        return lm_context_set_error(ctx, LM_ERR_SHAPE,
                                    "%s: tensor '%s' has shape [%s] but the "
                                    "base has [%s]", what, name, b, a);
    }
    return LM_OK;
}

static lm_status make_delta(lm_context *ctx, const lm_tensor *b,
                            const lm_tensor *f, lm_tensor **out)
{
    lm_tensor *d;
    LM_TRY(lm_tensor_create(ctx, LM_F32, b->ndim, b->shape, &d));
    float *dst = d->data;
    if (b->lazy_read || f->lazy_read) {
        /* Host-provided bytes: read both in f32 and subtract there. */
        float *fb = lm__calloc(ctx, b->numel ? b->numel : 1, sizeof(float));
        lm_status st = fb ? lm__read_f32(ctx, b, fb) : LM_ERR_OUT_OF_MEMORY;
        if (st == LM_OK)
            st = lm__read_f32(ctx, f, dst);
        for (size_t i = 0; st == LM_OK && i < b->numel; i++)
            dst[i] -= fb[i];
        lm_free(ctx, fb);
        if (st != LM_OK) {
            lm_tensor_destroy(d);
            return st;
        }
    } else if (b->dtype == LM_F64) {
        const double *bd = b->data, *fd = f->data;
        for (size_t i = 0; i < b->numel; i++)
            dst[i] = (float)(fd[i] - bd[i]);
    } else {
        /* f16/bf16/f32 values are exact in double, so the difference is
         * rounded only once. */
        for (size_t i = 0; i < b->numel; i++) {
            double bv, fv;
            lm_convert((const char *)b->data + i * lm_dtype_size(b->dtype),
                       b->dtype, &bv, LM_F64, 1);
            lm_convert((const char *)f->data + i * lm_dtype_size(f->dtype),
                       f->dtype, &fv, LM_F64, 1);
            dst[i] = (float)(fv - bv);
        }
    }
    *out = d;
    return LM_OK;
}

lm_status lm_task_vector_create(lm_context *ctx, const lm_model *base,
                                const lm_model *finetuned,
                                lm_task_vector **out)
{
    if (!ctx || !base || !finetuned || !out)
        return LM_ERR_INVALID_ARGUMENT;
    for (size_t i = 0; i < finetuned->count; i++) {
        lm_tensor *t;
        if (lm_model_find(base, finetuned->entries[i].name, &t) != LM_OK)
            return lm_context_set_error(ctx, LM_ERR_NOT_FOUND,
                                        "task vector: tensor '%s' of the "
                                        "fine-tuned model is not in the base",
                                        finetuned->entries[i].name);
    }
    lm_task_vector *tv = lm__calloc(ctx, 1, sizeof(*tv));
    if (!tv)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "task vector: out of memory");
    tv->ctx = ctx;
    lm_status st = lm_model_create(ctx, &tv->deltas);
    for (size_t i = 0; st == LM_OK && i < base->count; i++) {
        const char *name = base->entries[i].name;
        const lm_tensor *b = base->entries[i].tensor;
        lm_tensor *f, *d = NULL;
        if (lm_model_find(finetuned, name, &f) != LM_OK) {
            st = lm_context_set_error(ctx, LM_ERR_NOT_FOUND,
                                      "task vector: base tensor '%s' is "
                                      "missing from the fine-tuned model",
                                      name);
            break;
        }
        st = lm__check_pair(ctx, "task vector", name, b, f);
        if (st == LM_OK)
            st = make_delta(ctx, b, f, &d);
        if (st == LM_OK) {
            st = lm_model_add(tv->deltas, name, d);
            if (st != LM_OK)
                lm_tensor_destroy(d);
        }
    }
    if (st != LM_OK) {
        lm_task_vector_destroy(tv);
        return st;
    }
    *out = tv;
    return LM_OK;
}

void lm_task_vector_destroy(lm_task_vector *tv)
{
    if (!tv)
        return;
    lm_model_destroy(tv->deltas);
    lm_free(tv->ctx, tv);
}

size_t lm_task_vector_count(const lm_task_vector *tv)
{
    return tv ? lm_model_count(tv->deltas) : 0;
}

const char *lm_task_vector_name_at(const lm_task_vector *tv, size_t i)
{
    return tv ? lm_model_name_at(tv->deltas, i) : NULL;
}

lm_status lm_task_vector_find(const lm_task_vector *tv, const char *name,
                              const lm_tensor **out)
{
    if (!tv || !name || !out)
        return LM_ERR_INVALID_ARGUMENT;
    lm_tensor *t;
    LM_TRY(lm_model_find(tv->deltas, name, &t));
    *out = t;
    return LM_OK;
}

static lm_status new_task_vector(lm_context *ctx, lm_task_vector **out)
{
    lm_task_vector *tv = lm__calloc(ctx, 1, sizeof(*tv));
    if (!tv || lm_model_create(ctx, &tv->deltas) != LM_OK) {
        lm_free(ctx, tv);
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "task vector: out of memory");
    }
    tv->ctx = ctx;
    *out = tv;
    return LM_OK;
}

/* An f32 copy of t (values rounded once from f64). */
static lm_status f32_copy(lm_context *ctx, const lm_tensor *t, lm_tensor **out)
{
    LM_TRY(lm_tensor_create(ctx, LM_F32, t->ndim, t->shape, out));
    lm_status st = lm__read_f32(ctx, t, (*out)->data);
    if (st != LM_OK) {
        lm_tensor_destroy(*out);
        *out = NULL;
    }
    return st;
}

/* Adds t (taking it, destroyed on failure) under name. */
static lm_status add_delta(lm_task_vector *tv, const char *name,
                           lm_tensor *t)
{
    lm_status st = lm_model_add(tv->deltas, name, t);
    if (st != LM_OK)
        lm_tensor_destroy(t);
    return st;
}

lm_status lm_task_vector_from_model(lm_context *ctx, const lm_model *deltas,
                                    lm_task_vector **out)
{
    if (!ctx || !deltas || !out)
        return LM_ERR_INVALID_ARGUMENT;
    if (!deltas->count)
        return lm_context_set_error(ctx, LM_ERR_INVALID_ARGUMENT,
                                    "task vector: the model has no tensors");
    lm_task_vector *tv = NULL;
    LM_TRY(new_task_vector(ctx, &tv));
    lm_status st = LM_OK;
    for (size_t i = 0; st == LM_OK && i < deltas->count; i++) {
        lm_tensor *copy = NULL;
        st = f32_copy(ctx, deltas->entries[i].tensor, &copy);
        if (st == LM_OK)
            st = add_delta(tv, deltas->entries[i].name, copy);
    }
    if (st != LM_OK) {
        lm_task_vector_destroy(tv);
        return st;
    }
    *out = tv;
    return LM_OK;
}

lm_status lm_task_vector_scale(lm_task_vector *tv, double factor)
{
    if (!tv)
        return LM_ERR_INVALID_ARGUMENT;
    if (!isfinite(factor))
        return lm_context_set_error(tv->ctx, LM_ERR_OUT_OF_RANGE,
                                    "task vector: scale %g is not finite",
                                    factor);
    for (size_t i = 0; i < tv->deltas->count; i++) {
        lm_tensor *t = tv->deltas->entries[i].tensor;
        float *x = t->data;
        for (size_t k = 0; k < t->numel; k++)
            x[k] = (float)((double)x[k] * factor);
    }
    return LM_OK;
}

lm_status lm_task_vector_to_model(const lm_task_vector *tv, lm_model **out)
{
    if (!tv || !out)
        return LM_ERR_INVALID_ARGUMENT;
    lm_model *m;
    LM_TRY(lm_model_create(tv->ctx, &m));
    lm_status st = LM_OK;
    for (size_t i = 0; st == LM_OK && i < tv->deltas->count; i++) {
        lm_tensor *copy = NULL;
        st = f32_copy(tv->ctx, tv->deltas->entries[i].tensor, &copy);
        if (st == LM_OK) {
            st = lm_model_add(m, tv->deltas->entries[i].name, copy);
            if (st != LM_OK)
                lm_tensor_destroy(copy);
        }
    }
    if (st != LM_OK) {
        lm_model_destroy(m);
        return st;
    }
    *out = m;
    return LM_OK;
}
