/* NSC coefficient tables (coefficients.h): the JSON reader and writer. */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "io/atomic_file.h"
#include "io/input_file.h"
#include "io/json_check.h"
#include "io/json_oom.h"
#include "nsc/coefficients.h"

/* A table is one number per (module, task): 64 MiB is millions of them. */
#define MAX_TABLE ((size_t)1 << 26)

static const char *module_name(const void *table, size_t i)
{
    return ((const struct lm__nsc_table *)table)->modules[i];
}

void lm__nsc_table_free(lm_context *ctx, struct lm__nsc_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; t->tasks && i < t->n_tasks; i++)
        lm_free(ctx, t->tasks[i]);
    for (size_t i = 0; t->modules && i < t->n_modules; i++)
        lm_free(ctx, t->modules[i]);
    lm_free(ctx, t->tasks);
    lm_free(ctx, t->modules);
    lm_free(ctx, t->lambdas);
    lm_free(ctx, t->path);
    lm__name_set_free(ctx, &t->index);
    lm_free(ctx, t);
}

const double *lm__nsc_table_find(const struct lm__nsc_table *t,
                                 const char *module)
{
    size_t i = lm__name_set_find(&t->index, module, module_name, t);
    return i == SIZE_MAX ? NULL : t->lambdas + i * t->n_tasks;
}

static lm_status oom(lm_context *ctx, const char *path)
{
    return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                "nsc coefficients '%s': out of memory", path);
}

static lm_status parse_text(lm_context *ctx, const char *path,
                            const char *text, size_t len, cJSON **root)
{
    LM_TRY(lm__json_check(ctx, path, text, len, "of the table"));
    const char *end = NULL;
    *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (*root)
        return LM_OK;
    if (lm__json_parse_ran_out_of_memory(text, len))
        return oom(ctx, path);
    /* The offset and a few bytes from it: e.g. a NaN or Infinity that a
     * non-strict writer (Python's json with allow_nan) put in a row. */
    size_t at = end && end >= text && end <= text + len
                    ? (size_t)(end - text)
                    : 0;
    return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                "nsc coefficients '%s': not well-formed "
                                "JSON at byte %zu (near '%.16s'; NaN and "
                                "Infinity are not JSON)",
                                path, at, text + at);
}

/* "tasks": a non-empty array of strings. */
static lm_status read_tasks(lm_context *ctx, const char *path,
                            const cJSON *tasks, struct lm__nsc_table *t)
{
    int n = cJSON_GetArraySize(tasks);
    if (!cJSON_IsArray(tasks) || n < 1)
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "nsc coefficients '%s': key 'tasks' "
                                    "must be a non-empty array of task "
                                    "names", path);
    t->tasks = lm__calloc(ctx, (size_t)n, sizeof(char *));
    if (!t->tasks)
        return oom(ctx, path);
    t->n_tasks = (size_t)n;
    size_t k = 0;
    for (const cJSON *e = tasks->child; e; e = e->next, k++) {
        if (!cJSON_IsString(e))
            return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                        "nsc coefficients '%s': tasks[%zu] "
                                        "is not a string", path, k);
        if (!(t->tasks[k] = lm__strdup(ctx, e->valuestring)))
            return oom(ctx, path);
    }
    return LM_OK;
}

/* One row of "modules": exactly n_tasks finite numbers. */
static lm_status read_row(lm_context *ctx, const char *path, const cJSON *row,
                          const struct lm__nsc_table *t, double *out)
{
    const char *key = row->string;
    if (!cJSON_IsArray(row))
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "nsc coefficients '%s': modules['%s'] "
                                    "must be an array of %zu numbers (one "
                                    "per task)", path, key, t->n_tasks);
    size_t n = (size_t)cJSON_GetArraySize(row);
    if (n != t->n_tasks)
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "nsc coefficients '%s': modules['%s'] "
                                    "has %zu values for %zu tasks", path,
                                    key, n, t->n_tasks);
    size_t k = 0;
    for (const cJSON *e = row->child; e; e = e->next, k++) {
        if (!cJSON_IsNumber(e))
            return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                        "nsc coefficients '%s': "
                                        "modules['%s'][%zu] is not a number",
                                        path, key, k);
        if (!isfinite(e->valuedouble))
            return lm_context_set_error(ctx, LM_ERR_NONFINITE,
                                        "nsc coefficients '%s': "
                                        "modules['%s'][%zu] is not finite",
                                        path, key, k);
        out[k] = e->valuedouble;
    }
    return LM_OK;
}

static lm_status read_modules(lm_context *ctx, const char *path,
                              const cJSON *modules, struct lm__nsc_table *t)
{
    if (!cJSON_IsObject(modules))
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "nsc coefficients '%s': key 'modules' "
                                    "must be an object {module name: [one "
                                    "lambda per task]}", path);
    size_t n = (size_t)cJSON_GetArraySize(modules);
    t->modules = lm__calloc(ctx, n + 1, sizeof(char *));
    t->lambdas = lm__calloc(ctx, n * t->n_tasks + 1, sizeof(double));
    if (!t->modules || !t->lambdas)
        return oom(ctx, path);
    for (const cJSON *e = modules->child; e; e = e->next) {
        size_t i = t->n_modules;
        if (lm__nsc_table_find(t, e->string))
            return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                        "nsc coefficients '%s': module "
                                        "'%s' is listed twice", path,
                                        e->string);
        LM_TRY(read_row(ctx, path, e, t, t->lambdas + i * t->n_tasks));
        if (!(t->modules[i] = lm__strdup(ctx, e->string)))
            return oom(ctx, path);
        t->n_modules++;
        if (lm__name_set_add(ctx, &t->index, i, module_name, t) != LM_OK)
            return oom(ctx, path);
    }
    return LM_OK;
}

