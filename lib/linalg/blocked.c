/* One factorization's level-3 BLAS spread over the context's idle threads
 * (docs/methods/svd_family.md, "How the work is spread"). OpenBLAS's own
 * threading splits a product by its thread count, so its sums could round
 * differently for 1, 2 or 8 threads; here the output is cut into blocks
 * whose bounds depend only on the matrix sizes, each block is one
 * single-threaded BLAS call, and a thread only decides which blocks it
 * runs. So the bytes are the same for any thread count. */
#include <cblas.h>

#include "linalg/linalg.h"

/* Rows of C per item: large enough that a block's BLAS call runs near
 * full speed, small enough that a 768-row product gives 2 threads 6 items
 * each (idle threads join mid-way, so more items balance better). */
#define GEMM_ROWS 64
/* Gram rows per item: the items of the upper triangle shrink from the top
 * down, so smaller blocks balance the tail. */
#define GRAM_ROWS 64

static size_t blocks_of(size_t n, size_t rows)
{
    return (n + rows - 1) / rows;
}

struct gemm_job {
    bool ta, tb;
    size_t m, n, k;
    double alpha, beta;
    const double *a, *b;
    double *c;
};

static lm_status gemm_block(void *arg, size_t i)
{
    const struct gemm_job *g = arg;
    size_t r0 = i * GEMM_ROWS, r1 = r0 + GEMM_ROWS < g->m ? r0 + GEMM_ROWS
                                                          : g->m;
    /* Rows r0.. of op(A): columns r0.. of A when transposed. */
    const double *a = g->ta ? g->a + r0 : g->a + r0 * g->k;
    cblas_dgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans,
                g->tb ? CblasTrans : CblasNoTrans, (int)(r1 - r0), (int)g->n,
                (int)g->k, g->alpha, a, g->ta ? (int)g->m : (int)g->k, g->b,
                g->tb ? (int)g->k : (int)g->n, g->beta, g->c + r0 * g->n,
                (int)g->n);
    return LM_OK;
}

lm_status lm__gemm_blocked(lm_context *ctx, bool ta, bool tb, size_t m,
                           size_t n, size_t k, double alpha, const double *a,
                           const double *b, double beta, double *c)
{
    if (!m || !n)
        return LM_OK;
    struct gemm_job g = {ta, tb, m, n, k, alpha, beta, a, b, c};
    size_t items = blocks_of(m, GEMM_ROWS);
    if (items == 1)
        return gemm_block(&g, 0);
    return lm__parallel_for(ctx, items, gemm_block, &g);
}

/* lm__gemm_blocked_f32: each item's f64 rows go through a buffer of one
 * block (at most GEMM_ROWS x n) and leave as f32, so the m x n f64
 * product never exists (on this VM a fresh page costs more than the
 * flops that fill it). */
struct gemm_f32_job {
    struct gemm_job g; /* alpha 1, beta 0; c unused */
    double scale;
    lm_context *ctx;
    float *out;
};

static lm_status gemm_block_f32(void *arg, size_t i)
{
    const struct gemm_f32_job *j = arg;
    size_t r0 = i * GEMM_ROWS, r1 = r0 + GEMM_ROWS < j->g.m ? r0 + GEMM_ROWS
                                                            : j->g.m;
    size_t n = j->g.n, count = (r1 - r0) * n;
    double *rows = lm__workspace_alloc(j->ctx, count * sizeof(double));
    if (!rows)
        return LM_ERR_OUT_OF_MEMORY;
    const struct gemm_job *g = &j->g;
    const double *a = g->ta ? g->a + r0 : g->a + r0 * g->k;
    cblas_dgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans,
                g->tb ? CblasTrans : CblasNoTrans, (int)(r1 - r0), (int)n,
                (int)g->k, 1.0, a, g->ta ? (int)g->m : (int)g->k, g->b,
                g->tb ? (int)g->k : (int)n, 0.0, rows, (int)n);
    float *out = j->out + r0 * n;
    for (size_t e = 0; e < count; e++)
        out[e] = (float)(rows[e] * j->scale);
    lm__workspace_free(j->ctx, rows);
    return LM_OK;
}

lm_status lm__gemm_blocked_f32(lm_context *ctx, bool ta, bool tb, size_t m,
                               size_t n, size_t k, const double *a,
                               const double *b, double scale, float *c)
{
    if (!m || !n)
        return LM_OK;
    struct gemm_f32_job j = {{ta, tb, m, n, k, 1.0, 0.0, a, b, NULL}, scale,
                             ctx, c};
    return lm__parallel_for(ctx, blocks_of(m, GEMM_ROWS), gemm_block_f32, &j);
}

struct gram_job {
    bool wide, single;
    size_t d, other; /* G is d x d; A is d x other (wide) or other x d */
    const void *a;
    void *g;
};

/* Rows [r0, r1) of G's upper triangle, from column r0 on:
 * G[r0:r1, r0:d] = A[r0:r1, :] A[r0:d, :]^T (wide) or
 * A[:, r0:r1]^T A[:, r0:d] (tall). The diagonal block is a full product
 * (its lower part is written and never read). */
static lm_status gram_block(void *arg, size_t i)
{
    const struct gram_job *j = arg;
    size_t d = j->d, o = j->other, r0 = i * GRAM_ROWS;
    size_t r1 = r0 + GRAM_ROWS < d ? r0 + GRAM_ROWS : d;
    int rows = (int)(r1 - r0), cols = (int)(d - r0), lda = j->wide ? (int)o
                                                                    : (int)d;
    size_t off = j->wide ? r0 * o : r0; /* row r0, or column r0, of A */
    CBLAS_TRANSPOSE ta = j->wide ? CblasNoTrans : CblasTrans;
    CBLAS_TRANSPOSE tb = j->wide ? CblasTrans : CblasNoTrans;
    if (j->single)
        cblas_sgemm(CblasRowMajor, ta, tb, rows, cols, (int)o, 1.0f,
                    (const float *)j->a + off, lda, (const float *)j->a + off,
                    lda, 0.0f, (float *)j->g + r0 * d + r0, (int)d);
    else
        cblas_dgemm(CblasRowMajor, ta, tb, rows, cols, (int)o, 1.0,
                    (const double *)j->a + off, lda,
                    (const double *)j->a + off, lda, 0.0,
                    (double *)j->g + r0 * d + r0, (int)d);
    return LM_OK;
}

static lm_status gram(lm_context *ctx, bool single, const void *a, size_t m,
                      size_t n, void *g)
{
    bool wide = m <= n;
    struct gram_job j = {wide, single, wide ? m : n, wide ? n : m, a, g};
    if (!j.d)
        return LM_OK;
    size_t items = blocks_of(j.d, GRAM_ROWS);
    if (items == 1)
        return gram_block(&j, 0);
    return lm__parallel_for(ctx, items, gram_block, &j);
}

lm_status lm__gram_upper_f64(lm_context *ctx, const double *a, size_t m,
                             size_t n, double *g)
{
    return gram(ctx, false, a, m, n, g);
}

lm_status lm__gram_upper_f32(lm_context *ctx, const float *a, size_t m,
                             size_t n, float *g)
{
    return gram(ctx, true, a, m, n, g);
}
