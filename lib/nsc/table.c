/* lm_nsc_save_coefficients / lm_nsc_load_coefficients: an lm_nsc's
 * lambdas to and from a coefficient table (coefficients.h), the file the
 * `nsc` strategy merges with. */
#include <stdio.h>
#include <string.h>

#include "nsc/coefficients.h"
#include "nsc/nsc_internal.h"

lm_status lm_nsc_save_coefficients(const lm_nsc *n, const char *path,
                                   const char *const *task_names)
{
    if (!n || !path)
        return LM_ERR_INVALID_ARGUMENT;
    for (size_t k = 0; task_names && k < n->n_tasks; k++)
        if (!task_names[k])
            return lm_context_set_error(n->ctx, LM_ERR_INVALID_ARGUMENT,
                                        "nsc: task name %zu is NULL", k);
    size_t nm = n->n_modules, nt = n->n_tasks;
    const char **names = lm__calloc(n->ctx, nm + 1, sizeof(char *));
    double *lambdas = lm__calloc(n->ctx, nm * nt + 1, sizeof(double));
    lm_status st = names && lambdas ? LM_OK
                                    : lm_context_set_error(
                                          n->ctx, LM_ERR_OUT_OF_MEMORY,
                                          "nsc: out of memory writing '%s'",
                                          path);
    for (size_t i = 0; st == LM_OK && i < nm; i++) {
        names[i] = n->modules[i].name;
        st = lm_nsc_get_lambdas(n, i, lambdas + i * nt);
    }
    if (st == LM_OK)
        st = lm__nsc_table_write(n->ctx, path, nt, task_names, nm, names,
                                 lambdas);
    lm_free(n->ctx, names);
    lm_free(n->ctx, lambdas);
    return st;
}

/* The table must describe this merge exactly: the same number of tasks
 * and the same modules, so a table from another run is refused rather
 * than half applied. */
static lm_status check_matches(const lm_nsc *n, const struct lm__nsc_table *t)
{
    if (t->n_tasks != n->n_tasks)
        return lm_context_set_error(n->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "nsc coefficients '%s': key 'tasks' "
                                    "lists %zu tasks, the merge has %zu",
                                    t->path, t->n_tasks, n->n_tasks);
    for (size_t i = 0; i < n->n_modules; i++)
        if (!lm__nsc_table_find(t, n->modules[i].name))
            return lm_context_set_error(n->ctx, LM_ERR_NOT_FOUND,
                                        "nsc coefficients '%s': no entry "
                                        "for module '%s' in 'modules'",
                                        t->path, n->modules[i].name);
    for (size_t i = 0; i < t->n_modules; i++) {
        size_t idx;
        if (lm_nsc_module_find(n, t->modules[i], &idx) != LM_OK)
            return lm_context_set_error(n->ctx, LM_ERR_NOT_FOUND,
                                        "nsc coefficients '%s': module "
                                        "'%s' is not targeted by any "
                                        "adapter", t->path, t->modules[i]);
    }
    return LM_OK;
}

lm_status lm_nsc_load_coefficients(lm_nsc *n, const char *path)
{
    if (!n || !path)
        return LM_ERR_INVALID_ARGUMENT;
    struct lm__nsc_table *t = NULL;
    LM_TRY(lm__nsc_table_read(n->ctx, path, &t));
    lm_status st = check_matches(n, t);
    /* All checked first: either every lambda is replaced or none. */
    for (size_t i = 0; st == LM_OK && i < n->n_modules; i++) {
        const double *row = lm__nsc_table_find(t, n->modules[i].name);
        for (size_t k = 0; k < n->n_tasks; k++)
            if (n->modules[i].tasks[k].a)
                n->modules[i].coef[k] = row[k];
    }
    lm__nsc_table_free(n->ctx, t);
    return st;
}

static const char *table_module(const void *table, size_t i)
{
    return ((const struct lm__nsc_table *)table)->modules[i];
}

static lm_status table_fill(const lm_nsc *n, struct lm__nsc_table *t)
{
    size_t nm = n->n_modules, nt = n->n_tasks;
    t->tasks = lm__calloc(n->ctx, nt, sizeof(char *));
    t->modules = lm__calloc(n->ctx, nm + 1, sizeof(char *));
    t->lambdas = lm__calloc(n->ctx, nm * nt + 1, sizeof(double));
    if (!(t->path = lm__strdup(n->ctx, "(lm_plan_set_nsc_forward)")) ||
        !t->tasks || !t->modules || !t->lambdas)
        return LM_ERR_OUT_OF_MEMORY;
    t->n_tasks = nt;
    for (size_t k = 0; k < nt; k++) {
        char name[32];
        snprintf(name, sizeof(name), "task%zu", k);
        if (!(t->tasks[k] = lm__strdup(n->ctx, name)))
            return LM_ERR_OUT_OF_MEMORY;
    }
    for (size_t i = 0; i < nm; i++) {
        LM_TRY(lm_nsc_get_lambdas(n, i, t->lambdas + i * nt));
        if (!(t->modules[i] = lm__strdup(n->ctx, n->modules[i].name)))
            return LM_ERR_OUT_OF_MEMORY;
        t->n_modules++;
        LM_TRY(lm__name_set_add(n->ctx, &t->index, i, table_module, t));
    }
    return LM_OK;
}

lm_status lm__nsc_table_from(const lm_nsc *n, struct lm__nsc_table **out)
{
    struct lm__nsc_table *t = lm__calloc(n->ctx, 1, sizeof(*t));
    lm_status st = t ? table_fill(n, t) : LM_ERR_OUT_OF_MEMORY;
    if (st != LM_OK) {
        lm__nsc_table_free(n->ctx, t);
        return st == LM_ERR_OUT_OF_MEMORY
                   ? lm_context_set_error(n->ctx, st, "nsc: out of memory")
                   : st;
    }
    *out = t;
    return LM_OK;
}
