/* Parameter values of one plan, validated against the strategy's table. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/plan_private.h"

/* The registry stores every table normalised to the current
 * lm_param_desc layout, so plain indexing is safe here. */
static lm_param_desc desc_at(const lm_strategy_vtable *vt, size_t i)
{
    return vt->params[i];
}

int lm__params_index(const lm_params *p, const char *name)
{
    for (size_t i = 0; i < p->vt->n_params; i++)
        if (strcmp(p->vt->params[i].name, name) == 0)
            return (int)i;
    return -1;
}

/* Copy the first word of a "a|b|c" list. */
static char *first_choice(lm_context *ctx, const char *choices)
{
    size_t n = strcspn(choices, "|");
    char *s = lm_alloc(ctx, n + 1);
    if (s) {
        memcpy(s, choices, n);
        s[n] = '\0';
    }
    return s;
}

lm_status lm__params_create(lm_context *ctx, const lm_strategy_vtable *vt,
                            lm_params **out)
{
    lm_params *p = lm__calloc(ctx, 1, sizeof(*p));
    if (!p)
        return LM_ERR_OUT_OF_MEMORY;
    p->ctx = ctx;
    p->vt = vt;
    size_t n = vt->n_params;
    p->values = lm__calloc(ctx, n ? n : 1, sizeof(double));
    p->choices = lm__calloc(ctx, n ? n : 1, sizeof(char *));
    p->set = lm__calloc(ctx, n ? n : 1, sizeof(bool));
    if (!p->values || !p->choices || !p->set) {
        lm__params_destroy(p);
        return LM_ERR_OUT_OF_MEMORY;
    }
    for (size_t i = 0; i < n; i++) {
        lm_param_desc d = desc_at(vt, i);
        p->values[i] = d.default_value;
        if (d.type == LM_PARAM_CHOICE || d.type == LM_PARAM_STRING) {
            p->choices[i] = first_choice(ctx, d.type == LM_PARAM_STRING
                                                  ? ""
                                                  : d.choices);
            if (!p->choices[i]) {
                lm__params_destroy(p);
                return LM_ERR_OUT_OF_MEMORY;
            }
        }
    }
    *out = p;
    return LM_OK;
}

lm_status lm__params_attach(lm_params *p, const void *tag, void *data,
                            void (*destroy)(lm_context *ctx, void *data))
{
    if (p->attach_tag && p->attach_tag != tag)
        return lm_context_set_error(p->ctx, LM_ERR_STATE,
                                    "plan: strategy '%s' already has other "
                                    "data attached", p->vt->name);
    if (p->attach_data && p->attach_destroy)
        p->attach_destroy(p->ctx, p->attach_data);
    p->attach_tag = data ? tag : NULL;
    p->attach_data = data;
    p->attach_destroy = data ? destroy : NULL;
    return LM_OK;
}

void *lm__params_attachment(const lm_params *p, const void *tag)
{
    return p && p->attach_tag == tag ? p->attach_data : NULL;
}

void lm__params_destroy(lm_params *p)
{
    if (!p)
        return;
    if (p->attach_data && p->attach_destroy)
        p->attach_destroy(p->ctx, p->attach_data);
    lm__params_overrides_free(p);
    if (p->choices)
        for (size_t i = 0; i < p->vt->n_params; i++)
            lm_free(p->ctx, p->choices[i]);
    lm_free(p->ctx, p->choices);
    lm_free(p->ctx, p->values);
    lm_free(p->ctx, p->set);
    lm_free(p->ctx, p);
}

static lm_status unknown_param(const lm_params *p, const char *name)
{
    char list[512] = "";
    for (size_t i = 0; i < p->vt->n_params; i++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s",
                 i ? ", " : "", p->vt->params[i].name);
    return lm_context_set_error(p->ctx, LM_ERR_NOT_FOUND,
                                "strategy '%s' has no parameter '%s' "
                                "(parameters: %s)", p->vt->name, name,
                                p->vt->n_params ? list : "none");
}

void lm__params_range(const lm_params *p, int i, double *min, double *max)
{
    lm_param_desc d = desc_at(p->vt, (size_t)i);
    *min = d.min_value;
    *max = d.max_value;
}

lm_status lm__params_check_value(const lm_params *p, int i, double value)
{
    lm_param_desc d = desc_at(p->vt, (size_t)i);
    const char *s = p->vt->name, *name = d.name;
    if (d.type == LM_PARAM_CHOICE || d.type == LM_PARAM_STRING)
        return lm_context_set_error(p->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "%s: parameter '%s' takes %s%s, not a "
                                    "number", s, name,
                                    d.type == LM_PARAM_STRING ? "text"
                                                              : "one of ",
                                    d.type == LM_PARAM_STRING ? ""
                                                              : d.choices);
    if (isnan(value))
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_RANGE,
                                    "%s: parameter '%s' is NaN", s, name);
    if (d.type == LM_PARAM_INT && value != floor(value))
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_RANGE,
                                    "%s: parameter '%s' must be an integer, "
                                    "got %g", s, name, value);
    if (d.type == LM_PARAM_BOOL && value != 0.0 && value != 1.0)
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_RANGE,
                                    "%s: parameter '%s' is a boolean (0 or "
                                    "1), got %g", s, name, value);
    if (value < d.min_value || value > d.max_value)
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_RANGE,
                                    "%s: parameter '%s' = %g is outside "
                                    "[%g, %g]", s, name, value, d.min_value,
                                    d.max_value);
    return LM_OK;
}

