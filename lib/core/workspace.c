/* Large per-tensor workspaces kept for reuse while a plan runs (the fused
 * paths' chunk buffers, a megabyte or so kept for the context's lifetime,
 * are core/scratch.c's). glibc hands blocks above its mmap threshold back
 * to the OS on free, so each tensor's buffers (its input block, an SVD
 * method's f64 copies and factors) were fresh pages, every page a fault:
 * on the 2-core VM of docs/benchmarks/svd.md about a third of Iso-C's CPU
 * time. Freed blocks of at least WORKSPACE_MIN bytes wait here (at most
 * WORKSPACE_SLOTS of them, WORKSPACE_BYTES in all, so the retained memory
 * does not grow with the number of tensors) for a later request they fit,
 * until the last run of the context ends (lm__workspace_end). Outside a
 * run nothing is kept.
 *
 * Fresh blocks of 2 MiB or more also ask for transparent huge pages: on
 * that VM a first touch costs about 4 ms per MiB in 4 KiB faults, about
 * 3 ms in 2 MiB ones, and a huge page freed and taken again in the same
 * process about 0.2 ms (a C loop touching 32-64 MiB blocks; the svd.md
 * benchmark runs each merge in a fresh process). */
#define _DEFAULT_SOURCE /* madvise */
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "core/context_private.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LM_WORKSPACE_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define LM_WORKSPACE_ASAN 1
#endif
#ifdef LM_WORKSPACE_ASAN
#include <sanitizer/asan_interface.h>
/* A waiting block and a reused block's tail beyond the request stay
 * poisoned, so ASan still reports reads and writes past a request. */
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define WORKSPACE_MIN ((size_t)1 << 20)
#define WORKSPACE_BYTES ((size_t)1 << 30)
/* The header in front of every block: its capacity, padded so the data
 * keeps malloc's alignment for any type (and a cache line's). */
#define HEADER 64

void lm__huge_pages(void *ptr, size_t bytes)
{
#ifdef MADV_HUGEPAGE
    /* Advice only (THP in "madvise" mode): any failure is harmless. */
    const uintptr_t huge = (uintptr_t)2 << 20;
    uintptr_t start = ((uintptr_t)ptr + huge - 1) & ~(huge - 1),
              end = ((uintptr_t)ptr + bytes) & ~(huge - 1);
    if (end > start)
        (void)madvise((void *)start, end - start, MADV_HUGEPAGE);
#else
    (void)ptr;
    (void)bytes;
#endif
}

static size_t capacity(const void *p)
{
    size_t cap;
    memcpy(&cap, (const char *)p - HEADER, sizeof(cap));
    return cap;
}

void *lm__workspace_alloc(lm_context *ctx, size_t bytes)
{
    if (bytes == 0)
        bytes = 1;
    if (bytes >= WORKSPACE_MIN) {
        pthread_mutex_lock(&ctx->workspace_lock);
        /* The smallest waiting block that holds the request, if it is not
         * more than twice as large (a small request would pin a big
         * block that a later big one then allocates afresh). */
        size_t best = WORKSPACE_SLOTS;
        for (size_t i = 0; i < ctx->workspace_count; i++) {
            size_t cap = capacity(ctx->workspace[i]);
            if (cap >= bytes && cap / 2 <= bytes &&
                (best == WORKSPACE_SLOTS ||
                 cap < capacity(ctx->workspace[best])))
                best = i;
        }
        void *p = NULL;
        if (best != WORKSPACE_SLOTS) {
            p = ctx->workspace[best];
            ctx->workspace_bytes -= capacity(p);
            ctx->workspace[best] = ctx->workspace[--ctx->workspace_count];
        }
        pthread_mutex_unlock(&ctx->workspace_lock);
        if (p) {
            UNPOISON(p, bytes);
            return p;
        }
    }
    if (bytes > SIZE_MAX - HEADER)
        return NULL;
    char *raw = lm_alloc(ctx, bytes + HEADER);
    if (!raw)
        return NULL;
    memcpy(raw, &bytes, sizeof(bytes));
    lm__huge_pages(raw + HEADER, bytes);
    return raw + HEADER;
}

void lm__workspace_free(lm_context *ctx, void *p)
{
    if (!p)
        return;
    size_t cap = capacity(p);
    if (cap >= WORKSPACE_MIN) {
        pthread_mutex_lock(&ctx->workspace_lock);
        bool keep = ctx->workspace_runs > 0 &&
                    ctx->workspace_count < WORKSPACE_SLOTS &&
                    cap <= WORKSPACE_BYTES - ctx->workspace_bytes;
        if (keep) {
            ctx->workspace[ctx->workspace_count++] = p;
            ctx->workspace_bytes += cap;
            POISON(p, cap);
        }
        pthread_mutex_unlock(&ctx->workspace_lock);
        if (keep)
            return;
    }
    lm_free(ctx, (char *)p - HEADER);
}

void lm__workspace_begin(lm_context *ctx)
{
    pthread_mutex_lock(&ctx->workspace_lock);
    ctx->workspace_runs++;
    pthread_mutex_unlock(&ctx->workspace_lock);
}

void lm__workspace_end(lm_context *ctx)
{
    pthread_mutex_lock(&ctx->workspace_lock);
    size_t count = 0;
    void *drop[WORKSPACE_SLOTS];
    if (--ctx->workspace_runs == 0) {
        count = ctx->workspace_count;
        memcpy(drop, ctx->workspace, count * sizeof(void *));
        ctx->workspace_count = 0;
        ctx->workspace_bytes = 0;
    }
    pthread_mutex_unlock(&ctx->workspace_lock);
    for (size_t i = 0; i < count; i++) {
        UNPOISON((char *)drop[i] - HEADER, HEADER);
        lm_free(ctx, (char *)drop[i] - HEADER);
    }
}
