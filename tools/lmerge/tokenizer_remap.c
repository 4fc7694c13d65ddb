/* Each input model's embedding and LM-head matrices remapped onto the
 * merged vocabulary, as mergekit's PermutedEmbeddings
 * (mergekit/tokenizer/embed.py): a model's own row where it has the token
 * (unless the token is `force`d), otherwise the token's fallback row:
 *   a `tokenizer.tokens` entry: that model's row of the token, another
 *     token's row of a model (model_token), or zeros;
 *   else, over the models of the merge that have the token: the only one's
 *     row; the base's row when the base has it; the mean of their rows;
 *     zeros when none has it.
 * Rows added by pad_to_multiple_of hold the mean of the model's remapped
 * vocabulary rows. A model without an LM head (tied embeddings) gives its
 * embedding matrix when another model has one, as mergekit reads
 * lm_head.weight through its tied name; the merged model then has one. The
 * other tensors are wrapped, not copied. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

/* Embedding / LM-head names by architecture (mergekit's architecture
 * files: llama.json and its relatives, gpt2.json, gpt-neox.json). */
const char *const tok_embed_names[TOK_N_PAIRS][2] = {
    {"model.embed_tokens.weight", "lm_head.weight"},
    {"transformer.wte.weight", "lm_head.weight"},
    {"wte.weight", "lm_head.weight"},
    {"gpt_neox.embed_in.weight", "embed_out.weight"},
};

/* A token's fallback: copy row `row` of unique model `model`, mean over
 * the models having it, or zeros. */
enum fill_kind { FILL_ROW, FILL_MEAN, FILL_ZERO };
struct fill {
    enum fill_kind kind;
    size_t model;
    int64_t row;
    bool force;
};

struct remap {
    lmerge_tok_plan *p;
    lm_context *ctx;
    const char *name;       /* the tensor remapped */
    const lm_tensor **src;  /* per unique model, NULL when not an input */
    int64_t hidden;
    struct fill *fills;     /* per output id */
    char *err;
    size_t err_size;
};

static int fail(struct remap *r, const char *fmt, const char *a,
                const char *b)
{
    char msg[768];
    snprintf(msg, sizeof(msg), fmt, a, b);
    snprintf(r->err, r->err_size, "%s", msg);
    return -1;
}

const char *const *tok_embed_pair(const lm_model *m)
{
    for (size_t k = 0; k < TOK_N_PAIRS; k++) {
        lm_tensor *t;
        if (!lm_model_find(m, tok_embed_names[k][0], &t))
            return tok_embed_names[k];
    }
    return NULL;
}

static bool float_dtype(lm_dtype d)
{
    return d == LM_F32 || d == LM_F16 || d == LM_BF16 || d == LM_F64;
}

/* The unique input model of a path, or (size_t)-1. */
static size_t model_of(const lmerge_tok_plan *p, const char *path)
{
    for (size_t m = 0; m < p->n_models; m++)
        if (p->models[m].is_input && !strcmp(p->models[m].path, path))
            return m;
    return (size_t)-1;
}

static const struct lmerge_tok_token *token_cfg(const lmerge_tok_plan *p,
                                                const char *tok)
{
    for (size_t i = 0; i < p->spec->n_tokens; i++)
        if (!strcmp(p->spec->tokens[i].token, tok))
            return &p->spec->tokens[i];
    return NULL;
}

