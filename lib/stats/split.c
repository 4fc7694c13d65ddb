/* Row splits for held-out tuning: a stats object may carry a held-out part
 * or K folds, fed by lm_stats_observe, merged, saved and loaded with it.
 * The rules are the ones the Python bindings applied up to 0.1, moved here
 * so every host gets the same rows in the same places (docs/stats.md). */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "stats/stats_internal.h"

void lm_stats_split_options_init(lm_stats_split_options *options)
{
    if (options)
        *options = (lm_stats_split_options)LM_STATS_SPLIT_OPTIONS_INIT;
}

/* round(1 / fraction) with ties to even, as Python's round() (0.4 -> 2),
 * computed without depending on the floating-point rounding mode. A
 * fraction so small that k does not fit never holds a row out. */
static size_t every_kth(double fraction)
{
    double q = 1.0 / fraction;
    if (!(q < 0x1p63))
        return SIZE_MAX;
    double lo = floor(q), rest = q - lo; /* exact */
    if (rest > 0.5 || (rest == 0.5 && fmod(lo, 2.0) != 0.0))
        lo += 1.0;
    return (size_t)lo;
}

static lm_status new_part(lm_stats *s, lm_stats **out)
{
    return lm_stats_create(s->ctx, out);
}

lm_status lm_stats_set_split(lm_stats *s, const lm_stats_split_options *o)
{
    if (!s || !o)
        return LM_ERR_INVALID_ARGUMENT;
    if (o->struct_size < sizeof(lm_stats_split_options))
        return lm_context_set_error(s->ctx, LM_ERR_ABI,
                                    "stats split: options struct_size %u "
                                    "too small", o->struct_size);
    lm_stats_split_options opt = *o;
    if (!(opt.heldout_fraction >= 0.0 && opt.heldout_fraction < 1.0))
        return lm_context_set_error(s->ctx, LM_ERR_OUT_OF_RANGE,
                                    "heldout_fraction must be in [0, 1), "
                                    "got %g", opt.heldout_fraction);
    if (opt.folds == 1)
        return lm_context_set_error(s->ctx, LM_ERR_OUT_OF_RANGE,
                                    "folds must be 0 (none) or at least 2");
    if (opt.folds && opt.heldout_fraction > 0.0)
        return lm_context_set_error(s->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "use either heldout_fraction or folds, "
                                    "not both");
    if (s->count || lm__stats_has_split(s))
        return lm_context_set_error(s->ctx, LM_ERR_STATE,
                                    "stats split: set it before the first "
                                    "observation, once");
    struct lm_stats_split sp = {0, NULL, NULL, 0};
    lm_status st = LM_OK;
    if (opt.heldout_fraction > 0.0) {
        sp.every = every_kth(opt.heldout_fraction);
        st = new_part(s, &sp.heldout);
    }
    if (opt.folds) {
        sp.folds = lm__calloc(s->ctx, opt.folds, sizeof(*sp.folds));
        if (!sp.folds)
            st = lm_context_set_error(s->ctx, LM_ERR_OUT_OF_MEMORY,
                                      "stats split: out of memory");
        for (size_t f = 0; st == LM_OK && f < opt.folds; f++, sp.n_folds++)
            st = new_part(s, &sp.folds[f]);
    }
    s->split = sp;
    if (st != LM_OK)
        lm__stats_split_free(s);
    return st;
}

bool lm__stats_has_split(const lm_stats *s)
{
    return s->split.heldout || s->split.n_folds;
}

void lm__stats_split_free(lm_stats *s)
{
    lm_stats_destroy(s->split.heldout);
    for (size_t f = 0; f < s->split.n_folds; f++)
        lm_stats_destroy(s->split.folds[f]);
    lm_free(s->ctx, s->split.folds);
    memset(&s->split, 0, sizeof(s->split));
}

lm_stats *lm_stats_heldout(const lm_stats *s)
{
    return s ? s->split.heldout : NULL;
}

size_t lm_stats_fold_count(const lm_stats *s)
{
    return s ? s->split.n_folds : 0;
}

lm_stats *lm_stats_fold_at(const lm_stats *s, size_t k)
{
    return s && k < s->split.n_folds ? s->split.folds[k] : NULL;
}

/* d_in of a key in a stats object must match before anything changes. */
static lm_status check_width(lm_stats *s, size_t model, const char *name,
                             size_t d_in)
{
    struct lm_stats_entry *e = lm__stats_entry(s, model, name, d_in, false);
    if (e && e->d_in != d_in)
        return lm_context_set_error(s->ctx, LM_ERR_SHAPE,
                                    "stats: '%s' of model %zu was observed "
                                    "with d_in %zu, now %zu", name, model,
                                    e->d_in, d_in);
    return LM_OK;
}

/* Rows i with (i % every == every - 1) == held, gathered in order. */
static size_t gather(const float *rows, size_t n_rows, size_t d_in,
                     size_t every, bool held, float *out)
{
    size_t count = 0;
    for (size_t i = 0; i < n_rows; i++)
        if ((i % every == every - 1) == held)
            memcpy(out + count++ * d_in, rows + i * d_in,
                   d_in * sizeof(float));
    return count;
}

