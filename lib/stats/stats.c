/* Accumulating input second moments X^T X per (model, tensor). */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "stats/stats_internal.h"

/* Rows converted to f64 per dsyrk call: large enough for BLAS efficiency,
 * small enough to keep the scratch buffer modest. */
#define ROW_BLOCK 256

lm_status lm_stats_create(lm_context *ctx, lm_stats **out)
{
    if (!ctx || !out)
        return LM_ERR_INVALID_ARGUMENT;
    lm_stats *s = lm__calloc(ctx, 1, sizeof(*s));
    if (!s)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "stats: out of memory");
    s->ctx = ctx;
    if (pthread_mutex_init(&s->lock, NULL)) {
        lm_free(ctx, s);
        return LM_ERR_INTERNAL;
    }
    *out = s;
    return LM_OK;
}

void lm_stats_destroy(lm_stats *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->count; i++) {
        struct lm_stats_entry *e = s->entries[i];
        pthread_mutex_destroy(&e->lock);
        lm_free(s->ctx, e->gram);
        lm_free(s->ctx, e->name);
        lm_free(s->ctx, e);
    }
    lm_free(s->ctx, s->entries);
    lm__name_set_free(s->ctx, &s->keys);
    lm__stats_split_free(s);
    pthread_mutex_destroy(&s->lock);
    lm_free(s->ctx, s);
}

struct key {
    size_t model;
    const char *name;
};

static bool entry_is(const void *table, size_t i, const void *key)
{
    const struct lm_stats_entry *e =
        ((struct lm_stats_entry *const *)table)[i];
    const struct key *k = key;
    return e->model == k->model && strcmp(e->name, k->name) == 0;
}

static uint64_t key_hash(const lm_stats *s, size_t model, const char *name)
{
    return lm__mix64(lm__name_set_hash(&s->keys, name, strlen(name)) ^
                     (uint64_t)model);
}

/* Hashed: loading a stats file with many keys stays linear. */
static struct lm_stats_entry *find(const lm_stats *s, size_t model,
                                   const char *name)
{
    struct key k = {model, name};
    size_t i = lm__name_set_lookup(&s->keys, key_hash(s, model, name),
                                   entry_is, s->entries, &k);
    return i != SIZE_MAX ? s->entries[i] : NULL;
}

static struct lm_stats_entry *new_entry(lm_stats *s, size_t model,
                                        const char *name, size_t d_in)
{
    if (d_in && d_in > SIZE_MAX / sizeof(double) / d_in)
        return NULL;
    struct lm_stats_entry *e = lm__calloc(s->ctx, 1, sizeof(*e));
    if (!e)
        return NULL;
    e->model = model;
    e->d_in = d_in;
    e->name = lm__strdup(s->ctx, name);
    size_t cells = d_in * d_in;
    e->gram = lm__calloc(s->ctx, cells > 0 ? cells : 1, sizeof(double));
    if (!e->name || !e->gram || pthread_mutex_init(&e->lock, NULL)) {
        lm_free(s->ctx, e->name);
        lm_free(s->ctx, e->gram);
        lm_free(s->ctx, e);
        return NULL;
    }
    struct lm_stats_entry **room = lm__reserve(s->ctx, s->entries, &s->cap,
                                               s->count, sizeof(*s->entries), 32);
    if (!room) {
        pthread_mutex_destroy(&e->lock);
        lm_free(s->ctx, e->name);
        lm_free(s->ctx, e->gram);
        lm_free(s->ctx, e);
        return NULL;
    }
    s->entries = room;
    if (lm__name_set_insert(s->ctx, &s->keys, key_hash(s, model, name),
                            s->count) != LM_OK) {
        pthread_mutex_destroy(&e->lock);
        lm_free(s->ctx, e->name);
        lm_free(s->ctx, e->gram);
        lm_free(s->ctx, e);
        return NULL;
    }
    s->entries[s->count++] = e;
    return e;
}

