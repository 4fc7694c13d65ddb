/* mergekit-style YAML merge configurations, as mergekit documents them
 * (github.com/arcee-ai/mergekit, mergekit/config.py): the schema only.
 * What a config means for a merge (method mapping, per-tensor values,
 * output layout) is resolved in mergekit_map.c and layout.c. */
#ifndef LMERGE_CONFIG_H
#define LMERGE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

/* A parameter value (mergekit's ParameterSetting): a scalar, a list of
 * scalars (a gradient over the layer position t), or a list of
 * conditionals `{filter: SUBSTRING, value: SCALAR_OR_GRADIENT}` of which
 * the first whose filter is absent, "*" or contained in the tensor name
 * applies. */
struct lmerge_param {
    char *key;      /* parameter name; for a conditional: the filter or NULL */
    char *value;    /* scalar text as written; NULL for a list */
    char **list;    /* a gradient: the scalars as written */
    size_t n_list;
    struct lmerge_param *conds; /* filter list */
    size_t n_conds;
    int line;
};

/* One input: `model` (a path, or PATH+LORA_PATH: the LoRA applied to the
 * model first, as mergekit's ModelReference), `layer_range` in a slice. */
struct lmerge_model_ref {
    char *path;     /* the reference as written (model+lora) */
    char *model;    /* the model part */
    char *lora;     /* the LoRA part or NULL */
    int line;
    int64_t layer_range[2];
    bool has_range;
    bool appended;  /* the base added to `models` as mergekit does */
    struct lmerge_param *params; /* per-model parameters (weight, ...) */
    size_t n_params;
};

/* `slices:` entries: sources merged layer by layer. */
struct lmerge_slice {
    struct lmerge_model_ref *sources;
    size_t n_sources;
    struct lmerge_param *params;
    size_t n_params;
    int line;
};

struct lmerge_config {
    char *merge_method;
    int merge_method_line;
    char *base_model;
    char *base_lora; /* base_model given as MODEL+LORA */
    int base_model_line;
    char *dtype;     /* mergekit: compute dtype; lmerge computes in f32 and
                        writes this dtype unless out_dtype is given */
    char *out_dtype; /* output dtype, overrides dtype for the output */
    int dtype_line, out_dtype_line;
    char *gguf_type; /* GGUF output storage (gguf_out.c), NULL: auto */
    struct lmerge_model_ref *models;
    size_t n_models;
    int models_line;
    struct lmerge_slice *slices;
    size_t n_slices;
    int slices_line;
    struct lmerge_param *params; /* top-level `parameters` */
    size_t n_params;
    /* tokenizer_source / tokenizer / chat_template (tokenizer_yaml.c) */
    struct lmerge_tok_spec tokenizer;
    /* `stats:` one path or a list (lm_stats files, summed), model index t
     * of a file = the t-th entry of `models`. */
    char **stats;
    size_t n_stats;
    int stats_line;
    /* `purify:` keys and values, as written; purify_line 0 when absent. */
    struct lmerge_param *purify;
    size_t n_purify;
    int purify_line;
};

/* Parse a config file. On failure returns -1 and writes a message naming
 * the file and line into err. */
int lmerge_config_load(const char *path, struct lmerge_config *out,
                       char *err, size_t err_size);
void lmerge_config_free(struct lmerge_config *config);
void lmerge_params_free(struct lmerge_param *p, size_t n);

/* mergekit's evaluate_setting: the value of `p` for a tensor named
 * `tensor` at layer position t in [0, 1]. Returns 1 and sets *text (a
 * scalar as written) or *number (an interpolated gradient: *text NULL),
 * 0 when no conditional applies (the next level of precedence decides). */
int lmerge_param_eval(const struct lmerge_param *p, const char *tensor,
                      double t, const char **text, double *number);

/* A parameter's text as a number: YAML booleans are 1/0 (mergekit passes
 * them to Python, where they are numbers). Returns 0 on success. */
int lmerge_parse_number(const char *text, double *out);

#endif
