/* Context lifetime, allocation, logging and the last-error record. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/context_private.h"
#include "core/scratch.h"

/* The first published lm_context_options ended after `allocator`; smaller
 * structs cannot come from any released header. */
#define LM_CONTEXT_OPTIONS_V1_SIZE \
    (offsetof(lm_context_options, allocator) + sizeof(const lm_allocator *))

static int online_cores(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (n > 256 ? 256 : (int)n);
}

void lm_context_options_init(lm_context_options *options)
{
    if (options)
        *options = (lm_context_options)LM_CONTEXT_OPTIONS_INIT;
}

/* The context's own block, back to the allocator it came from. */
static void free_block(lm_context *ctx)
{
    if (ctx->has_allocator)
        ctx->allocator.free(ctx, ctx->allocator.user);
    else
        free(ctx);
}

lm_status lm_context_create(const lm_context_options *options, lm_context **out)
{
    if (!out)
        return LM_ERR_INVALID_ARGUMENT;
    lm_context_options opts = LM_CONTEXT_OPTIONS_INIT;
    if (options) {
        if (options->struct_size < LM_CONTEXT_OPTIONS_V1_SIZE)
            return LM_ERR_ABI;
        /* A newer caller's fields beyond what we know are ignored only when
         * they are zero: otherwise the caller asked for something we can't
         * do. */
        if (options->struct_size > sizeof(opts)) {
            const unsigned char *extra =
                (const unsigned char *)options + sizeof(opts);
            for (size_t i = 0; i < options->struct_size - sizeof(opts); i++)
                if (extra[i])
                    return LM_ERR_ABI;
        }
        memcpy(&opts, options, sizeof(opts));
        opts.struct_size = sizeof(opts);
    }
    if (opts.n_threads < 0)
        return LM_ERR_INVALID_ARGUMENT;
    if (opts.allocator) {
        if (opts.allocator->struct_size < sizeof(lm_allocator) ||
            !opts.allocator->alloc || !opts.allocator->free)
            return LM_ERR_INVALID_ARGUMENT;
    }

    lm_context *ctx;
    if (opts.allocator)
        ctx = opts.allocator->alloc(sizeof(*ctx), opts.allocator->user);
    else
        ctx = malloc(sizeof(*ctx));
    if (!ctx)
        return LM_ERR_OUT_OF_MEMORY;
    memset(ctx, 0, sizeof(*ctx));
    atomic_init(&ctx->busy_threads, 0);
    atomic_init(&ctx->fused_tensors, 0);
    ctx->n_threads = opts.n_threads ? opts.n_threads : online_cores();
    ctx->seed = opts.seed;
    ctx->log = opts.log;
    ctx->log_user = opts.log_user;
    ctx->log_level = opts.log_level;
    if (opts.allocator) {
        ctx->allocator = *opts.allocator;
        ctx->has_allocator = true;
    }
    pthread_mutex_t *locks[] = {&ctx->error_lock, &ctx->scratch_lock,
                                &ctx->workspace_lock};
    for (size_t i = 0; i < sizeof(locks) / sizeof(locks[0]); i++)
        if (pthread_mutex_init(locks[i], NULL) != 0) {
            while (i--)
                pthread_mutex_destroy(locks[i]);
            free_block(ctx);
            return LM_ERR_INTERNAL;
        }
    lm_status st = lm__register_builtin_strategies(ctx);
    if (st != LM_OK) {
        lm_context_destroy(ctx);
        return st;
    }
    *out = ctx;
    return LM_OK;
}

void lm_context_destroy(lm_context *ctx)
{
    if (!ctx)
        return;
    for (size_t i = 0; i < ctx->n_strategies; i++) {
        lm_free(ctx, (void *)ctx->strategies[i]->params);
        lm_free(ctx, ctx->strategies[i]);
    }
    lm_free(ctx, ctx->strategies);
    lm__scratch_release(ctx);
    pthread_mutex_destroy(&ctx->scratch_lock);
    pthread_mutex_destroy(&ctx->workspace_lock);
    pthread_mutex_destroy(&ctx->error_lock);
    lm_free(ctx, ctx->error_long);
    free_block(ctx);
}

int lm_context_threads(const lm_context *ctx) { return ctx ? ctx->n_threads : 1; }

uint64_t lm_context_seed(const lm_context *ctx) { return ctx ? ctx->seed : 0; }

static const char *current_error(const lm_context *ctx)
{
    return ctx->long_current ? ctx->error_long : ctx->error;
}

const char *lm_context_error(const lm_context *ctx)
{
    return ctx ? current_error(ctx) : "";
}

lm_status lm_context_error_status(const lm_context *ctx)
{
    if (!ctx)
        return LM_ERR_INVALID_ARGUMENT;
    lm_context *c = (lm_context *)ctx;
    pthread_mutex_lock(&c->error_lock);
    lm_status st = c->error_status;
    pthread_mutex_unlock(&c->error_lock);
    return st;
}

uint64_t lm__error_serial(lm_context *ctx)
{
    pthread_mutex_lock(&ctx->error_lock);
    uint64_t serial = ctx->error_serial;
    pthread_mutex_unlock(&ctx->error_lock);
    return serial;
}