lm_status lm__params_set_float(lm_params *p, const char *name, double value)
{
    int i = lm__params_index(p, name);
    if (i < 0)
        return unknown_param(p, name);
    LM_TRY(lm__params_check_value(p, i, value));
    p->values[i] = value;
    p->set[i] = true;
    return LM_OK;
}

static bool parse_bool(const char *v, double *out)
{
    static const char *yes[] = {"true", "yes", "on", "1"};
    static const char *no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0) { *out = 1.0; return true; }
        if (strcasecmp(v, no[i]) == 0) { *out = 0.0; return true; }
    }
    return false;
}

/* Is `word` one of the '|'-separated choices? */
static bool in_choices(const char *choices, const char *word)
{
    size_t n = strlen(word);
    for (const char *c = choices; *c;) {
        size_t len = strcspn(c, "|");
        if (len == n && strncmp(c, word, n) == 0)
            return true;
        c += len;
        if (*c == '|')
            c++;
    }
    return false;
}

lm_status lm__params_set_string(lm_params *p, const char *name,
                                const char *value)
{
    int i = lm__params_index(p, name);
    if (i < 0)
        return unknown_param(p, name);
    lm_param_desc d = desc_at(p->vt, (size_t)i);
    const char *s = p->vt->name;
    if (d.type == LM_PARAM_CHOICE || d.type == LM_PARAM_STRING) {
        if (d.type == LM_PARAM_CHOICE && !in_choices(d.choices, value))
            return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_RANGE,
                                        "%s: parameter '%s' = '%s' is not "
                                        "one of %s", s, name, value,
                                        d.choices);
        char *copy = lm__strdup(p->ctx, value);
        if (!copy)
            return LM_ERR_OUT_OF_MEMORY;
        lm_free(p->ctx, p->choices[i]);
        p->choices[i] = copy;
        p->set[i] = true;
        return LM_OK;
    }
    double v;
    if (d.type == LM_PARAM_BOOL) {
        if (!parse_bool(value, &v))
            return lm_context_set_error(p->ctx, LM_ERR_INVALID_ARGUMENT,
                                        "%s: parameter '%s' = '%s' is not a "
                                        "boolean", s, name, value);
    } else {
        char *end;
        errno = 0;
        v = strtod(value, &end);
        while (*end == ' ' || *end == '\t')
            end++;
        if (end == value || *end || errno == ERANGE)
            return lm_context_set_error(p->ctx, LM_ERR_INVALID_ARGUMENT,
                                        "%s: parameter '%s' = '%s' is not a "
                                        "number", s, name, value);
    }
    return lm__params_set_float(p, name, v);
}

static lm_status lookup(const lm_params *p, const char *name,
                        lm_param_type want, int *index)
{
    if (!p || !name)
        return LM_ERR_INVALID_ARGUMENT;
    int i = lm__params_index(p, name);
    if (i < 0)
        return unknown_param(p, name);
    if (desc_at(p->vt, (size_t)i).type != want)
        return lm_context_set_error(p->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "%s: parameter '%s' read with the wrong "
                                    "type", p->vt->name, name);
    *index = i;
    return LM_OK;
}

lm_status lm_params_get_float(const lm_params *p, const char *name,
                              double *out)
{
    int i;
    if (!out)
        return LM_ERR_INVALID_ARGUMENT;
    LM_TRY(lookup(p, name, LM_PARAM_FLOAT, &i));
    *out = lm__params_value(p, i, LM_ALL_MODELS);
    return LM_OK;
}

lm_status lm_params_get_int(const lm_params *p, const char *name,
                            int64_t *out)
{
    int i;
    if (!out)
        return LM_ERR_INVALID_ARGUMENT;
    LM_TRY(lookup(p, name, LM_PARAM_INT, &i));
    *out = (int64_t)lm__params_value(p, i, LM_ALL_MODELS);
    return LM_OK;
}

lm_status lm_params_get_bool(const lm_params *p, const char *name, int *out)
{
    int i;
    if (!out)
        return LM_ERR_INVALID_ARGUMENT;
    LM_TRY(lookup(p, name, LM_PARAM_BOOL, &i));
    *out = lm__params_value(p, i, LM_ALL_MODELS) != 0.0;
    return LM_OK;
}

lm_status lm_params_get_choice(const lm_params *p, const char *name,
                               const char **out)
{
    int i;
    if (!out)
        return LM_ERR_INVALID_ARGUMENT;
    LM_TRY(lookup(p, name, LM_PARAM_CHOICE, &i));
    *out = p->choices[i];
    return LM_OK;
}

lm_status lm_params_get_string(const lm_params *p, const char *name,
                               const char **out)
{
    int i;
    if (!out)
        return LM_ERR_INVALID_ARGUMENT;
    LM_TRY(lookup(p, name, LM_PARAM_STRING, &i));
    *out = p->choices[i];
    return LM_OK;
}

int lm_params_is_set(const lm_params *p, const char *name)
{
    if (!p || !name)
        return 0;
    int i = lm__params_index(p, name);
    return i >= 0 && lm__params_overridden(p, i);
}

lm_status lm_params_get_model_float(const lm_params *p, const char *name,
                                    size_t model, double *out)
{
    if (!p || !name || !out)
        return LM_ERR_INVALID_ARGUMENT;
    int i = lm__params_index(p, name);
    if (i < 0)
        return unknown_param(p, name);
    lm_param_type type = desc_at(p->vt, (size_t)i).type;
    if (type == LM_PARAM_CHOICE || type == LM_PARAM_STRING)
        return lm_context_set_error(p->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "%s: parameter '%s' is not a number",
                                    p->vt->name, name);
    *out = lm__params_value(p, i, model);
    return LM_OK;
}
