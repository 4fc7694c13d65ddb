/* Tokenizer merging for `lmerge run` (mergekit's `tokenizer_source`,
 * `tokenizer:` and `chat_template` keys): the merged model's vocabulary,
 * each input's embedding and LM-head rows remapped onto it, and the merged
 * tokenizer files. Semantics follow mergekit (mergekit/tokenizer/build.py,
 * embed.py and merge.py at github.com/arcee-ai/mergekit); docs/cli.md,
 * "Tokenizers", lists what differs. */
#ifndef LMERGE_TOKENIZER_H
#define LMERGE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libmerge.h>

/* Where a token's fallback embedding row comes from (`tokenizer.tokens`). */
enum lmerge_tok_source_kind {
    LMERGE_TOK_FROM_MODEL,       /* source: MODEL (its row of this token) */
    LMERGE_TOK_FROM_MODEL_TOKEN, /* {kind: model_token, model, token|token_id} */
    LMERGE_TOK_ZERO,             /* {kind: zero} */
};

struct lmerge_tok_token {
    char *token; /* the token's text */
    enum lmerge_tok_source_kind kind;
    char *model;      /* FROM_MODEL, FROM_MODEL_TOKEN */
    char *src_token;  /* FROM_MODEL_TOKEN by text, else NULL */
    int64_t src_id;   /* FROM_MODEL_TOKEN by id, else -1 */
    bool force;       /* every model takes this row, even one that has it */
    int line;
};

/* The tokenizer part of a config. No tokenizer merging when source is NULL
 * (chat_template alone still sets the base tokenizer's template). */
struct lmerge_tok_spec {
    char *source; /* "base", "union" or a model path */
    int line;     /* of the tokenizer / tokenizer_source key */
    bool legacy;  /* given as tokenizer_source */
    struct lmerge_tok_token *tokens;
    size_t n_tokens;
    int64_t pad_to_multiple_of; /* 0: no padding */
    char *chat_template;        /* "auto", or Jinja text; NULL when absent */
    int chat_template_line;
    /* Set by the caller when the config has no base_model: paths[0] still
     * gives the vocabulary (mergekit's referenced_models[0]) but the
     * "base's row" fallback is skipped, as in mergekit's embed.py. */
    bool no_base_model;
};

/* tokenizer_yaml.c: read the top-level key `key` (tokenizer_source,
 * tokenizer or chat_template; `value` is its YAML node in `doc`, a
 * yaml_document_t / yaml_node_t passed as void to keep libyaml out of this
 * header) into spec. Returns 0, or -1 with "PATH:LINE: message" in err.
 * Setting both tokenizer_source and tokenizer is an error (mergekit's). */
bool lmerge_tokenizer_is_key(const char *key);
int lmerge_tokenizer_spec_read(void *doc, void *value, const char *key,
                               const char *path, struct lmerge_tok_spec *spec,
                               char *err, size_t err_size);
void lmerge_tokenizer_spec_free(struct lmerge_tok_spec *spec);

typedef struct lmerge_tok_plan lmerge_tok_plan;

/* Read the tokenizer.json (and config.json) of the base and of every model
 * (paths[0] the base, paths[1..n_paths) the config's models, in config
 * order; a path may repeat) and build the output vocabulary and each
 * model's row permutation. `spec->source` NULL: only chat_template. The
 * plan copies *spec but not the strings it points to (they must outlive
 * the plan), nor the paths.
 * Returns 0, or -1 with a message naming the file and field in err. */
int lmerge_tokenizer_plan(const struct lmerge_tok_spec *spec,
                          const char *const *paths, size_t n_paths,
                          lmerge_tok_plan **out, char *err, size_t err_size);
/* Rows of the merged embedding matrices (the vocabulary, padded). */
int64_t lmerge_tokenizer_rows(const lmerge_tok_plan *plan);
/* in[i] is the model opened from paths[i]. out[i] receives a model with
 * the same tensors (the unchanged ones wrap in[i]'s data, which must stay
 * alive) whose embedding and LM-head matrices are remapped onto the merged
 * vocabulary. Nothing is done (out[i] = NULL) without a tokenizer source. */
int lmerge_tokenizer_remap(lmerge_tok_plan *plan, lm_context *ctx,
                           lm_model *const *in, lm_model **out, char *err,
                           size_t err_size);
/* Write tokenizer.json, tokenizer_config.json (with the chat template),
 * special_tokens_map.json and config.json's vocab_size into `dir` (the
 * output's staging directory, after the side files were copied there). */
int lmerge_tokenizer_write(const lmerge_tok_plan *plan, const char *dir,
                           char *err, size_t err_size);
void lmerge_tokenizer_plan_free(lmerge_tok_plan *plan);

/* tokenizer_rectify.c: without a tokenizer source, models whose embedding
 * or LM-head row counts differ are cut to the common leading rows
 * (mergekit's rectify_embed_sizes): out[i] a view of in[i] (NULL in[i]
 * skipped), *cut set; out[] all NULL when the sizes agree. */
int lmerge_tokenizer_rectify(lm_context *ctx, lm_model *const *in, size_t n,
                             lm_model **out, bool *cut, char *err,
                             size_t err_size);

/* run_tokenizer.c, for lmerge run. paths[0..n) are the merge's inputs
 * (the base first; a path may repeat) and in[i] the model opened from
 * paths[i] (NULL: a LoRA adapter, refused when a tokenizer source is
 * given). With a tokenizer source or chat_template: the plan (*tp, NULL
 * otherwise). *remapped: n models (entries NULL where in[i] is merged as it
 * is) to merge in place of in[i]: the remapped models, or without a
 * tokenizer source the common-rows views. in[] must outlive them. Prints
 * the error and returns -1 on failure. */
int lmerge_tokenizer_prepare(lm_context *ctx,
                             const struct lmerge_tok_spec *spec,
                             const char *const *paths, lm_model *const *in,
                             size_t n, lmerge_tok_plan **tp,
                             lm_model ***remapped);
void lmerge_tokenizer_release(lmerge_tok_plan *tp, lm_model **remapped,
                              size_t n);

#endif