char *lm__error_set_since(lm_context *ctx, uint64_t serial)
{
    char *copy = NULL;
    pthread_mutex_lock(&ctx->error_lock);
    if (ctx->error_serial != serial) {
        const char *text = current_error(ctx);
        size_t len = strlen(text);
        copy = lm_alloc(ctx, len + 1);
        if (copy)
            memcpy(copy, text, len + 1);
    }
    pthread_mutex_unlock(&ctx->error_lock);
    return copy;
}

size_t lm_context_copy_error(const lm_context *ctx, char *buf, size_t size)
{
    if (!ctx) {
        if (buf && size)
            buf[0] = '\0';
        return 0;
    }
    lm_context *c = (lm_context *)ctx;
    pthread_mutex_lock(&c->error_lock);
    const char *text = current_error(c);
    size_t len = strlen(text);
    if (buf && size) {
        size_t n = len < size - 1 ? len : size - 1;
        memcpy(buf, text, n);
        buf[n] = '\0';
    }
    pthread_mutex_unlock(&c->error_lock);
    return len;
}

void lm_context_clear_error(lm_context *ctx)
{
    if (!ctx)
        return;
    pthread_mutex_lock(&ctx->error_lock);
    ctx->error_status = LM_OK;
    ctx->error[0] = '\0';
    ctx->long_current = false;
    pthread_mutex_unlock(&ctx->error_lock);
}

/* `format` printed in full: into `small` when it fits, else into a new
 * buffer from the context's allocator (NULL: *len says how long). */
static char *format_full(lm_context *ctx, char *small, size_t small_size,
                         size_t *len, const char *format, va_list ap)
{
    va_list again;
    va_copy(again, ap);
    int n = vsnprintf(small, small_size, format, ap);
    char *big = NULL;
    if (n >= 0 && (size_t)n >= small_size &&
        (big = lm_alloc(ctx, (size_t)n + 1)) != NULL)
        vsnprintf(big, (size_t)n + 1, format, again);
    va_end(again);
    *len = n < 0 ? 0 : (size_t)n;
    return big;
}

lm_status lm_context_set_error(lm_context *ctx, lm_status status,
                               const char *format, ...)
{
    if (!ctx)
        return status;
    char msg[LM_ERROR_CAPACITY];
    size_t len;
    va_list ap;
    va_start(ap, format);
    /* Out of memory for a long message keeps its first part. */
    char *big = format_full(ctx, msg, sizeof(msg), &len, format, ap);
    va_end(ap);
    pthread_mutex_lock(&ctx->error_lock);
    ctx->error_status = status;
    memcpy(ctx->error, msg, sizeof(msg));
    char *old = ctx->error_long;
    ctx->error_long = big;
    ctx->long_current = big != NULL;
    ctx->error_serial++;
    pthread_mutex_unlock(&ctx->error_lock);
    lm_free(ctx, old);
    lm_log(ctx, LM_LOG_ERROR, "%s", big ? big : msg);
    return status;
}

void lm_log(lm_context *ctx, int level, const char *format, ...)
{
    if (!ctx || !ctx->log || level > ctx->log_level)
        return;
    char msg[LM_ERROR_CAPACITY];
    size_t len;
    va_list ap;
    va_start(ap, format);
    char *big = format_full(ctx, msg, sizeof(msg), &len, format, ap);
    va_end(ap);
    ctx->log(level, big ? big : msg, ctx->log_user);
    lm_free(ctx, big);
}

void *lm_alloc(lm_context *ctx, size_t size)
{
    if (size == 0)
        size = 1;
    if (ctx && ctx->has_allocator)
        return ctx->allocator.alloc(size, ctx->allocator.user);
    return malloc(size);
}

void lm_free(lm_context *ctx, void *ptr)
{
    if (!ptr)
        return;
    if (ctx && ctx->has_allocator)
        ctx->allocator.free(ptr, ctx->allocator.user);
    else
        free(ptr);
}

void *lm__calloc(lm_context *ctx, size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size)
        return NULL;
    size_t bytes = n * size;
    void *p = lm_alloc(ctx, bytes);
    if (p)
        memset(p, 0, bytes > 0 ? bytes : 1);
    return p;
}

char *lm__strdup(lm_context *ctx, const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = lm_alloc(ctx, n);
    if (p)
        memcpy(p, s, n);
    return p;
}

void *lm__reserve(lm_context *ctx, void *items, size_t *cap, size_t count,
                  size_t size, size_t first)
{
    if (count < *cap)
        return items;
    size_t grown_cap = *cap ? *cap * 2 : first;
    void *grown = lm__calloc(ctx, grown_cap, size);
    if (!grown)
        return NULL;
    if (count)
        memcpy(grown, items, count * size);
    lm_free(ctx, items);
    *cap = grown_cap;
    return grown;
}

uint64_t lm__mix64(uint64_t x)
{
    return lm__mix64_inline(x);
}

uint64_t lm__hash_string(uint64_t seed, const char *s)
{
    /* FNV-1a over the bytes, then mixed with the seed. */
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    return lm__mix64(h ^ lm__mix64(seed));
}
