/* The `stats:` and `purify:` keys of an lmerge config applied to a plan:
 * statistics files (summed) for methods that use them (ESM, purification)
 * and purification's options, with keep "cv" tuned by the library on the
 * held-out rows or folds the statistics files carry. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libmerge/experimental/purify_tune.h"

#include "commands.h"
#include "config.h"

int lmerge_apply_stats(lm_context *ctx, lm_plan *plan,
                       const struct lmerge_config *c, const char *path,
                       lm_stats **out)
{
    *out = NULL;
    if (!c->n_stats)
        return 0;
    lm_stats *sum = NULL;
    for (size_t i = 0; i < c->n_stats; i++) {
        lm_stats *s = NULL;
        lm_status st = lm_stats_load(ctx, c->stats[i], &s);
        if (st == LM_OK && sum)
            st = lm_stats_merge(sum, s);
        if (st != LM_OK) {
            fprintf(stderr, "lmerge run: %s:%d: stats '%s': %s\n", path,
                    c->stats_line, c->stats[i], lm_context_error(ctx));
            lm_stats_destroy(s);
            lm_stats_destroy(sum);
            return -1;
        }
        if (sum)
            lm_stats_destroy(s);
        else
            sum = s;
    }
    lm_plan_set_stats(plan, sum);
    *out = sum;
    return 0;
}

static int number(const struct lmerge_param *p, const char *path, double *v)
{
    char *end;
    *v = strtod(p->value, &end);
    if (*end || end == p->value || !isfinite(*v)) {
        fprintf(stderr, "lmerge run: %s:%d: purify '%s': '%s' is not a "
                "number\n", path, p->line, p->key, p->value);
        return -1;
    }
    return 0;
}

/* lm_purify_options from the `purify:` block; *cv when keep is "cv",
 * with the tuning's options in *cvo. */
static int purify_options(const struct lmerge_config *c, const char *path,
                          lm_purify_options *o, bool *cv,
                          lm_purify_cv_options *cvo)
{
    lm_purify_options_init(o);
    lm_purify_cv_options_init(cvo);
    *cv = false;
    static const char *const allocations[] = {"model", "layer", "uniform"};
    for (size_t i = 0; i < c->n_purify; i++) {
        const struct lmerge_param *p = &c->purify[i];
        int rc = 0;
        if (!strcmp(p->key, "keep") && !strcmp(p->value, "cv"))
            *cv = true;
        else if (!strcmp(p->key, "keep"))
            rc = number(p, path, &o->keep);
        else if (!strcmp(p->key, "epsilon"))
            rc = number(p, path, &o->epsilon);
        else if (!strcmp(p->key, "tolerance"))
            rc = number(p, path, &o->tolerance);
        else if (!strcmp(p->key, "polarize"))
            rc = number(p, path, &o->polarize);
        else if (!strcmp(p->key, "max_prune_factor"))
            rc = number(p, path, &o->max_prune_factor);
        else if (!strcmp(p->key, "se_rule"))
            rc = number(p, path, &cvo->se_rule);
        else if (!strcmp(p->key, "allocation")) {
            rc = -1;
            for (int a = 0; a < 3; a++)
                if (!strcmp(p->value, allocations[a])) {
                    o->allocation = (lm_purify_allocation)a;
                    rc = 0;
                }
            if (rc)
                fprintf(stderr, "lmerge run: %s:%d: purify allocation '%s' "
                        "(expected model, layer or uniform)\n", path,
                        p->line, p->value);
        } else {
            fprintf(stderr, "lmerge run: %s:%d: unknown purify key '%s' "
                    "(expected keep, allocation, polarize, epsilon, "
                    "tolerance, max_prune_factor, se_rule)\n", path, p->line, p->key);
            rc = -1;
        }
        if (rc)
            return -1;
    }
    return 0;
}

int lmerge_apply_purify(lm_context *ctx, lm_plan *plan,
                        const struct lmerge_config *c, const char *path,
                        double *tuned_keep)
{
    *tuned_keep = NAN;
    if (!c->purify_line)
        return 0;
    if (!c->n_stats) {
        fprintf(stderr, "lmerge run: %s:%d: purify needs activation "
                "statistics: add 'stats:' (files written by "
                "libmerge.Stats.save or lm_stats_save)\n", path,
                c->purify_line);
        return -1;
    }
    lm_purify_options o;
    lm_purify_cv_options cvo;
    bool cv;
    if (purify_options(c, path, &o, &cv, &cvo))
        return -1;
    if (lm_plan_set_purify(plan, &o)) {
        fprintf(stderr, "lmerge run: %s:%d: purify: %s\n", path,
                c->purify_line, lm_context_error(ctx));
        return -1;
    }
    if (!cv)
        return 0;
    lm_purify_cv_result res = LM_PURIFY_CV_RESULT_INIT;
    if (lm_plan_tune_purify_cv(plan, &cvo, NULL, &res)) {
        fprintf(stderr, "lmerge run: %s:%d: purify keep cv: %s\n", path,
                c->purify_line, lm_context_error(ctx));
        return -1;
    }
    *tuned_keep = res.keep;
    return 0;
}
