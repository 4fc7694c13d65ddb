/* Whole-model magnitude thresholds by a two-pass radix selection
 * (global_topk.h). */
#include <math.h>
#include <string.h>

#include "strategies/global_topk.h"

#define BUCKETS 65536u
/* Below this many values a call counts straight into the shared
 * histogram under the lock; above, into a private one merged after. */
#define DIRECT_LIMIT 16384u

static uint32_t magnitude_bits(float v)
{
    float a = fabsf(v);
    uint32_t b;
    memcpy(&b, &a, sizeof(b));
    return b;
}

lm_status lm__global_topk_init(lm_context *ctx, struct lm__global_topk *g,
                               size_t n_tasks)
{
    memset(g, 0, sizeof(*g));
    size_t k = n_tasks ? n_tasks : 1;
    g->n_tasks = n_tasks;
    g->hist = lm__calloc(ctx, k * BUCKETS, sizeof(uint64_t));
    g->count = lm__calloc(ctx, k, sizeof(uint64_t));
    g->bucket = lm__calloc(ctx, k, sizeof(uint32_t));
    g->rank = lm__calloc(ctx, k, sizeof(uint64_t));
    g->keep_all = lm__calloc(ctx, k, sizeof(bool));
    g->threshold = lm__calloc(ctx, k, sizeof(float));
    if (!g->hist || !g->count || !g->bucket || !g->rank || !g->keep_all ||
        !g->threshold || pthread_mutex_init(&g->lock, NULL) != 0) {
        lm_free(ctx, g->hist);
        lm_free(ctx, g->count);
        lm_free(ctx, g->bucket);
        lm_free(ctx, g->rank);
        lm_free(ctx, g->keep_all);
        lm_free(ctx, g->threshold);
        memset(g, 0, sizeof(*g));
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory for whole-model "
                                    "trimming (%zu tasks)", n_tasks);
    }
    return LM_OK;
}

void lm__global_topk_free(lm_context *ctx, struct lm__global_topk *g)
{
    if (!g->hist)
        return;
    pthread_mutex_destroy(&g->lock);
    lm_free(ctx, g->hist);
    lm_free(ctx, g->count);
    lm_free(ctx, g->bucket);
    lm_free(ctx, g->rank);
    lm_free(ctx, g->keep_all);
    lm_free(ctx, g->threshold);
    memset(g, 0, sizeof(*g));
}

/* Count x into h: high halves in pass 0, low halves of the values in the
 * task's bucket in pass 1. */
static void count_into(const struct lm__global_topk *g, size_t t,
                       const float *x, size_t n, uint64_t *h)
{
    if (g->pass == 0) {
        for (size_t i = 0; i < n; i++)
            h[magnitude_bits(x[i]) >> 16]++;
        return;
    }
    uint32_t want = g->bucket[t];
    for (size_t i = 0; i < n; i++) {
        uint32_t b = magnitude_bits(x[i]);
        if (b >> 16 == want)
            h[b & 0xffffu]++;
    }
}

lm_status lm__global_topk_add(lm_context *ctx, struct lm__global_topk *g,
                              size_t t, const float *x, size_t n)
{
    if (g->pass > 1 || g->keep_all[t])
        return LM_OK;
    uint64_t *shared = g->hist + t * BUCKETS;
    if (n <= DIRECT_LIMIT) {
        pthread_mutex_lock(&g->lock);
        count_into(g, t, x, n, shared);
        if (g->pass == 0)
            g->count[t] += n;
        pthread_mutex_unlock(&g->lock);
        return LM_OK;
    }
    uint64_t *h = lm__calloc(ctx, BUCKETS, sizeof(uint64_t));
    if (!h)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory for whole-model "
                                    "trimming");
    count_into(g, t, x, n, h);
    pthread_mutex_lock(&g->lock);
    for (size_t i = 0; i < BUCKETS; i++)
        shared[i] += h[i];
    if (g->pass == 0)
        g->count[t] += n;
    pthread_mutex_unlock(&g->lock);
    lm_free(ctx, h);
    return LM_OK;
}

/* The bucket holding the value of 1-based ascending rank *rank in h;
 * *rank becomes its rank inside that bucket. */
static uint32_t find_bucket(const uint64_t *h, uint64_t *rank)
{
    uint64_t before = 0;
    for (uint32_t b = 0; b < BUCKETS; b++) {
        if (before + h[b] >= *rank) {
            *rank -= before;
            return b;
        }
        before += h[b];
    }
    return BUCKETS - 1; /* unreachable: rank <= the total count */
}

void lm__global_topk_pass_done(struct lm__global_topk *g,
                               const double *density)
{
    for (size_t t = 0; t < g->n_tasks; t++) {
        uint64_t *h = g->hist + t * BUCKETS;
        if (g->pass == 0) {
            uint64_t d = g->count[t];
            /* The official code: k = d - int(d * K), kthvalue(k). */
            uint64_t keep = (uint64_t)floor(density[t] * (double)d);
            if (d == 0 || density[t] >= 1.0 || keep >= d) {
                g->keep_all[t] = true;
            } else {
                g->rank[t] = d - keep;
                g->bucket[t] = find_bucket(h, &g->rank[t]);
            }
        } else if (g->pass == 1 && !g->keep_all[t]) {
            uint64_t r = g->rank[t];
            uint32_t bits = g->bucket[t] << 16 | find_bucket(h, &r);
            memcpy(&g->threshold[t], &bits, sizeof(float));
        }
        memset(h, 0, BUCKETS * sizeof(uint64_t));
    }
    g->pass++;
}

void lm__global_topk_trim(const struct lm__global_topk *g, size_t t, float *x,
                          size_t n)
{
    if (g->keep_all[t])
        return;
    float th = g->threshold[t];
    for (size_t i = 0; i < n; i++)
        if (!(fabsf(x[i]) >= th))
            x[i] = 0.0f;
}
