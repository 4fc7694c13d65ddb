/* A config's inputs and the models the plan sees. A MODEL+LORA reference
 * is the model with the adapter's dense update added (mergekit merges the
 * LoRA into the model before anything else, mergekit/common.py
 * ModelReference.merged): each tensor is read as W + scale B A in f32 and
 * rounded to W's dtype. */
#include "inputs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int add_ref(struct lmerge_inputs *in, const char *ref, int line)
{
    if (lmerge_inputs_find(in, ref) != (size_t)-1)
        return 0;
    size_t n = in->n + 1;
    char **r = realloc(in->ref, n * sizeof(*r));
    if (r)
        in->ref = r;
    int *l = realloc(in->line, n * sizeof(*l));
    if (l)
        in->line = l;
    if (!r || !l || !(in->ref[in->n] = strdup(ref)))
        return -1;
    in->line[in->n] = line;
    in->n = n;
    return 0;
}

static int open_one(lm_context *ctx, struct lmerge_inputs *in, size_t i,
                    const char *path)
{
    const char *ref = in->ref[i], *plus = strchr(ref, '+');
    lm_status st;
    if (!plus) {
        st = lm_input_open(ctx, ref, &in->model[i], &in->adapter[i]);
        if (st == LM_OK && i == 0 && in->adapter[i]) {
            fprintf(stderr, "lmerge run: %s:%d: base_model '%s' is an "
                    "adapter, not a model\n", path, in->line[i], ref);
            return -1;
        }
    } else {
        char *model = strndup(ref, (size_t)(plus - ref));
        st = model ? lm_model_open(ctx, model, &in->model[i])
                   : LM_ERR_OUT_OF_MEMORY;
        if (st == LM_OK)
            st = lm_lora_open(ctx, plus + 1, &in->lora[i]);
        if (st == LM_OK)
            st = lm_task_vector_from_lora(ctx, in->lora[i], in->model[i],
                                          &in->lora_delta[i]);
        free(model);
    }
    if (st != LM_OK) {
        fprintf(stderr, "lmerge run: %s:%d: %s\n", path, in->line[i],
                lm_context_error(ctx));
        return -1;
    }
    return 0;
}

int lmerge_inputs_open(lm_context *ctx, const struct lmerge_config *c,
                       const char *path, struct lmerge_inputs *in)
{
    memset(in, 0, sizeof(*in));
    int rc = 0;
    if (c->base_model) {
        size_t n = strlen(c->base_model) +
                   (c->base_lora ? strlen(c->base_lora) + 1 : 0) + 1;
        char *b = malloc(n);
        if (b)
            snprintf(b, n, "%s%s%s", c->base_model, c->base_lora ? "+" : "",
                     c->base_lora ? c->base_lora : "");
        rc = b ? add_ref(in, b, c->base_model_line) : -1;
        free(b);
    }
    for (size_t i = 0; rc == 0 && i < c->n_models; i++)
        rc = add_ref(in, c->models[i].path, c->models[i].line);
    for (size_t s = 0; rc == 0 && s < c->n_slices; s++)
        for (size_t k = 0; rc == 0 && k < c->slices[s].n_sources; k++)
            rc = add_ref(in, c->slices[s].sources[k].path,
                         c->slices[s].sources[k].line);
    if (rc == 0) {
        in->model = calloc(in->n, sizeof(*in->model));
        in->adapter = calloc(in->n, sizeof(*in->adapter));
        in->lora = calloc(in->n, sizeof(*in->lora));
        in->lora_delta = calloc(in->n, sizeof(*in->lora_delta));
        if (!in->model || !in->adapter || !in->lora || !in->lora_delta)
            rc = -1;
    }
    if (rc)
        fprintf(stderr, "lmerge run: out of memory\n");
    for (size_t i = 0; rc == 0 && i < in->n; i++)
        rc = open_one(ctx, in, i, path);
    return rc;
}

void lmerge_inputs_close(struct lmerge_inputs *in)
{
    for (size_t i = 0; i < in->n; i++) {
        if (in->model)
            lm_model_destroy(in->model[i]);
        if (in->adapter)
            lm_lora_destroy(in->adapter[i]);
        if (in->lora)
            lm_lora_destroy(in->lora[i]);
        if (in->lora_delta)
            lm_task_vector_destroy(in->lora_delta[i]);
        free(in->ref[i]);
    }
    free(in->ref);
    free(in->line);
    free(in->model);
    free(in->adapter);
    free(in->lora);
    free(in->lora_delta);
    memset(in, 0, sizeof(*in));
}

/* One lazy tensor: the input tensor, the LoRA delta to add (f32) or NULL,
 * read into the dtype the slot declares. */
struct reader {
    lm_context *ctx;
    const lm_tensor *src;
    const lm_tensor *delta;
    lm_dtype dtype;
};

