/* Shared between the tokenizer_*.c files only. */
#ifndef LMERGE_TOKENIZER_INTERNAL_H
#define LMERGE_TOKENIZER_INTERNAL_H

#include <cjson/cJSON.h>

#include "tokenizer.h"

/* tokenizer_map.c: token text -> id (open addressing, FNV-1a). Keys are
 * borrowed: they must outlive the map. */
struct tok_map {
    const char **keys;
    int64_t *ids;
    size_t cap, n;
};
int tok_map_put(struct tok_map *m, const char *key, int64_t id);
int64_t tok_map_get(const struct tok_map *m, const char *key); /* -1 */
void tok_map_free(struct tok_map *m);

/* One model's tokenizer: tokenizer.json read with cJSON. */
struct tok_vocab {
    char *path;    /* of tokenizer.json, for messages */
    cJSON *root;   /* the whole file, kept to write it out again */
    char **by_id;  /* token text by id (NULL for an unused id) */
    int64_t n_ids; /* largest id + 1 */
    struct tok_map map; /* model vocabulary, then added tokens (they win) */
    const char *model_type; /* "BPE", "WordPiece", "WordLevel", "Unigram" */
};

/* tokenizer_read.c */
/* Read DIR/tokenizer.json. Returns 0, 1 when DIR has none (a file, not a
 * directory, or no tokenizer.json), -1 with err naming file and field. */
int tok_vocab_read(const char *dir, struct tok_vocab *v, char *err,
                   size_t err_size);
void tok_vocab_free(struct tok_vocab *v);
/* DIR/config.json's integer `key` (-1 when the file or key is absent);
 * -2 with err set when the file is not JSON or the value not an integer. */
int64_t tok_config_int(const char *dir, const char *key, char *err,
                       size_t err_size);
/* A file read whole (NUL added); NULL with errno set on failure. */
char *tok_read_file(const char *path, size_t *len);
/* Parse a JSON file; NULL with err naming it on failure (absent: *missing
 * set and no error when missing is not NULL). */
cJSON *tok_json_load(const char *path, bool *missing, char *err,
                     size_t err_size);

/* Per unique input model. */
struct tok_model {
    const char *path;   /* borrowed from the caller's paths */
    struct tok_vocab vocab;
    bool has_vocab;     /* false: no tokenizer.json, the base's is assumed */
    bool is_input;      /* false: only the tokenizer source, not merged */
    int64_t vocab_size; /* config.json vocab_size, -1 when absent */
    int64_t *perm;      /* output id -> this model's row, -1 absent */
};

struct lmerge_tok_plan {
    const struct lmerge_tok_spec *spec; /* &spec_copy */
    struct lmerge_tok_spec spec_copy;   /* shallow: the strings stay the
                                           caller's */
    size_t n_paths;
    size_t *unique_of; /* paths[i] -> index in models */
    struct tok_model *models;
    size_t n_models;   /* models[0] is the base */
    /* output vocabulary */
    char **out_tokens; /* by id, borrowed from the vocabularies and spec */
    int64_t n_out, n_rows;
    struct tok_map out_map;
    size_t src_model; /* whose tokenizer files the output starts from */
    cJSON *out_json;  /* tokenizer.json to write; NULL without a source */
    cJSON *new_added; /* array of added_tokens entries appended (ids set) */
    bool same_as_base; /* the output vocabulary is the base's exactly */
    char *chat_template; /* resolved Jinja text, or NULL */
};

/* tokenizer_remap.c: {embedding, LM head} names by architecture, and
 * the pair whose embedding `m` has (NULL when none). */
#define TOK_N_PAIRS 4
extern const char *const tok_embed_names[TOK_N_PAIRS][2];
const char *const *tok_embed_pair(const lm_model *m);

/* tokenizer_plan.c: the output vocabulary and the permutations. */
int tok_build_vocab(lmerge_tok_plan *p, char *err, size_t err_size);
/* tokenizer_chat.c: resolve spec->chat_template into p->chat_template. */
int tok_resolve_chat_template(lmerge_tok_plan *p, char *err, size_t err_size);

#endif
