/* NSC coefficient tables: one lambda per (LoRA module, task), the result
 * of an NSC optimisation, as a small JSON file (docs/methods/nsc.md):
 *
 *   {"format": "libmerge-nsc-coefficients", "version": 1,
 *    "tasks": ["task0", "task1"],
 *    "modules": {"layers.0.q.weight": [0.41, 0.37], ...}}
 *
 * Written by lm_nsc_save_coefficients (and the Python drivers), read back
 * by lm_nsc_load_coefficients and by the `nsc` strategy. Not installed. */
#ifndef LM_NSC_COEFFICIENTS_H
#define LM_NSC_COEFFICIENTS_H

#include "core/internal.h"
#include "core/name_set.h"

#define LM__NSC_TABLE_FORMAT "libmerge-nsc-coefficients"

struct lm__nsc_table {
    char *path;          /* as given, for messages */
    size_t n_tasks, n_modules;
    char **tasks;        /* n_tasks names */
    char **modules;      /* n_modules names, file order */
    double *lambdas;     /* n_modules x n_tasks, finite */
    struct lm__name_set index; /* modules by name */
};

/* Reads and validates a table. Errors name the file and the key:
 * LM_ERR_IO (cannot open), LM_ERR_FORMAT (not JSON, wrong "format", a
 * missing or mistyped key, a module listed twice, a row with another
 * number of values than "tasks"), LM_ERR_UNSUPPORTED ("version" other
 * than 1), LM_ERR_NONFINITE (a value that overflows to Inf),
 * LM_ERR_OUT_OF_MEMORY. *out is freed with lm__nsc_table_free. */
lm_status lm__nsc_table_read(lm_context *ctx, const char *path,
                             struct lm__nsc_table **out);
void lm__nsc_table_free(lm_context *ctx, struct lm__nsc_table *t);
/* The n_tasks lambdas of `module`, or NULL when the table lacks it. */
const double *lm__nsc_table_find(const struct lm__nsc_table *t,
                                 const char *module);

/* A table holding an lm_nsc's coefficients (every module, every task;
 * "task0", ... as names). Its `path` names the source in messages. */
struct lm_nsc;
lm_status lm__nsc_table_from(const struct lm_nsc *nsc,
                             struct lm__nsc_table **out);

/* Writes a table atomically (temporary file, fsync, rename). `tasks` may
 * be NULL: "task0", "task1", ... Values must be finite
 * (LM_ERR_NONFINITE naming the module and task); LM_ERR_IO when the
 * file cannot be written (nothing then appears under `path`). */
lm_status lm__nsc_table_write(lm_context *ctx, const char *path,
                              size_t n_tasks, const char *const *tasks,
                              size_t n_modules, const char *const *modules,
                              const double *lambdas);

#endif
