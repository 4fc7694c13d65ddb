/* Work buffers kept between uses (core/scratch.h). */
#include "core/scratch.h"

/* Larger buffers go back to the allocator: the kept ones must not pin
 * memory that grows with the model. */
#define SCRATCH_MAX ((size_t)16 << 20)

void *lm__scratch_take(lm_context *ctx, size_t size, size_t *got)
{
    void *p = NULL;
    pthread_mutex_lock(&ctx->scratch_lock);
    /* The smallest kept buffer that is large enough. */
    size_t best = LM__SCRATCH_SLOTS;
    for (size_t i = 0; i < LM__SCRATCH_SLOTS; i++)
        if (ctx->scratch[i].p && ctx->scratch[i].size >= size &&
            (best == LM__SCRATCH_SLOTS ||
             ctx->scratch[i].size < ctx->scratch[best].size))
            best = i;
    if (best < LM__SCRATCH_SLOTS) {
        p = ctx->scratch[best].p;
        *got = ctx->scratch[best].size;
        ctx->scratch[best].p = NULL;
    }
    pthread_mutex_unlock(&ctx->scratch_lock);
    if (!p) {
        p = lm_alloc(ctx, size);
        *got = size;
    }
    return p;
}

void lm__scratch_give(lm_context *ctx, void *p, size_t size)
{
    if (!p)
        return;
    if (size <= SCRATCH_MAX) {
        pthread_mutex_lock(&ctx->scratch_lock);
        /* An empty slot, else the smallest kept buffer if p is larger
         * (the next takes are most likely the same size as this one). */
        size_t at = LM__SCRATCH_SLOTS;
        for (size_t i = 0; i < LM__SCRATCH_SLOTS; i++)
            if (!ctx->scratch[i].p) {
                at = i;
                break;
            } else if (ctx->scratch[i].size < size &&
                       (at == LM__SCRATCH_SLOTS ||
                        ctx->scratch[i].size < ctx->scratch[at].size)) {
                at = i;
            }
        void *old = NULL;
        if (at < LM__SCRATCH_SLOTS) {
            old = ctx->scratch[at].p;
            ctx->scratch[at].p = p;
            ctx->scratch[at].size = size;
            p = NULL;
        }
        pthread_mutex_unlock(&ctx->scratch_lock);
        lm_free(ctx, old);
    }
    lm_free(ctx, p);
}

void lm__scratch_release(lm_context *ctx)
{
    for (size_t i = 0; i < LM__SCRATCH_SLOTS; i++) {
        lm_free(ctx, ctx->scratch[i].p);
        ctx->scratch[i].p = NULL;
    }
}
