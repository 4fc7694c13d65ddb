/* `lmerge run`'s use of tokenizer merging: plan it from the config's
 * paths, check that every input is a full model, remap the embeddings;
 * without a tokenizer source, cut embeddings of different sizes to their
 * common rows. */
#include <stdio.h>
#include <stdlib.h>

#include "config.h"
#include "tokenizer.h"

int lmerge_tokenizer_prepare(lm_context *ctx, const struct lmerge_config *c,
                             lm_model *base, lm_model *const *models,
                             lm_lora *const *adapters, lmerge_tok_plan **tp,
                             lm_model ***remapped)
{
    *tp = NULL;
    *remapped = NULL;
    size_t n = c->n_models + 1;
    const char **paths = calloc(n, sizeof(*paths));
    lm_model **in = calloc(n, sizeof(*in));
    lm_model **out = calloc(n, sizeof(*out));
    char err[1024];
    int rc = -1;
    if (!paths || !in || !out) {
        fprintf(stderr, "lmerge run: out of memory\n");
        goto done;
    }
    paths[0] = c->base_model;
    in[0] = base;
    for (size_t m = 0; m < c->n_models; m++) {
        paths[m + 1] = c->models[m].path;
        in[m + 1] = models[m];
        if (adapters[m] && c->tokenizer.source) {
            fprintf(stderr, "lmerge run: line %d: '%s' is a LoRA adapter; "
                    "tokenizer merging remaps the embeddings of full "
                    "models\n", c->models[m].line, c->models[m].path);
            goto done;
        }
    }
    if (c->tokenizer.source || c->tokenizer.chat_template) {
        if (lmerge_tokenizer_plan(&c->tokenizer, paths, n, tp, err,
                                  sizeof(err)) ||
            lmerge_tokenizer_remap(*tp, ctx, in, out, err, sizeof(err))) {
            fprintf(stderr, "lmerge run: %s\n", err);
            lmerge_tokenizer_plan_free(*tp);
            *tp = NULL;
            goto done;
        }
    }
    if (!c->tokenizer.source) {
        bool cut = false;
        if (lmerge_tokenizer_rectify(ctx, in, n, out, &cut, err,
                                     sizeof(err))) {
            fprintf(stderr, "lmerge run: %s\n", err);
            lmerge_tokenizer_plan_free(*tp);
            *tp = NULL;
            goto done;
        }
        if (cut)
            fprintf(stderr, "lmerge run: note: the embedding matrices have "
                    "different row counts and no tokenizer source is given; "
                    "merging their common leading rows (as mergekit)\n");
    }
    *remapped = out;
    out = NULL;
    rc = 0;
done:
    free(paths);
    free(in);
    free(out);
    return rc;
}

void lmerge_tokenizer_release(lmerge_tok_plan *tp, lm_model **remapped,
                              size_t n)
{
    for (size_t i = 0; remapped && i < n; i++)
        lm_model_destroy(remapped[i]);
    free(remapped);
    lmerge_tokenizer_plan_free(tp);
}
