/* `chat_template`, as mergekit's _set_chat_template (mergekit/merge.py):
 * "auto" takes the template most of the models carry (ties: the first
 * model's, in config order; none: no template is set), any other value is
 * Jinja text, refused when shorter than 20 characters or without '{'.
 * mergekit's bundled template names are refused by name: we do not ship
 * its template files. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

/* Python's str.strip() for ASCII whitespace, into a new string. */
static char *stripped(const char *s)
{
    while (*s && isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        n--;
    char *out = malloc(n + 1);
    if (out) {
        memcpy(out, s, n);
        out[n] = '\0';
    }
    return out;
}

/* A model's template as transformers loads it: chat_template.jinja, else
 * tokenizer_config.json's "chat_template" (a string, or a list of
 * {name, template} of which "default"). NULL when it has none. */
static int model_template(const char *dir, char **out, char *err,
                          size_t err_size)
{
    *out = NULL;
    char path[4096];
    size_t len;
    snprintf(path, sizeof(path), "%s/chat_template.jinja", dir);
    char *text = tok_read_file(path, &len);
    if (text) {
        *out = stripped(text);
        free(text);
        return 0;
    }
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    bool missing = false;
    cJSON *root = tok_json_load(path, &missing, err, err_size);
    if (!root)
        return missing ? 0 : -1;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
    const char *found = cJSON_IsString(t) ? t->valuestring : NULL;
    const cJSON *it, *list = cJSON_IsArray(t) ? t : NULL;
    cJSON_ArrayForEach(it, list) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(it, "name");
        const cJSON *tmpl = cJSON_GetObjectItemCaseSensitive(it, "template");
        if (cJSON_IsString(name) && !strcmp(name->valuestring, "default") &&
            cJSON_IsString(tmpl))
            found = tmpl->valuestring;
    }
    if (found && found[0])
        *out = stripped(found);
    cJSON_Delete(root);
    return 0;
}

static int auto_template(lmerge_tok_plan *p, char *err, size_t err_size)
{
    char **seen = calloc(p->n_models + 1, sizeof(char *));
    if (!seen)
        return snprintf(err, err_size, "out of memory"), -1;
    size_t n = 0;
    int rc = 0;
    for (size_t m = 0; m < p->n_models && rc == 0; m++) {
        char *t = NULL;
        if (p->models[m].is_input)
            rc = model_template(p->models[m].path, &t, err, err_size);
        if (t && t[0])
            seen[n++] = t;
        else
            free(t);
    }
    size_t best = 0, best_count = 0;
    for (size_t i = 0; i < n; i++) {
        size_t count = 0;
        for (size_t j = 0; j < n; j++)
            count += !strcmp(seen[i], seen[j]);
        if (count > best_count) {
            best = i;
            best_count = count;
        }
    }
    if (rc == 0 && n) {
        p->chat_template = seen[best];
        seen[best] = NULL;
    }
    for (size_t i = 0; i < n; i++)
        free(seen[i]);
    free(seen);
    return rc;
}

int tok_resolve_chat_template(lmerge_tok_plan *p, char *err, size_t err_size)
{
    const char *t = p->spec->chat_template;
    if (!t)
        return 0;
    if (!strcmp(t, "auto"))
        return auto_template(p, err, err_size);
    static const char *const bundled[] = {"alpaca", "chatml", "exaone",
                                          "llama3", "mistral"};
    for (size_t i = 0; i < sizeof(bundled) / sizeof(bundled[0]); i++) {
        if (!strcmp(t, bundled[i])) {
            snprintf(err, err_size, "line %d: chat_template '%s' names one "
                     "of mergekit's bundled templates, which lmerge does not "
                     "ship; give the Jinja text or 'auto'",
                     p->spec->chat_template_line, t);
            return -1;
        }
    }
    if (strlen(t) < 20 || !strchr(t, '{')) {
        snprintf(err, err_size, "line %d: invalid chat_template '%s' (Jinja "
                 "text of at least 20 characters with '{', or 'auto')",
                 p->spec->chat_template_line, t);
        return -1;
    }
    p->chat_template = strdup(t);
    if (!p->chat_template)
        return snprintf(err, err_size, "out of memory"), -1;
    return 0;
}
