/* mergekit merge methods as libmerge strategies: which strategy a
 * mergekit `merge_method` runs on, which of its parameters are merge-wide
 * and which per model, mergekit's defaults, and the libmerge parameters
 * that reproduce mergekit's numbers (docs/cli.md, "Coming from
 * mergekit"). */
#ifndef LMERGE_MERGEKIT_METHODS_H
#define LMERGE_MERGEKIT_METHODS_H

#include <stdbool.h>
#include <stddef.h>

/* How a method treats the base model. */
enum lmerge_base_role {
    /* The base is the reference the task vectors are taken from; listed
     * under `models` it is not a task (mergekit drops it from the task
     * vectors). A base is required. */
    LMERGE_BASE_REFERENCE,
    /* Every source is a model of the merge; a base listed under `models`
     * is one of them. Without base_model the first source is the plan's
     * base (the result does not depend on it). */
    LMERGE_BASE_MEMBER,
    /* A libmerge strategy that is not a mergekit method: base required,
     * the models as listed. */
    LMERGE_BASE_LIBMERGE,
};

struct lmerge_mk_param {
    const char *name;     /* mergekit's spelling */
    bool per_model;       /* mergekit tensor_parameters (per model) */
    const char *fallback; /* mergekit's default as text; NULL: none */
    bool required;        /* mergekit raises when absent */
};

struct lmerge_method {
    const char *name;      /* the config's merge_method */
    const char *strategy;  /* preferred libmerge strategy */
    const char *alt_strategy; /* used when `strategy` is not registered */
    enum lmerge_base_role role;
    const struct lmerge_mk_param *params; /* NULL-name terminated */
    /* libmerge parameters always set ("name=value;..."), then
     * mergekit-value translations applied by lmerge_mk_translate. */
    const char *fixed;
    size_t min_models, max_models; /* besides the base; 0 = any */
    bool mergekit;         /* false: a libmerge-only strategy */
    /* Set when mergekit also runs the method without base_model: the
     * method then works as LMERGE_BASE_MEMBER with these libmerge
     * parameters fixed ("name=value;..."). */
    const char *without_base;
};

/* The method as a config without base_model runs it (*scratch filled when
 * it differs from m). */
const struct lmerge_method *lmerge_method_without_base(
    const struct lmerge_method *m, struct lmerge_method *scratch);

/* libmerge's own parameters added to a mergekit method, taking words
 * rather than numbers (ties: `scope`). */
bool lmerge_mk_text_param(const struct lmerge_method *m, const char *name);

/* The method for a config's merge_method: mergekit's table, else a
 * generic entry for a libmerge strategy (filled into *scratch). */
const struct lmerge_method *lmerge_method_find(const char *name,
                                               struct lmerge_method *scratch);
/* mergekit's parameter `name` of method m, or NULL. */
const struct lmerge_mk_param *lmerge_method_param(
    const struct lmerge_method *m, const char *name);

/* Translate mergekit parameter `name` = `value` (a number) to a libmerge
 * parameter: *lib_name, and either *lib_text (a choice) or *lib_value.
 * Returns 0 when set, 1 when the parameter has no libmerge counterpart
 * because it changes nothing numerically (int8_mask), -1 when the value
 * cannot be honoured (message in err). */
int lmerge_mk_translate(const struct lmerge_method *m, const char *name,
                        double value, const char **lib_name,
                        const char **lib_text, double *lib_value, char *err,
                        size_t err_size);

#endif