static int configured_fill(struct remap *r, const struct lmerge_tok_token *c,
                           int64_t id, struct fill *f)
{
    lmerge_tok_plan *p = r->p;
    f->force = c->force;
    if (c->kind == LMERGE_TOK_ZERO) {
        f->kind = FILL_ZERO;
        return 0;
    }
    char line[32];
    snprintf(line, sizeof(line), "line %d", c->line);
    size_t m = model_of(p, c->model);
    if (m == (size_t)-1)
        return fail(r, "%s: tokenizer.tokens: source model '%s' is not a "
                       "model of this merge", line, c->model);
    f->kind = FILL_ROW;
    f->model = m;
    if (c->kind == LMERGE_TOK_FROM_MODEL) {
        f->row = p->models[m].perm[id];
        if (f->row < 0)
            return fail(r, "%s: tokenizer.tokens: token '%s' is not in the "
                           "source model's vocabulary", line, c->token);
        return 0;
    }
    f->row = c->src_id;
    if (c->src_token) {
        const struct tok_vocab *v = p->models[m].has_vocab
                                        ? &p->models[m].vocab
                                        : &p->models[0].vocab;
        f->row = tok_map_get(&v->map, c->src_token);
        if (f->row < 0)
            return fail(r, "%s: tokenizer.tokens: token '%s' of model_token "
                           "is not in the model's vocabulary", line,
                        c->src_token);
    }
    if (f->row >= lm_tensor_dim(r->src[m], 0))
        return fail(r, "%s: tokenizer.tokens: model_token id is beyond the "
                       "rows of %s", line, r->name);
    return 0;
}

static int plan_fills(struct remap *r)
{
    lmerge_tok_plan *p = r->p;
    for (int64_t id = 0; id < p->n_out; id++) {
        struct fill *f = &r->fills[id];
        const struct lmerge_tok_token *c = token_cfg(p, p->out_tokens[id]);
        if (c) {
            if (configured_fill(r, c, id, f))
                return -1;
            continue;
        }
        size_t present = 0, only = 0;
        for (size_t m = 0; m < p->n_models; m++)
            if (r->src[m] && p->models[m].perm[id] >= 0) {
                present++;
                only = m;
            }
        if (present == 1)
            *f = (struct fill){FILL_ROW, only, p->models[only].perm[id],
                               false};
        else if (present == 0)
            *f = (struct fill){FILL_ZERO, 0, 0, false};
        else if (!p->spec->no_base_model &&
                 p->models[0].perm[id] >= 0) /* models[0] is the base */
            *f = (struct fill){FILL_ROW, 0, p->models[0].perm[id], false};
        else
            *f = (struct fill){FILL_MEAN, 0, 0, false};
    }
    return 0;
}

static const char *row_ptr(const lm_tensor *t, int64_t row)
{
    return (const char *)lm_tensor_cdata(t) +
           (size_t)row * (size_t)lm_tensor_dim(t, 1) *
               lm_dtype_size(lm_tensor_dtype(t));
}

/* The fallback row of output id `id` in dtype `dt` at dst. The mean sums
 * the rows in f32 in model order, then divides, as mergekit does in f32. */
static void fill_row(const struct remap *r, int64_t id, lm_dtype dt,
                     void *dst, float *scratch, float *acc)
{
    const struct fill *f = &r->fills[id];
    size_t h = (size_t)r->hidden;
    if (f->kind == FILL_ROW) {
        const lm_tensor *t = r->src[f->model];
        lm_convert(row_ptr(t, f->row), lm_tensor_dtype(t), dst, dt, h);
        return;
    }
    memset(acc, 0, h * sizeof(float));
    if (f->kind == FILL_MEAN) {
        int count = 0;
        for (size_t m = 0; m < r->p->n_models; m++) {
            int64_t row = r->src[m] ? r->p->models[m].perm[id] : -1;
            if (row < 0)
                continue;
            lm_convert(row_ptr(r->src[m], row), lm_tensor_dtype(r->src[m]),
                       scratch, LM_F32, h);
            for (size_t j = 0; j < h; j++)
                acc[j] += scratch[j];
            count++;
        }
        for (size_t j = 0; j < h; j++)
            acc[j] /= (float)count;
    }
    lm_convert(acc, LM_F32, dst, dt, h);
}

