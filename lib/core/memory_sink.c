/* The sink behind lm_plan_execute: results become a new in-memory model,
 * written in place (no copy after conversion). */
#include "core/plan_private.h"

static lm_status mem_begin(const lm_tensor_desc *const *outputs, size_t n,
                           void *user)
{
    struct lm__memory_sink *s = user;
    LM_TRY(lm_model_create(s->ctx, &s->model));
    for (size_t i = 0; i < n; i++) {
        lm_tensor *t;
        const lm_tensor_desc *d = outputs[i];
        lm_status st = lm_tensor_create(s->ctx, d->dtype, d->ndim, d->shape,
                                        &t);
        if (st == LM_OK) {
            st = lm_model_add(s->model, d->name, t);
            if (st != LM_OK)
                lm_tensor_destroy(t);
        }
        if (st != LM_OK) {
            lm_model_destroy(s->model);
            s->model = NULL;
            return st;
        }
    }
    return LM_OK;
}

static void *mem_buffer(size_t index, void *user)
{
    struct lm__memory_sink *s = user;
    return s->model->entries[index].tensor->data;
}

static lm_status mem_write(size_t index, const void *data, size_t nbytes,
                           void *user)
{
    (void)user;
    (void)index;
    (void)data;
    (void)nbytes;
    return LM_OK; /* already in place */
}

static lm_status mem_end(int commit, void *user)
{
    struct lm__memory_sink *s = user;
    if (!commit) {
        lm_model_destroy(s->model);
        s->model = NULL;
    }
    return LM_OK;
}

void lm__memory_sink_init(struct lm__memory_sink *s, lm_context *ctx)
{
    s->ctx = ctx;
    s->model = NULL;
    s->vtable.struct_size = sizeof(s->vtable);
    s->vtable.begin = mem_begin;
    s->vtable.buffer = mem_buffer;
    s->vtable.write = mem_write;
    s->vtable.end = mem_end;
    s->vtable.user = s;
}