/* Held-out rows first, then the rest: the order the bindings fed them. */
static lm_status observe_heldout(lm_stats *s, size_t model, const char *name,
                                 const float *rows, size_t n_rows,
                                 size_t d_in)
{
    size_t every = s->split.every;
    size_t n_held = n_rows / every, n_train = n_rows - n_held;
    if (!n_rows)
        return LM_OK;
    if (n_held)
        LM_TRY(check_width(s->split.heldout, model, name, d_in));
    if (n_train)
        LM_TRY(check_width(s, model, name, d_in));
    size_t most = n_held > n_train ? n_held : n_train;
    float *buf = lm__calloc(s->ctx, most * d_in, sizeof(float));
    if (!buf)
        return lm_context_set_error(s->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "stats: out of memory splitting '%s'",
                                    name);
    lm_status st = LM_OK;
    if (n_held) {
        gather(rows, n_rows, d_in, every, true, buf);
        st = lm__stats_accumulate(s->split.heldout, model, name, buf,
                                  n_held, d_in);
    }
    if (st == LM_OK && n_train) {
        gather(rows, n_rows, d_in, every, false, buf);
        st = lm__stats_accumulate(s, model, name, buf, n_train, d_in);
    }
    lm_free(s->ctx, buf);
    return st;
}

lm_status lm__stats_observe_split(lm_stats *s, size_t model, const char *name,
                                  const float *rows, size_t n_rows,
                                  size_t d_in)
{
    LM_TRY(lm__stats_check_rows(s->ctx, model, name, rows, n_rows, d_in));
    if (s->split.every)
        return observe_heldout(s, model, name, rows, n_rows, d_in);
    LM_TRY(lm__stats_accumulate(s, model, name, rows, n_rows, d_in));
    if (!s->split.n_folds)
        return LM_OK; /* a loaded held-out part is not fed again */
    return lm_stats_observe_folds(s->split.folds, s->split.n_folds, model,
                                  name, rows, n_rows, d_in);
}

lm_status lm__stats_check_same_split(const lm_stats *dst, const lm_stats *src)
{
    if (!dst->split.heldout != !src->split.heldout ||
        dst->split.n_folds != src->split.n_folds)
        return lm_context_set_error(dst->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "merge: the two stats split their rows "
                                    "differently (held-out fraction or "
                                    "number of folds)");
    return LM_OK;
}

lm_status lm__stats_merge_parts(lm_stats *dst, const lm_stats *src)
{
    if (dst->split.heldout)
        LM_TRY(lm_stats_merge(dst->split.heldout, src->split.heldout));
    for (size_t f = 0; f < dst->split.n_folds; f++)
        LM_TRY(lm_stats_merge(dst->split.folds[f], src->split.folds[f]));
    return LM_OK;
}

/* PATH.heldout, PATH.fold<k> (k = SIZE_MAX: the held-out part). */
static char *part_path(lm_context *ctx, const char *path, size_t k)
{
    size_t n = strlen(path) + 32;
    char *p = lm__calloc(ctx, n, 1);
    if (p && k == SIZE_MAX)
        snprintf(p, n, "%s.heldout", path);
    else if (p)
        snprintf(p, n, "%s.fold%zu", path, k);
    if (!p)
        lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                             "stats: out of memory for '%s'", path);
    return p;
}

static lm_status save_part(const lm_stats *s, const lm_stats *part,
                           const char *path, size_t k)
{
    char *p = part_path(s->ctx, path, k);
    if (!p)
        return LM_ERR_OUT_OF_MEMORY;
    lm_status st = lm__stats_save_file(part, p);
    lm_free(s->ctx, p);
    return st;
}

lm_status lm_stats_save(const lm_stats *s, const char *path)
{
    if (!s || !path)
        return LM_ERR_INVALID_ARGUMENT;
    LM_TRY(lm__stats_save_file(s, path));
    if (s->split.heldout)
        LM_TRY(save_part(s, s->split.heldout, path, SIZE_MAX));
    for (size_t f = 0; f < s->split.n_folds; f++)
        LM_TRY(save_part(s, s->split.folds[f], path, f));
    return LM_OK;
}

/* Loads PATH's companion k when it exists (*out stays NULL otherwise). */
static lm_status load_part(lm_context *ctx, const char *path, size_t k,
                           lm_stats **out)
{
    char *p = part_path(ctx, path, k);
    if (!p)
        return LM_ERR_OUT_OF_MEMORY;
    struct stat sb;
    lm_status st = stat(p, &sb) == 0 ? lm__stats_load_file(ctx, p, out)
                                     : LM_OK;
    lm_free(ctx, p);
    return st;
}

static lm_status load_parts(lm_stats *s, const char *path)
{
    LM_TRY(load_part(s->ctx, path, SIZE_MAX, &s->split.heldout));
    size_t cap = 0;
    for (;;) {
        lm_stats *fold = NULL;
        LM_TRY(load_part(s->ctx, path, s->split.n_folds, &fold));
        if (!fold)
            break;
        lm_stats **room = lm__reserve(s->ctx, s->split.folds, &cap,
                                      s->split.n_folds, sizeof(*room), 4);
        if (!room) {
            lm_stats_destroy(fold);
            return lm_context_set_error(s->ctx, LM_ERR_OUT_OF_MEMORY,
                                        "stats: out of memory for '%s'",
                                        path);
        }
        s->split.folds = room;
        s->split.folds[s->split.n_folds++] = fold;
    }
    if (s->split.n_folds == 1) { /* one fold is no split */
        lm_stats_destroy(s->split.folds[0]);
        lm_free(s->ctx, s->split.folds);
        s->split.folds = NULL;
        s->split.n_folds = 0;
    }
    return LM_OK;
}

lm_status lm_stats_load(lm_context *ctx, const char *path, lm_stats **out)
{
    if (!ctx || !path || !out)
        return LM_ERR_INVALID_ARGUMENT;
    lm_stats *s = NULL;
    LM_TRY(lm__stats_load_file(ctx, path, &s));
    lm_status st = load_parts(s, path);
    if (st != LM_OK) {
        lm_stats_destroy(s);
        return st;
    }
    *out = s;
    return LM_OK;
}
