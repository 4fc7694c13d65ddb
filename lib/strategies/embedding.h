/* Which tensors the SVD family treats as vocabulary embeddings and output
 * heads (`embedding_route`): a 2-D tensor whose name matches
 * `embedding_pattern` (POSIX extended regex, searched; empty: the
 * built-in LM__EMBEDDING_NAMES) or, when `embedding_rows` > 0, whose row
 * count (as merged, [out, in]) is at least that. */
#ifndef LM_STRATEGIES_EMBEDDING_H
#define LM_STRATEGIES_EMBEDDING_H

#include <regex.h>

#include "strategies/builtin.h"

/* Input embeddings and output heads of the common families, by their
 * Hugging Face and GGUF names: Llama/Mistral/Qwen/Gemma (embed_tokens,
 * lm_head), GPT-2 (wte), BERT/BLOOM (word_embeddings), GPT-NeoX
 * (embed_out), T5 (shared), Meta's Llama (tok_embeddings, top-level
 * output), GGUF (token_embd, top-level output). */
#define LM__EMBEDDING_NAMES                                                 \
    "(^|[.])(embed_tokens|wte|word_embeddings|tok_embeddings|token_embd|"   \
    "embed_out|lm_head|shared)[.]weight$|^output[.]weight$"

/* The parameters every strategy with an embedding route declares after
 * its own (`routes`: the CHOICE list, its default first). */
#define LM__EMBEDDING_PARAMS(routes, help)                                  \
    {sizeof(lm_param_desc), "embedding_route", LM_PARAM_CHOICE, 0, 0, 0,    \
     routes, help, 0},                                                      \
    {sizeof(lm_param_desc), "embedding_pattern", LM_PARAM_STRING, 0, 0, 0,  \
     NULL, "regex naming the embedding/head tensors (empty: embed_tokens, " \
     "wte, word_embeddings, lm_head, ... see docs)", 0},                    \
    {sizeof(lm_param_desc), "embedding_rows", LM_PARAM_INT, 0.0, 0.0,       \
     4611686018427387904.0, NULL,                                           \
     "also treat 2-D tensors with at least this many rows as embeddings "   \
     "(0: by name only)", 0}

enum lm__embedding_route {
    LM_EMBEDDING_SVD,        /* like every other matrix (the default)      */
    LM_EMBEDDING_MEAN,       /* the strategy's rule for non-matrix tensors */
    LM_EMBEDDING_RANDOMIZED  /* a randomized SVD where the method truncates */
};

struct lm__embedding_rule {
    enum lm__embedding_route route;
    bool compiled;
    regex_t re;
    int64_t min_rows;
};

/* Read embedding_route/pattern/rows for strategy `strategy`; compiles the
 * pattern only when the route is not svd. Errors name the pattern. */
lm_status lm__embedding_rule_init(lm_context *ctx, const lm_params *params,
                                  const char *strategy,
                                  struct lm__embedding_rule *rule);
void lm__embedding_rule_free(struct lm__embedding_rule *rule);

/* The route for this tensor: LM_EMBEDDING_SVD unless it is an embedding. */
enum lm__embedding_route lm__embedding_route_for(
    const struct lm__embedding_rule *rule, const lm_tensor_job *job);

#endif