struct lm_stats_entry *lm__stats_entry(lm_stats *s, size_t model,
                                       const char *name, size_t d_in,
                                       bool create)
{
    pthread_mutex_lock(&s->lock);
    struct lm_stats_entry *e = find(s, model, name);
    if (!e && create) {
        e = new_entry(s, model, name, d_in);
        if (!e)
            lm_context_set_error(s->ctx, LM_ERR_OUT_OF_MEMORY,
                                 "stats: out of memory for '%s' (model "
                                 "%zu, d_in %zu)", name, model, d_in);
    }
    pthread_mutex_unlock(&s->lock);
    if (e && create && e->d_in != d_in) {
        lm_context_set_error(s->ctx, LM_ERR_SHAPE,
                             "stats: '%s' of model %zu was observed with "
                             "d_in %zu, now %zu", name, model, e->d_in, d_in);
        return NULL;
    }
    return e;
}

/* Copy the upper triangle to the lower one. */
static void symmetrize(double *g, size_t d)
{
    for (size_t i = 0; i < d; i++)
        for (size_t j = i + 1; j < d; j++)
            g[j * d + i] = g[i * d + j];
}

lm_status lm__stats_check_rows(lm_context *ctx, size_t model,
                               const char *name, const float *rows,
                               size_t n_rows, size_t d_in)
{
    if (!name || !*name || (!rows && n_rows) || d_in == 0)
        return lm_context_set_error(ctx, LM_ERR_INVALID_ARGUMENT,
                                    "stats: observe needs a name, rows and "
                                    "d_in > 0");
    if (n_rows && d_in > SIZE_MAX / n_rows)
        return lm_context_set_error(ctx, LM_ERR_SHAPE,
                                    "stats: %zu x %zu rows overflow", n_rows,
                                    d_in);
    for (size_t i = 0; i < n_rows * d_in; i++)
        if (!isfinite(rows[i]))
            return lm_context_set_error(ctx, LM_ERR_NONFINITE,
                                        "stats: input for '%s' (model %zu) "
                                        "has a non-finite value at row %zu",
                                        name, model, i / d_in);
    if (d_in > (size_t)INT32_MAX)
        return lm_context_set_error(ctx, LM_ERR_SHAPE,
                                    "stats: d_in %zu is too large", d_in);
    return LM_OK;
}

lm_status lm_stats_observe(lm_stats *s, size_t model, const char *name,
                           const float *rows, size_t n_rows, size_t d_in)
{
    if (!s)
        return LM_ERR_INVALID_ARGUMENT;
    if (lm__stats_has_split(s))
        return lm__stats_observe_split(s, model, name, rows, n_rows, d_in);
    LM_TRY(lm__stats_check_rows(s->ctx, model, name, rows, n_rows, d_in));
    return lm__stats_accumulate(s, model, name, rows, n_rows, d_in);
}

lm_status lm__stats_accumulate(lm_stats *s, size_t model, const char *name,
                               const float *rows, size_t n_rows, size_t d_in)
{
    struct lm_stats_entry *e = lm__stats_entry(s, model, name, d_in, true);
    if (!e)
        return lm_context_error_status(s->ctx);
    size_t block = n_rows < ROW_BLOCK ? n_rows : ROW_BLOCK;
    size_t cells = block * d_in;
    double *x = lm__calloc(s->ctx, cells > 0 ? cells : 1, sizeof(double));
    if (!x)
        return lm_context_set_error(s->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "stats: out of memory for '%s'", name);
    pthread_mutex_lock(&e->lock);
    for (size_t r = 0; r < n_rows; r += block) {
        size_t nb = n_rows - r < block ? n_rows - r : block;
        for (size_t i = 0; i < nb * d_in; i++)
            x[i] = rows[r * d_in + i];
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)d_in, (int)nb,
                    1.0, x, (int)d_in, 1.0, e->gram, (int)d_in);
    }
    symmetrize(e->gram, d_in);
    e->n_rows += n_rows;
    pthread_mutex_unlock(&e->lock);
    lm_free(s->ctx, x);
    return LM_OK;
}