/* The remapped matrix of unique model m, in its own dtype. */
static int build(struct remap *r, size_t m, lm_tensor **out)
{
    lmerge_tok_plan *p = r->p;
    const lm_tensor *src = r->src[m];
    lm_dtype dt = lm_tensor_dtype(src);
    int64_t shape[2] = {p->n_rows, r->hidden};
    size_t h = (size_t)r->hidden, es = lm_dtype_size(dt);
    float *scratch = malloc(h * sizeof(float) * 2 + 1);
    double *sum = calloc(h + 1, sizeof(double));
    lm_tensor *t = NULL;
    if (!scratch || !sum || lm_tensor_create(r->ctx, dt, 2, shape, &t)) {
        free(scratch);
        free(sum);
        return fail(r, "%s: %s", r->name, "out of memory");
    }
    char *data = lm_tensor_data(t);
    const int64_t *perm = p->models[m].perm;
    for (int64_t id = 0; id < p->n_out; id++) {
        char *dst = data + (size_t)id * h * es;
        if (perm[id] >= 0 && !r->fills[id].force)
            memcpy(dst, row_ptr(src, perm[id]), h * es);
        else
            fill_row(r, id, dt, dst, scratch, scratch + h);
        lm_convert(dst, dt, scratch, LM_F32, h);
        for (size_t j = 0; j < h; j++)
            sum[j] += scratch[j];
    }
    /* Padding rows: the mean of the vocabulary rows (mergekit cites
     * https://nlp.stanford.edu/~johnhew/vocab-expansion.html). */
    if (p->n_rows > p->n_out) {
        for (size_t j = 0; j < h; j++)
            scratch[j] = p->n_out ? (float)(sum[j] / (double)p->n_out) : 0.0f;
        for (int64_t id = p->n_out; id < p->n_rows; id++)
            lm_convert(scratch, LM_F32, data + (size_t)id * h * es, dt, h);
    }
    free(scratch);
    free(sum);
    *out = t;
    return 0;
}

/* Gather each unique model's tensor `name` (LM head: the embedding when
 * tied) and check the shapes. Returns 1 when no model has it (a head). */
static int gather(struct remap *r, lm_model *const *in, const char *name,
                  const char *embed)
{
    lmerge_tok_plan *p = r->p;
    bool any = false;
    for (size_t i = 0; i < p->n_paths; i++) {
        lm_tensor *t = NULL;
        if (!lm_model_find(in[i], name, &t))
            any = true;
    }
    if (!any)
        return 1;
    r->name = name;
    r->hidden = -1;
    for (size_t i = 0; i < p->n_paths; i++) {
        size_t m = p->unique_of[i];
        lm_tensor *t = NULL;
        if (lm_model_find(in[i], name, &t) &&
            (!embed || lm_model_find(in[i], embed, &t)))
            return fail(r, "'%s' has no tensor %s", p->models[m].path, name);
        if (lm_tensor_ndim(t) != 2 || !float_dtype(lm_tensor_dtype(t)) ||
            !lm_tensor_cdata(t))
            return fail(r, "'%s': %s must be a 2-D f32/f16/bf16/f64 matrix "
                           "in memory to remap its rows",
                        p->models[m].path, name);
        if (r->hidden >= 0 && lm_tensor_dim(t, 1) != r->hidden)
            return fail(r, "'%s': %s has another width than the base's",
                        p->models[m].path, name);
        r->hidden = lm_tensor_dim(t, 1);
        r->src[m] = t;
        for (int64_t id = 0; id < p->n_out; id++) {
            if (p->models[m].perm[id] >= lm_tensor_dim(t, 0)) {
                char what[600];
                snprintf(what, sizeof(what), "%s (its tokenizer's id of '%s' "
                         "is beyond the rows)", name, p->out_tokens[id]);
                return fail(r, "'%s': %s", p->models[m].path, what);
            }
        }
    }
    return 0;
}

/* in[i]'s tensors, `name`s replaced by the remapped matrices (added at the
 * end when in[i] lacks one), the others wrapped. */
