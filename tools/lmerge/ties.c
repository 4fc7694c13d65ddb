/* Tied embeddings in model files: a checkpoint that stores both its input
 * embedding and an identical output head (tied weights saved twice) must
 * get one merge for both, or DARE and ESM untie them. A known pair is
 * tied when both tensors are in the base and byte-identical there and in
 * every fine-tuned model, and no adapter targets either. (Checkpoints
 * that store the embedding once need nothing: the output has the base's
 * tensors.) */
#include <stdio.h>
#include <string.h>

#include "ties.h"

/* (output head, input embedding) of the families we know. */
static const char *const pairs[][2] = {
    {"lm_head.weight", "model.embed_tokens.weight"}, /* Llama, Qwen2, Gemma */
    {"lm_head.weight", "transformer.wte.weight"},    /* GPT-2 */
    {"embed_out.weight", "gpt_neox.embed_in.weight"},/* GPT-NeoX */
    {"output.weight", "token_embd.weight"},          /* GGUF names */
};

static int identical(const lm_model *m, const char *a, const char *b)
{
    lm_tensor *ta, *tb;
    if (lm_model_find(m, a, &ta) != LM_OK || lm_model_find(m, b, &tb) != LM_OK)
        return 0;
    const void *da = lm_tensor_cdata(ta), *db = lm_tensor_cdata(tb);
    if (!da || !db || lm_tensor_dtype(ta) != lm_tensor_dtype(tb) ||
        lm_tensor_ndim(ta) != lm_tensor_ndim(tb) ||
        lm_tensor_nbytes(ta) != lm_tensor_nbytes(tb))
        return 0;
    for (int d = 0; d < lm_tensor_ndim(ta); d++)
        if (lm_tensor_dim(ta, d) != lm_tensor_dim(tb, d))
            return 0;
    return memcmp(da, db, lm_tensor_nbytes(ta)) == 0;
}

int lmerge_tie_embeddings(lm_context *ctx, lm_plan *plan, const lm_model *base,
                          lm_model *const *models, lm_lora *const *adapters,
                          size_t n, int quiet)
{
    for (size_t k = 0; k < sizeof(pairs) / sizeof(pairs[0]); k++) {
        const char *head = pairs[k][0], *embed = pairs[k][1];
        int tied = identical(base, head, embed);
        for (size_t m = 0; tied && m < n; m++)
            tied = adapters[m]
                       ? lm_lora_find(adapters[m], head, NULL, NULL, NULL) !=
                                 LM_OK &&
                             lm_lora_find(adapters[m], embed, NULL, NULL,
                                          NULL) != LM_OK
                       : identical(models[m], head, embed);
        if (!tied)
            continue;
        if (lm_plan_tie(plan, head, embed) != LM_OK) {
            fprintf(stderr, "lmerge run: %s\n", lm_context_error(ctx));
            return -1;
        }
        if (!quiet)
            fprintf(stderr, "lmerge run: '%s' is tied to '%s' (identical in "
                    "every model): merged once\n", head, embed);
    }
    return 0;
}
