/* The context's private layout and the allocation, hashing and
 * threading helpers every module uses. Not installed.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LM_CORE_CONTEXT_PRIVATE_H
#define LM_CORE_CONTEXT_PRIVATE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "libmerge/context.h"
#include "libmerge/sys/strategy.h"

#define LM_ERROR_CAPACITY 1024
/* Work buffers a context keeps for reuse (core/scratch.h). */
#define LM__SCRATCH_SLOTS 8

/* Freed workspaces a context keeps for reuse during a run. */
#define WORKSPACE_SLOTS 8

struct lm_context {
    int n_threads;
    /* Threads merging for this context right now (executor workers,
     * load-time merges, parallel-loop helpers): loops borrow the rest. */
    atomic_int busy_threads;
    /* Tensors merged by the fused path (core/fused.c); tests read it to
     * know which path ran. */
    atomic_size_t fused_tensors;
    /* Inputs the fused path read with pread (core/file_source.c), and
     * tensors it handed to a sink in ranges: tests read them likewise. */
    atomic_size_t file_inputs, ranged_tensors;
    /* Inputs of a fused tensor that repeat an earlier one's file bytes
     * and take its read (core/fused.c; tests). */
    atomic_size_t repeated_inputs;
    uint64_t seed;
    lm_log_fn log;
    void *log_user;
    int log_level;
    lm_allocator allocator;
    bool has_allocator;

    pthread_mutex_t error_lock;
    lm_status error_status;
    char error[LM_ERROR_CAPACITY];
    /* A message longer than `error` holds, allocated to its size (never
     * truncated); the current message only while long_current. Freed at
     * the next failure, not when the error is cleared, so the pointer
     * lm_context_error returned stays valid until the next failure. */
    char *error_long;
    bool long_current;
    /* Counts failures set on this context, so a caller can tell whether a
     * host callback set its own message (lm__error_set_since). */
    uint64_t error_serial;

    /* Registration order; each entry individually allocated so pointers
     * handed out stay valid, with its params table normalised to the
     * current lm_param_desc layout and owned by the registry. */
    lm_strategy_vtable **strategies;
    size_t n_strategies;
    size_t cap_strategies;

    /* Work buffers kept between uses (core/scratch.h). */
    pthread_mutex_t scratch_lock;
    struct lm__scratch_slot {
        void *p;
        size_t size;
    } scratch[LM__SCRATCH_SLOTS];
    /* Per-tensor workspaces waiting for reuse while runs are active
     * (workspace.c). */
    pthread_mutex_t workspace_lock;
    int workspace_runs;
    size_t workspace_count, workspace_bytes;
    void *workspace[WORKSPACE_SLOTS];
};

/* Return early on failure. */
#define LM_TRY(expr)                     \
    do {                                 \
        lm_status lm_try_s_ = (expr);    \
        if (lm_try_s_ != LM_OK)          \
            return lm_try_s_;            \
    } while (0)


/* 64-bit mix (splitmix64 finaliser) and string hash for seeds. The
 * inline form is for per-element draws (DARE's masks), where a call per
 * element cost more than the mixing. */
static inline uint64_t lm__mix64_inline(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}
uint64_t lm__mix64(uint64_t x);
uint64_t lm__hash_string(uint64_t seed, const char *s);
/* malloc-style helpers through the context allocator. */
void *lm__calloc(lm_context *ctx, size_t n, size_t size);
char *lm__strdup(lm_context *ctx, const char *s);
/* Room for one more item in a growable array (`count` items of `size`
 * bytes, capacity *cap): the array itself, or a copy of twice the capacity
 * (`first` when empty) after freeing it. NULL, with the array and *cap
 * unchanged, when out of memory. */
void *lm__reserve(lm_context *ctx, void *items, size_t *cap, size_t count,
                  size_t size, size_t first);

/* Memory for large per-tensor buffers (workspace.c): like lm_alloc
 * (uninitialised; free with lm__workspace_free only), but between
 * lm__workspace_begin and the matching lm__workspace_end (a merge run) a
 * freed block of 1 MiB or more is kept, a bounded number of them, for a
 * later request it fits, so successive tensors reuse pages instead of
 * faulting in fresh ones. The last end frees what waits. */
void *lm__workspace_alloc(lm_context *ctx, size_t bytes);
void lm__workspace_free(lm_context *ctx, void *p);
void lm__workspace_begin(lm_context *ctx);
/* Ask for transparent huge pages over the 2 MiB-aligned part of
 * [ptr, ptr + bytes) before its first touch (workspace.c). */
void lm__huge_pages(void *ptr, size_t bytes);
void lm__workspace_end(lm_context *ctx);

/* Independent work items inside one merge (parallel.c): fn(arg, i) for
 * every i < n_items, on the calling thread plus whatever of the context's
 * threads are idle. Returns the status of the first failing item by index
 * (later items may not run once one fails). */
typedef lm_status (*lm__item_fn)(void *arg, size_t item);
lm_status lm__parallel_for(lm_context *ctx, size_t n_items, lm__item_fn fn,
                           void *arg);
/* Mark n threads as busy merging (or no longer) for ctx's budget. */
void lm__threads_hold(lm_context *ctx, int n);
void lm__threads_release(lm_context *ctx, int n);

/* Register the built-in strategies (lib/strategies/builtin.c). */
lm_status lm__register_builtin_strategies(lm_context *ctx);

/* The failure count now, and the message a failure set since `serial`
 * (a copy from the context's allocator, the caller frees it), or NULL. */
uint64_t lm__error_serial(lm_context *ctx);
char *lm__error_set_since(lm_context *ctx, uint64_t serial);

#endif /* LM_CORE_CONTEXT_PRIVATE_H */