static int assemble(struct remap *r, lm_model *in, lm_tensor **mats,
                    const char *const *names, size_t n_names, lm_model **out)
{
    if (lm_model_create(r->ctx, out))
        return fail(r, "%s%s", "out of memory", "");
    for (size_t i = 0; i < lm_model_count(in); i++) {
        const char *name = lm_model_name_at(in, i);
        const lm_tensor *t = lm_model_at(in, i);
        lm_tensor *w = NULL;
        size_t k = 0;
        while (k < n_names && strcmp(names[k], name))
            k++;
        if (k < n_names) {
            w = mats[k];
            mats[k] = NULL;
        } else if (lm_tensor_numel(t) == 0) {
            lm_tensor_create(r->ctx, lm_tensor_dtype(t), lm_tensor_ndim(t),
                             lm_tensor_shape(t), &w);
        } else if (lm_tensor_cdata(t)) {
            lm_tensor_wrap(r->ctx, lm_tensor_dtype(t), lm_tensor_ndim(t),
                           lm_tensor_shape(t), (void *)lm_tensor_cdata(t),
                           lm_tensor_nbytes(t), &w);
        } else {
            return fail(r, "tensor %s is not in memory (tokenizer merging "
                           "needs models read from files)%s", name, "");
        }
        if (!w || lm_model_add(*out, name, w)) {
            lm_tensor_destroy(w);
            return fail(r, "%s%s", "out of memory", "");
        }
    }
    for (size_t k = 0; k < n_names; k++) {
        if (mats[k] && lm_model_add(*out, names[k], mats[k]))
            return fail(r, "%s%s", "out of memory", "");
        mats[k] = NULL;
    }
    for (size_t i = 0; i < lm_model_metadata_count(in); i++) {
        const char *key, *value;
        lm_model_metadata_at(in, i, &key, &value);
        if (lm_model_set_metadata(*out, key, value))
            return fail(r, "%s%s", "out of memory", "");
    }
    return 0;
}

int lmerge_tokenizer_remap(lmerge_tok_plan *p, lm_context *ctx,
                           lm_model *const *in, lm_model **out, char *err,
                           size_t err_size)
{
    for (size_t i = 0; i < p->n_paths; i++)
        out[i] = NULL;
    if (!p->spec->source)
        return 0;
    const char *const *pair = tok_embed_pair(in[0]);
    if (!pair) {
        snprintf(err, err_size, "base_model '%s': no embedding matrix to "
                 "remap (looked for model.embed_tokens.weight, "
                 "transformer.wte.weight, wte.weight, "
                 "gpt_neox.embed_in.weight)", p->models[0].path);
        return -1;
    }
    struct remap r = {p, ctx, NULL, NULL, 0, NULL, err, err_size};
    r.src = calloc(p->n_models, sizeof(*r.src));
    r.fills = calloc((size_t)(p->n_out ? p->n_out : 1), sizeof(*r.fills));
    lm_tensor **mats = calloc(2 * p->n_paths, sizeof(*mats));
    int rc = !r.src || !r.fills || !mats ? fail(&r, "%s%s", "out of memory",
                                                "")
                                         : 0;
    size_t n_names = 0;
    const char *names[2];
    for (int w = 0; w < 2 && rc == 0; w++) {
        memset(r.src, 0, p->n_models * sizeof(*r.src));
        int g = gather(&r, in, pair[w], w ? pair[0] : NULL);
        if (g == 1)
            continue; /* no LM head anywhere: tied, the embedding serves */
        rc = g ? g : plan_fills(&r);
        for (size_t i = 0; i < p->n_paths && rc == 0; i++)
            rc = build(&r, p->unique_of[i], &mats[2 * i + n_names]);
        names[n_names++] = pair[w];
    }
    for (size_t i = 0; i < p->n_paths && rc == 0; i++) {
        lm_tensor *mine[2] = {mats[2 * i], mats[2 * i + 1]};
        mats[2 * i] = mats[2 * i + 1] = NULL;
        rc = assemble(&r, in[i], mine, names, n_names, &out[i]);
        lm_tensor_destroy(mine[0]);
        lm_tensor_destroy(mine[1]);
    }
    for (size_t i = 0; mats && i < 2 * p->n_paths; i++)
        lm_tensor_destroy(mats[i]);
    free(mats);
    free(r.src);
    free(r.fills);
    if (rc) {
        for (size_t i = 0; i < p->n_paths; i++) {
            lm_model_destroy(out[i]);
            out[i] = NULL;
        }
    }
    return rc;
}
