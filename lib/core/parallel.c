/* Parallel loops inside one tensor's merge. A context has n_threads to
 * spend; executor workers and load-time merges hold one each while they
 * run, and a loop borrows only what is left, so nesting never
 * oversubscribes the machine. Each item must compute its result from its
 * own inputs alone: then which thread ran it cannot change a bit. */
#include <stdatomic.h>

#include "core/context_private.h"

/* Up to `want` of the context's idle threads, marked busy. The caller is
 * one of the busy threads: counted already when it is a worker or a
 * load-time merge, and assumed when nothing is counted (a direct call). */
static int reserve(lm_context *ctx, int want)
{
    int busy = atomic_load(&ctx->busy_threads);
    for (;;) {
        int idle = ctx->n_threads - (busy > 0 ? busy : 1);
        int take = idle < want ? idle : want;
        if (take <= 0)
            return 0;
        if (atomic_compare_exchange_weak(&ctx->busy_threads, &busy,
                                         busy + take))
            return take;
    }
}

void lm__threads_hold(lm_context *ctx, int n)
{
    atomic_fetch_add(&ctx->busy_threads, n);
}

void lm__threads_release(lm_context *ctx, int n)
{
    atomic_fetch_sub(&ctx->busy_threads, n);
}

struct loop {
    size_t n_items;
    lm__item_fn fn;
    void *arg;
    atomic_size_t next;
    atomic_bool failed;
    lm_status *status;
};

static void *run_items(void *arg)
{
    struct loop *l = arg;
    for (;;) {
        size_t i = atomic_fetch_add(&l->next, 1);
        if (i >= l->n_items || atomic_load(&l->failed))
            break;
        l->status[i] = l->fn(l->arg, i);
        if (l->status[i] != LM_OK)
            atomic_store(&l->failed, true);
    }
    return NULL;
}

/* Fixed so that starting helpers needs no allocation. */
#define MAX_HELPERS 64

lm_status lm__parallel_for(lm_context *ctx, size_t n_items, lm__item_fn fn,
                           void *arg)
{
    if (!n_items)
        return LM_OK;
    lm_status *status = lm__calloc(ctx, n_items, sizeof(*status));
    if (!status)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory for a parallel loop of "
                                    "%zu items", n_items);
    struct loop l = {.n_items = n_items, .fn = fn, .arg = arg,
                     .status = status};
    atomic_init(&l.next, 0);
    atomic_init(&l.failed, false);
    int want = n_items - 1 < MAX_HELPERS ? (int)(n_items - 1) : MAX_HELPERS;
    int helpers = want ? reserve(ctx, want) : 0;
    pthread_t threads[MAX_HELPERS];
    int started = 0;
    /* A helper that fails to start only costs time: the caller works too. */
    for (; started < helpers; started++)
        if (pthread_create(&threads[started], NULL, run_items, &l) != 0)
            break;
    if (started < helpers)
        lm__threads_release(ctx, helpers - started);
    run_items(&l);
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    lm__threads_release(ctx, started);
    /* The first failing item by index, whichever thread saw it first. */
    lm_status st = LM_OK;
    for (size_t i = 0; i < n_items && st == LM_OK; i++)
        st = status[i];
    lm_free(ctx, status);
    return st;
}