static lm_status read_tensor(const char *name, void *dst, size_t nbytes,
                             void *user)
{
    struct reader *r = user;
    const void *data = lm_tensor_cdata(r->src);
    size_t n = lm_tensor_numel(r->src);
    if (!data)
        return lm_context_set_error(r->ctx, LM_ERR_UNSUPPORTED,
                                    "tensor '%s': its input has no data in "
                                    "memory", name);
    lm_dtype sd = lm_tensor_dtype(r->src);
    if (!r->delta && sd == r->dtype && nbytes == lm_tensor_nbytes(r->src)) {
        memcpy(dst, data, nbytes);
        return LM_OK;
    }
    float *f = malloc(n * sizeof(float) + 1);
    if (!f)
        return lm_context_set_error(r->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory reading '%s'", name);
    lm_status st = lm_convert(data, sd, f, LM_F32, n);
    if (st == LM_OK && r->delta && lm_tensor_numel(r->delta) != n)
        st = lm_context_set_error(r->ctx, LM_ERR_SHAPE,
                                  "tensor '%s': the LoRA update has another "
                                  "size than the tensor (a remapped "
                                  "vocabulary?)", name);
    if (st == LM_OK && r->delta) {
        const float *d = lm_tensor_cdata(r->delta);
        for (size_t i = 0; i < n; i++)
            f[i] += d[i];
    }
    if (st == LM_OK)
        st = lm_convert(f, LM_F32, dst, r->dtype, n);
    free(f);
    return st;
}

static lm_status slot_tensor(lm_context *ctx, lm_model *view,
                             const struct lmerge_out *o,
                             const struct lmerge_src *s,
                             const struct lmerge_inputs *in,
                             const lm_tensor *like, struct reader *r)
{
    lm_tensor *t;
    lm_status st = lm_model_find(in->model[s->input], s->in_name, &t);
    if (st != LM_OK)
        return st;
    if (lm_tensor_ndim(t) != lm_tensor_ndim(like) ||
        memcmp(lm_tensor_shape(t), lm_tensor_shape(like),
               (size_t)lm_tensor_ndim(t) * sizeof(int64_t)))
        return lm_context_set_error(ctx, LM_ERR_SHAPE,
                                    "'%s' tensor '%s' has another shape than "
                                    "the base's (output tensor '%s')",
                                    in->ref[s->input], s->in_name, o->name);
    r->ctx = ctx;
    r->src = t;
    r->delta = NULL;
    r->dtype = lm_tensor_dtype(like);
    if (in->lora_delta[s->input] &&
        lm_task_vector_find(in->lora_delta[s->input], s->in_name,
                            &r->delta) != LM_OK)
        r->delta = NULL;
    return lm_model_add_lazy(view, o->name, r->dtype, lm_tensor_ndim(t),
                             lm_tensor_shape(t), read_tensor, r);
}

int lmerge_views_build(lm_context *ctx, const struct lmerge_layout *l,
                       const struct lmerge_inputs *in, struct lmerge_views *v)
{
    memset(v, 0, sizeof(*v));
    size_t k = l->n_models;
    v->models = calloc(k ? k : 1, sizeof(*v->models));
    v->adapters = calloc(k ? k : 1, sizeof(*v->adapters));
    if (!v->models || !v->adapters)
        return fprintf(stderr, "lmerge run: out of memory\n"), -1;
    if (l->direct) {
        const struct lmerge_out *o = &l->out[0];
        v->base = in->model[o->base.input];
        for (size_t j = 0; j < k; j++) {
            v->models[j] = in->model[o->models[j].input];
            v->adapters[j] = in->adapter[o->models[j].input];
        }
        return 0;
    }
    v->owned = calloc(k + 1, sizeof(*v->owned));
    struct reader *r = calloc(l->n_out * (k + 1) + 1, sizeof(*r));
    v->readers = r;
    if (!v->owned || !r)
        return fprintf(stderr, "lmerge run: out of memory\n"), -1;
    lm_status st = LM_OK;
    for (size_t j = 0; st == LM_OK && j <= k; j++) {
        st = lm_model_create(ctx, &v->owned[j]);
        if (st == LM_OK)
            v->n_owned = j + 1;
    }
    for (size_t i = 0; st == LM_OK && i < l->n_out; i++) {
        const struct lmerge_out *o = &l->out[i];
        lm_tensor *like;
        if (!in->model[o->base.input]) {
            st = lm_context_set_error(ctx, LM_ERR_INVALID_ARGUMENT,
                                      "'%s' is an adapter: with slices or "
                                      "MODEL+LORA references every source "
                                      "must be a model",
                                      in->ref[o->base.input]);
            break;
        }
        st = lm_model_find(in->model[o->base.input], o->base.in_name, &like);
        if (st == LM_OK)
            st = slot_tensor(ctx, v->owned[k], o, &o->base, in, like,
                             &r[i * (k + 1) + k]);
        for (size_t j = 0; st == LM_OK && j < k; j++) {
            if (!in->model[o->models[j].input])
                st = lm_context_set_error(
                    ctx, LM_ERR_INVALID_ARGUMENT,
                    "'%s' is an adapter: with slices or MODEL+LORA "
                    "references every source must be a model",
                    in->ref[o->models[j].input]);
            else
                st = slot_tensor(ctx, v->owned[j], o, &o->models[j], in,
                                 like, &r[i * (k + 1) + j]);
        }
    }
    if (st != LM_OK)
        return fprintf(stderr, "lmerge run: %s\n", lm_context_error(ctx)), -1;
    v->base = v->owned[k];
    for (size_t j = 0; j < k; j++)
        v->models[j] = v->owned[j];
    return 0;
}

void lmerge_views_free(struct lmerge_views *v)
{
    for (size_t j = 0; v->owned && j < v->n_owned; j++)
        lm_model_destroy(v->owned[j]);
    free(v->owned);
    free(v->models);
    free(v->adapters);
    free(v->readers);
    memset(v, 0, sizeof(*v));
}
