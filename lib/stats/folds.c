/* Deterministic K-fold split of observed rows, for held-out tuning that
 * uses every row once as held-out data (lm_plan_tune_purify_folds). */
#include <string.h>

#include "stats/stats_internal.h"

lm_status lm_stats_observe_folds(lm_stats *const *folds, size_t n_folds,
                                 size_t model, const char *name,
                                 const float *rows, size_t n_rows,
                                 size_t d_in)
{
    if (!folds || n_folds < 2)
        return LM_ERR_INVALID_ARGUMENT;
    for (size_t f = 0; f < n_folds; f++)
        if (!folds[f])
            return LM_ERR_INVALID_ARGUMENT;
    lm_context *ctx = folds[0]->ctx;
    /* Row j of the key's stream, counted over every earlier call, goes to
     * fold j mod K: the split does not depend on how rows were batched. */
    uint64_t seen = 0;
    for (size_t f = 0; name && d_in && f < n_folds; f++) {
        struct lm_stats_entry *e = lm__stats_entry(folds[f], model, name,
                                                   d_in, false);
        if (!e)
            continue;
        if (e->d_in != d_in)
            return lm_context_set_error(ctx, LM_ERR_SHAPE,
                                        "stats folds: '%s' of model %zu was "
                                        "observed with d_in %zu, now %zu",
                                        name, model, e->d_in, d_in);
        pthread_mutex_lock(&e->lock);
        seen += e->n_rows;
        pthread_mutex_unlock(&e->lock);
    }
    /* Checked before any fold changes, so a bad row leaves them all as
     * they were. */
    LM_TRY(lm__stats_check_rows(ctx, model, name, rows, n_rows, d_in));
    size_t per = n_rows / n_folds + 1;
    float *buf = lm__calloc(ctx, per * d_in, sizeof(float)); /* d_in > 0 */
    if (!buf)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "stats folds: out of memory for '%s'",
                                    name);
    lm_status st = LM_OK;
    for (size_t f = 0; f < n_folds && st == LM_OK; f++) {
        size_t first = (size_t)((n_folds - seen % n_folds + f) % n_folds);
        size_t count = 0;
        for (size_t i = first; i < n_rows; i += n_folds)
            memcpy(buf + count++ * d_in, rows + i * d_in,
                   d_in * sizeof(float));
        if (count)
            st = lm__stats_accumulate(folds[f], model, name, buf, count, d_in);
    }
    lm_free(ctx, buf);
    return st;
}