static lm_status read_root(lm_context *ctx, const char *path,
                           const cJSON *root, struct lm__nsc_table *t)
{
    if (!cJSON_IsObject(root))
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "nsc coefficients '%s': not a JSON "
                                    "object", path);
    const cJSON *format = cJSON_GetObjectItemCaseSensitive(root, "format");
    if (!cJSON_IsString(format) ||
        strcmp(format->valuestring, LM__NSC_TABLE_FORMAT) != 0)
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "nsc coefficients '%s': key 'format' "
                                    "must be \"" LM__NSC_TABLE_FORMAT "\"",
                                    path);
    const cJSON *version = cJSON_GetObjectItemCaseSensitive(root, "version");
    if (!cJSON_IsNumber(version))
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "nsc coefficients '%s': key 'version' "
                                    "must be a number", path);
    if (version->valuedouble != 1.0)
        return lm_context_set_error(ctx, LM_ERR_UNSUPPORTED,
                                    "nsc coefficients '%s': version %g is "
                                    "not supported (this build reads 1)",
                                    path, version->valuedouble);
    LM_TRY(read_tasks(ctx, path,
                      cJSON_GetObjectItemCaseSensitive(root, "tasks"), t));
    return read_modules(ctx, path,
                        cJSON_GetObjectItemCaseSensitive(root, "modules"), t);
}

lm_status lm__nsc_table_read(lm_context *ctx, const char *path,
                             struct lm__nsc_table **out)
{
    char *text = NULL;
    size_t len = 0;
    LM_TRY(lm__read_input(ctx, "nsc coefficients", path, MAX_TABLE, &text,
                          &len));
    cJSON *root = NULL;
    lm_status st = parse_text(ctx, path, text, len, &root);
    lm_free(ctx, text);
    struct lm__nsc_table *t = NULL;
    if (st == LM_OK && !(t = lm__calloc(ctx, 1, sizeof(*t))))
        st = oom(ctx, path);
    if (st == LM_OK && !(t->path = lm__strdup(ctx, path)))
        st = oom(ctx, path);
    if (st == LM_OK)
        st = read_root(ctx, path, root, t);
    cJSON_Delete(root);
    if (st != LM_OK) {
        lm__nsc_table_free(ctx, t);
        return st;
    }
    *out = t;
    return LM_OK;
}

/* A JSON string: quotes, backslashes and control bytes escaped; other
 * bytes (UTF-8 included) as they are. */
static void put_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void put_table(FILE *f, size_t n_tasks, const char *const *tasks,
                      size_t n_modules, const char *const *modules,
                      const double *lambdas)
{
    fprintf(f, "{\n  \"format\": \"" LM__NSC_TABLE_FORMAT "\",\n"
               "  \"version\": 1,\n  \"tasks\": [");
    for (size_t k = 0; k < n_tasks; k++) {
        if (k)
            fputs(", ", f);
        if (tasks) {
            put_string(f, tasks[k]);
        } else {
            fprintf(f, "\"task%zu\"", k);
        }
    }
    fputs("],\n  \"modules\": {", f);
    for (size_t i = 0; i < n_modules; i++) {
        fputs(i ? ",\n    " : "\n    ", f);
        put_string(f, modules[i]);
        fputs(": [", f);
        /* %.17g: every double reads back bit for bit. */
        for (size_t k = 0; k < n_tasks; k++)
            fprintf(f, "%s%.17g", k ? ", " : "", lambdas[i * n_tasks + k]);
        fputc(']', f);
    }
    fputs(n_modules ? "\n  }\n}\n" : "}\n}\n", f);
}

lm_status lm__nsc_table_write(lm_context *ctx, const char *path,
                              size_t n_tasks, const char *const *tasks,
                              size_t n_modules, const char *const *modules,
                              const double *lambdas)
{
    for (size_t i = 0; i < n_modules; i++)
        for (size_t k = 0; k < n_tasks; k++)
            if (!isfinite(lambdas[i * n_tasks + k]))
                return lm_context_set_error(ctx, LM_ERR_NONFINITE,
                                            "nsc: lambda of module '%s', "
                                            "task %zu is not finite; '%s' "
                                            "not written", modules[i], k,
                                            path);
    struct lm__atomic_file file;
    LM_TRY(lm__atomic_open(ctx, path, &file));
    FILE *f = fdopen(file.fd, "w");
    if (!f) {
        lm__atomic_discard(&file);
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "nsc: out of memory writing '%s'", path);
    }
    file.fd = dup(fileno(f)); /* the atomic file syncs and closes its own */
    put_table(f, n_tasks, tasks, n_modules, modules, lambdas);
    bool ok = !ferror(f) && fflush(f) == 0;
    int saved = errno;
    if (fclose(f))
        ok = false;
    if (ok && file.fd >= 0)
        return lm__atomic_commit(&file);
    lm__atomic_discard(&file);
    return lm_context_set_error(ctx, LM_ERR_IO, "nsc: cannot write '%s': %s",
                                path, strerror(saved ? saved : EIO));
}
