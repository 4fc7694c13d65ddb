/* mergekit-style YAML merge configurations. */
#ifndef LMERGE_CONFIG_H
#define LMERGE_CONFIG_H

#include <stddef.h>

#include "tokenizer.h"

struct lmerge_param {
    char *key;
    char *value; /* scalar text as written */
    int line;
};

struct lmerge_model_ref {
    char *path;
    int line;
    struct lmerge_param *params; /* per-model parameters (weight, ...) */
    size_t n_params;
};

struct lmerge_config {
    char *merge_method;
    int merge_method_line;
    char *base_model;
    char *dtype;     /* compute dtype (accepted; libmerge computes in f32) */
    char *out_dtype; /* output dtype, overrides dtype for the output */
    struct lmerge_model_ref *models;
    size_t n_models;
    struct lmerge_param *params; /* top-level `parameters` */
    size_t n_params;
    /* `stats:` one path or a list (lm_stats files, summed), model index t
     * of a file = the t-th entry of `models`. */
    char **stats;
    size_t n_stats;
    int stats_line;
    /* `purify:` keys and values, as written; purify_line 0 when absent. */
    struct lmerge_param *purify;
    size_t n_purify;
    int purify_line;
    /* tokenizer_source / tokenizer / chat_template (tokenizer_yaml.c) */
    struct lmerge_tok_spec tokenizer;
};

/* Parse a config file. On failure returns -1 and writes a message naming
 * the file and line into err. */
int lmerge_config_load(const char *path, struct lmerge_config *out,
                       char *err, size_t err_size);
void lmerge_config_free(struct lmerge_config *config);

#endif
