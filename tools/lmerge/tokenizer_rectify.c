/* Without a tokenizer source, embedding and LM-head matrices of different
 * row counts (a fine-tune that added tokens) are cut to their common
 * leading rows, as mergekit's rectify_embed_sizes does
 * (mergekit/merge_methods/rectify_embed.py): the rows are a prefix of each
 * matrix, so the cut is a zero-copy view. A model without an LM head
 * (tied to its embedding) gives a view of its embedding when another model
 * has one. Different widths stay an error (the merge reports the shapes). */
#include <stdio.h>
#include <string.h>

#include "tokenizer_internal.h"

int lmerge_tokenizer_rectify(lm_context *ctx, lm_model *const *in, size_t n,
                             lm_model **out, bool *cut, char *err,
                             size_t err_size)
{
    *cut = false;
    for (size_t i = 0; i < n; i++)
        out[i] = NULL;
    const char *const *pair = tok_embed_pair(in[0]);
    if (!pair)
        return 0;
    int64_t rows[2] = {-1, -1};
    bool differ = false, any_head = false, all_heads = true;
    for (size_t i = 0; i < n; i++) {
        lm_tensor *t;
        if (in[i] && !lm_model_find(in[i], pair[1], &t))
            any_head = true;
        else if (in[i])
            all_heads = false;
    }
    for (int w = 0; w < 2; w++) {
        for (size_t i = 0; i < n; i++) {
            lm_tensor *t;
            /* an LM head tied to the embedding: the embedding */
            if (!in[i] || (lm_model_find(in[i], pair[w], &t) &&
                           (w == 0 || !any_head ||
                            lm_model_find(in[i], pair[0], &t))) ||
                lm_tensor_ndim(t) != 2)
                continue;
            int64_t r = lm_tensor_dim(t, 0);
            differ |= rows[w] >= 0 && r != rows[w];
            rows[w] = rows[w] < 0 || r < rows[w] ? r : rows[w];
        }
    }
    /* mergekit reads a missing lm_head.weight through its tied name when
     * another model has one: the merge then has an LM head. */
    differ |= any_head && !all_heads;
    if (!differ)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (!in[i])
            continue; /* a LoRA adapter: its delta has no embedding rows */
        if (lm_model_create(ctx, &out[i]))
            goto oom;
        for (size_t k = 0; k < lm_model_count(in[i]); k++) {
            const char *name = lm_model_name_at(in[i], k);
            const lm_tensor *t = lm_model_at(in[i], k);
            int64_t shape[LM_MAX_DIMS];
            int nd = lm_tensor_ndim(t);
            memcpy(shape, lm_tensor_shape(t), (size_t)nd * sizeof(int64_t));
            for (int w = 0; w < 2; w++)
                if (!strcmp(name, pair[w]) && nd == 2)
                    shape[0] = rows[w];
            size_t numel = 1;
            for (int d = 0; d < nd; d++)
                numel *= (size_t)shape[d];
            lm_tensor *v = NULL;
            if (numel && !lm_tensor_cdata(t)) {
                snprintf(err, err_size, "tensor %s is not in memory", name);
                goto fail;
            }
            if (numel ? lm_tensor_wrap(ctx, lm_tensor_dtype(t), nd, shape,
                                       (void *)lm_tensor_cdata(t),
                                       numel * lm_dtype_size(
                                                   lm_tensor_dtype(t)),
                                       &v)
                      : lm_tensor_create(ctx, lm_tensor_dtype(t), nd, shape,
                                         &v))
                goto oom;
            if (lm_model_add(out[i], name, v)) {
                lm_tensor_destroy(v);
                goto oom;
            }
        }
        lm_tensor *head, *emb;
        if (any_head && lm_model_find(in[i], pair[1], &head) &&
            !lm_model_find(in[i], pair[0], &emb) && lm_tensor_ndim(emb) == 2) {
            int64_t shape[2] = {rows[1], lm_tensor_dim(emb, 1)};
            lm_tensor *v = NULL;
            if (!lm_tensor_cdata(emb)) {
                snprintf(err, err_size, "tensor %s is not in memory",
                         pair[0]);
                goto fail;
            }
            if (lm_tensor_wrap(ctx, lm_tensor_dtype(emb), 2, shape,
                               (void *)lm_tensor_cdata(emb),
                               (size_t)(shape[0] * shape[1]) *
                                   lm_dtype_size(lm_tensor_dtype(emb)),
                               &v))
                goto oom;
            if (lm_model_add(out[i], pair[1], v)) {
                lm_tensor_destroy(v);
                goto oom;
            }
        }
        for (size_t k = 0; k < lm_model_metadata_count(in[i]); k++) {
            const char *key, *value;
            lm_model_metadata_at(in[i], k, &key, &value);
            if (lm_model_set_metadata(out[i], key, value))
                goto oom;
        }
    }
    *cut = true;
    return 0;
oom:
    snprintf(err, err_size, "out of memory");
fail:
    for (size_t i = 0; i < n; i++) {
        lm_model_destroy(out[i]);
        out[i] = NULL;
    }
    return -1;
}