lm_status lm_stats_observe_tensor(lm_stats *s, size_t model, const char *name,
                                  const lm_tensor *rows)
{
    if (!s || !rows)
        return LM_ERR_INVALID_ARGUMENT;
    if (rows->ndim != 2)
        return lm_context_set_error(s->ctx, LM_ERR_SHAPE,
                                    "stats: rows for '%s' must be 2-D "
                                    "[n_rows, d_in], got %d dims", name,
                                    rows->ndim);
    size_t n = (size_t)rows->shape[0], d = (size_t)rows->shape[1];
    if (rows->dtype == LM_F32 && !rows->lazy_read)
        return lm_stats_observe(s, model, name, rows->data, n, d);
    float *f = lm__calloc(s->ctx, rows->numel ? rows->numel : 1,
                          sizeof(float));
    if (!f)
        return lm_context_set_error(s->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "stats: out of memory for '%s'", name);
    lm_status st = lm__read_f32(s->ctx, rows, f);
    if (st == LM_OK)
        st = lm_stats_observe(s, model, name, f, n, d);
    lm_free(s->ctx, f);
    return st;
}

lm_status lm_stats_find(const lm_stats *s, size_t model, const char *name,
                       const double **gram, size_t *d_in, uint64_t *n_rows)
{
    if (!s || !name)
        return LM_ERR_INVALID_ARGUMENT;
    struct lm_stats_entry *e =
        lm__stats_entry((lm_stats *)s, model, name, 0, false);
    if (!e)
        return lm_context_set_error(s->ctx, LM_ERR_NOT_FOUND,
                                    "stats: nothing observed for '%s' of "
                                    "model %zu", name, model);
    if (gram)
        *gram = e->gram;
    if (d_in)
        *d_in = e->d_in;
    if (n_rows)
        *n_rows = e->n_rows;
    return LM_OK;
}

size_t lm_stats_count(const lm_stats *s) { return s ? s->count : 0; }

lm_status lm_stats_at(const lm_stats *s, size_t i, size_t *model,
                       const char **name)
{
    if (!s || i >= s->count)
        return LM_ERR_OUT_OF_RANGE;
    if (model)
        *model = s->entries[i]->model;
    if (name)
        *name = s->entries[i]->name;
    return LM_OK;
}

lm_status lm_stats_merge(lm_stats *dst, const lm_stats *src)
{
    if (!dst || !src)
        return LM_ERR_INVALID_ARGUMENT;
    LM_TRY(lm__stats_check_same_split(dst, src));
    for (size_t i = 0; i < src->count; i++) {
        const struct lm_stats_entry *se = src->entries[i];
        struct lm_stats_entry *de =
            lm__stats_entry(dst, se->model, se->name, se->d_in, true);
        if (!de)
            return lm_context_error_status(dst->ctx);
        pthread_mutex_lock(&de->lock);
        for (size_t k = 0; k < se->d_in * se->d_in; k++)
            de->gram[k] += se->gram[k];
        de->n_rows += se->n_rows;
        pthread_mutex_unlock(&de->lock);
    }
    return lm__stats_merge_parts(dst, src);
}

lm_status lm_stats_add_gram(lm_stats *s, size_t model, const char *name,
                            const double *gram, size_t d_in, uint64_t n_rows)
{
    if (!s || !name || !gram || !d_in)
        return LM_ERR_INVALID_ARGUMENT;
    for (size_t k = 0; k < d_in * d_in; k++)
        if (!isfinite(gram[k]))
            return lm_context_set_error(s->ctx, LM_ERR_NONFINITE,
                                        "stats: the Gram matrix added to "
                                        "(%zu, '%s') is not finite", model,
                                        name);
    struct lm_stats_entry *e = lm__stats_entry(s, model, name, d_in, true);
    if (!e)
        return lm_context_error_status(s->ctx);
    pthread_mutex_lock(&e->lock);
    for (size_t k = 0; k < d_in * d_in; k++)
        e->gram[k] += gram[k];
    e->n_rows += n_rows;
    pthread_mutex_unlock(&e->lock);
    return LM_OK;
}

int lm__stats_lookup(const lm_stats *s, size_t model, const char *name,
                     const double **gram, size_t *d_in, uint64_t *n_rows)
{
    struct lm_stats_entry *e =
        lm__stats_entry((lm_stats *)s, model, name, 0, false);
    if (!e)
        return -1;
    *gram = e->gram;
    *d_in = e->d_in;
    *n_rows = e->n_rows;
    return 0;
}
