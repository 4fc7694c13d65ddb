/* Weights stored transposed, [in, out] (GPT-2's Conv1D layers): strategies
 * that read a matrix's orientation (ESM's input statistics, the SVD
 * family's left/right spaces, KnOTS, purification) must see them as
 * [out, in] like every other layer. A tensor flagged here is transposed
 * after its inputs are read and its result transposed back before it is
 * written, so every strategy and stage sees the usual layout; elementwise
 * merges are unchanged (up to where DARE's random masks land). */
#include <string.h>

#include "core/plan_private.h"

static const char *name_at(const void *table, size_t i)
{
    return ((const char *const *)table)[i];
}

lm_status lm_plan_set_transposed(lm_plan *p, const char *tensor)
{
    if (!p || !tensor || !*tensor)
        return LM_ERR_INVALID_ARGUMENT;
    if (lm__plan_transposed(p, tensor))
        return LM_OK;
    char **names = lm__reserve(p->ctx, p->transposed, &p->cap_transposed,
                               p->n_transposed, sizeof(*names), 16);
    if (!names)
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "plan: out of memory");
    p->transposed = names;
    char *copy = lm__strdup(p->ctx, tensor);
    if (!copy)
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "plan: out of memory");
    p->transposed[p->n_transposed] = copy;
    if (lm__name_set_add(p->ctx, &p->transposed_index, p->n_transposed,
                         name_at, p->transposed) != LM_OK) {
        lm_free(p->ctx, copy);
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "plan: out of memory");
    }
    p->n_transposed++;
    return LM_OK;
}

bool lm__plan_transposed(const lm_plan *p, const char *name)
{
    return p->n_transposed &&
           lm__name_set_find(&p->transposed_index, name, name_at,
                             p->transposed) != SIZE_MAX;
}

lm_status lm__layout_check(const lm_plan *p)
{
    for (size_t i = 0; i < p->n_transposed; i++) {
        lm_tensor *t;
        if (lm_model_find(p->base, p->transposed[i], &t) != LM_OK)
            return lm_context_set_error(p->ctx, LM_ERR_NOT_FOUND,
                                        "plan: '%s' is set transposed but "
                                        "the base model has no such tensor",
                                        p->transposed[i]);
        if (t->ndim != 2)
            return lm_context_set_error(p->ctx, LM_ERR_SHAPE,
                                        "plan: '%s' is set transposed but "
                                        "is %d-D, not a matrix",
                                        p->transposed[i], t->ndim);
    }
    return LM_OK;
}

void lm__layout_free(lm_plan *p)
{
    for (size_t i = 0; i < p->n_transposed; i++)
        lm_free(p->ctx, p->transposed[i]);
    lm_free(p->ctx, p->transposed);
    lm__name_set_free(p->ctx, &p->transposed_index);
}

/* dst = src^T for a rows x cols src, in cache-sized tiles. */
static void transpose(const float *src, size_t rows, size_t cols, float *dst)
{
    enum { TILE = 32 };
    for (size_t i0 = 0; i0 < rows; i0 += TILE)
        for (size_t j0 = 0; j0 < cols; j0 += TILE)
            for (size_t i = i0; i < i0 + TILE && i < rows; i++)
                for (size_t j = j0; j < j0 + TILE && j < cols; j++)
                    dst[j * rows + i] = src[i * cols + j];
}

lm_status lm__transpose_each(lm_context *ctx, float *data, size_t count,
                             size_t rows, size_t cols)
{
    size_t n = rows * cols;
    float *tmp = lm_alloc(ctx, (n ? n : 1) * sizeof(float));
    if (!tmp)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory transposing a [%zu, %zu] "
                                    "tensor", rows, cols);
    for (size_t c = 0; c < count; c++) {
        transpose(data + c * n, rows, cols, tmp);
        memcpy(data + c * n, tmp, n * sizeof(float));
    }
    lm_free(ctx, tmp);
    return LM_OK;
}
