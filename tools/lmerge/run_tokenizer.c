/* `lmerge run`'s use of tokenizer merging: plan it from the config's
 * paths, check that every input is a full model, remap the embeddings;
 * without a tokenizer source, cut embeddings of different sizes to their
 * common rows. */
#include <stdio.h>
#include <stdlib.h>

#include "tokenizer.h"

int lmerge_tokenizer_prepare(lm_context *ctx,
                             const struct lmerge_tok_spec *spec,
                             const char *const *paths, lm_model *const *in,
                             size_t n, lmerge_tok_plan **tp,
                             lm_model ***remapped)
{
    *tp = NULL;
    *remapped = NULL;
    lm_model **out = calloc(n ? n : 1, sizeof(*out));
    char err[1024];
    if (!out) {
        fprintf(stderr, "lmerge run: out of memory\n");
        return -1;
    }
    for (size_t i = 0; spec->source && i < n; i++) {
        if (!in[i]) {
            fprintf(stderr, "lmerge run: '%s' is a LoRA adapter; tokenizer "
                    "merging remaps the embeddings of full models\n",
                    paths[i]);
            free(out);
            return -1;
        }
    }
    int rc = 0;
    if (spec->source || spec->chat_template)
        rc = lmerge_tokenizer_plan(spec, paths, n, tp, err, sizeof(err)) ||
             lmerge_tokenizer_remap(*tp, ctx, in, out, err, sizeof(err));
    bool cut = false;
    if (rc == 0 && !spec->source)
        rc = lmerge_tokenizer_rectify(ctx, in, n, out, &cut, err,
                                      sizeof(err));
    if (rc) {
        fprintf(stderr, "lmerge run: %s\n", err);
        lmerge_tokenizer_plan_free(*tp);
        *tp = NULL;
        free(out);
        return -1;
    }
    if (cut)
        fprintf(stderr, "lmerge run: note: the embedding matrices have "
                "different row counts and no tokenizer source is given; "
                "merging their common leading rows (as mergekit)\n");
    *remapped = out;
    return 0;
}

void lmerge_tokenizer_release(lmerge_tok_plan *tp, lm_model **remapped,
                              size_t n)
{
    for (size_t i = 0; remapped && i < n; i++)
        lm_model_destroy(remapped[i]);
    free(remapped);
    lmerge_tokenizer_plan_free(tp);
}
