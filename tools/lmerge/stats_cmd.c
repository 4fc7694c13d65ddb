/* `lmerge stats`: inspect, check and sum activation-statistics files (as
 * written by libmerge.Stats.save / lm_stats_save), e.g. the per-rank files
 * of a distributed calibration before a merge's `stats:` uses them. */
#include <stdio.h>
#include <string.h>

#include "commands.h"

static void stats_usage(FILE *f)
{
    fprintf(f,
            "usage: lmerge stats info FILE...      keys, rows and parts of each file\n"
            "       lmerge stats check FILE...     load and validate; exit 1 on the first bad file\n"
            "       lmerge stats merge -o OUT FILE...  sum the files into OUT\n");
}

static void describe(const char *path, const lm_stats *s)
{
    size_t n = lm_stats_count(s);
    printf("%s: %zu keys", path, n);
    if (lm_stats_heldout(s))
        printf(", held-out part of %zu keys", lm_stats_count(lm_stats_heldout(s)));
    if (lm_stats_fold_count(s))
        printf(", %zu folds", lm_stats_fold_count(s));
    printf("\n");
    for (size_t i = 0; i < n; i++) {
        size_t model, d_in;
        const char *name;
        const double *gram;
        uint64_t rows;
        if (lm_stats_at(s, i, &model, &name) == LM_OK &&
            lm_stats_find(s, model, name, &gram, &d_in, &rows) == LM_OK)
            printf("  model %-3zu %-48s d_in %-6zu rows %llu\n", model, name,
                   d_in, (unsigned long long)rows);
    }
}

/* Loads every path (summed into *sum when sum is non-NULL). */
static int load_all(lm_context *ctx, char **paths, int n, bool show,
                    lm_stats **sum)
{
    for (int i = 0; i < n; i++) {
        lm_stats *s = NULL;
        if (lm_stats_load(ctx, paths[i], &s) != LM_OK) {
            fprintf(stderr, "lmerge stats: %s\n", lm_context_error(ctx));
            return -1;
        }
        if (show)
            describe(paths[i], s);
        lm_status st = LM_OK;
        if (sum && *sum)
            st = lm_stats_merge(*sum, s);
        else if (sum) {
            *sum = s;
            s = NULL;
        }
        lm_stats_destroy(s);
        if (st != LM_OK) {
            fprintf(stderr, "lmerge stats: cannot add '%s': %s\n", paths[i],
                    lm_context_error(ctx));
            return -1;
        }
    }
    return 0;
}

int lmerge_stats(int argc, char **argv)
{
    if (argc < 3) {
        stats_usage(stderr);
        return 2;
    }
    const char *sub = argv[1];
    const char *out = NULL;
    int first = 2;
    if (!strcmp(sub, "merge")) {
        if (argc < 5 || strcmp(argv[2], "-o")) {
            stats_usage(stderr);
            return 2;
        }
        out = argv[3];
        first = 4;
    } else if (strcmp(sub, "info") && strcmp(sub, "check")) {
        fprintf(stderr, "lmerge stats: unknown subcommand '%s'\n", sub);
        stats_usage(stderr);
        return 2;
    }
    lm_context *ctx = NULL;
    if (lm_context_create(NULL, &ctx) != LM_OK)
        return 1;
    lm_stats *sum = NULL;
    int rc = load_all(ctx, argv + first, argc - first, !strcmp(sub, "info"),
                      out ? &sum : NULL);
    if (rc == 0 && out && lm_stats_save(sum, out) != LM_OK) {
        fprintf(stderr, "lmerge stats: %s\n", lm_context_error(ctx));
        rc = -1;
    }
    if (rc == 0 && !strcmp(sub, "check"))
        printf("%d file%s ok\n", argc - first, argc - first == 1 ? "" : "s");
    lm_stats_destroy(sum);
    lm_context_destroy(ctx);
    return rc ? 1 : 0;
}
