/* In-memory plan execution: tensors in parallel on the context's threads.
 *
 * Every tensor is merged by exactly one worker with inputs and a seed that
 * do not depend on scheduling, so results are bit-identical for any thread
 * count. */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "core/internal.h"

struct exec {
    lm_plan *plan;
    void *state;          /* strategy state from init */
    lm_model *result;
    size_t n_tensors;
    atomic_size_t next;   /* next tensor index to claim */
    atomic_bool failed;   /* stop claiming after the first failure */
    lm_status *status;    /* per tensor */
};

/* Every model holds every base tensor with the same shape and dtype, and
 * nothing else. */
static lm_status validate_inputs(const lm_plan *p)
{
    const lm_model *base = p->base;
    for (size_t m = 0; m < p->n_models; m++) {
        const lm_model *model = p->models[m];
        char what[64];
        snprintf(what, sizeof(what), "model %zu", m);
        for (size_t i = 0; i < base->count; i++) {
            const char *name = base->entries[i].name;
            lm_tensor *t;
            if (lm_model_find(model, name, &t) != LM_OK)
                return lm_context_set_error(p->ctx, LM_ERR_NOT_FOUND,
                                            "model %zu has no tensor '%s' "
                                            "(present in the base)", m, name);
            LM_TRY(lm__check_pair(p->ctx, what, name, base->entries[i].tensor,
                                  t));
        }
        if (model->count != base->count) {
            for (size_t i = 0; i < model->count; i++) {
                lm_tensor *t;
                if (lm_model_find(base, model->entries[i].name, &t) != LM_OK)
                    return lm_context_set_error(
                        p->ctx, LM_ERR_NOT_FOUND,
                        "model %zu has tensor '%s' which the base lacks", m,
                        model->entries[i].name);
            }
        }
    }
    return LM_OK;
}

static lm_status merge_one(struct exec *ex, size_t index)
{
    lm_plan *p = ex->plan;
    lm_context *ctx = p->ctx;
    const char *name = p->base->entries[index].name;
    const lm_tensor *base = p->base->entries[index].tensor;
    lm_tensor *dst = ex->result->entries[index].tensor;
    size_t n = base->numel, k = p->n_models;

    /* One block: base, k deltas, out, and the delta pointer table. */
    size_t floats = n * (k + 2);
    if (n && floats / n != k + 2)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "tensor '%s' is too large", name);
    float *block = lm__calloc(ctx, floats ? floats : 1, sizeof(float));
    const float **deltas = lm__calloc(ctx, k, sizeof(*deltas));
    if (!block || !deltas) {
        lm_free(ctx, block);
        lm_free(ctx, (void *)deltas);
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory merging '%s' (%zu "
                                    "elements x %zu models)", name, n, k);
    }
    float *b = block, *out = block + n * (k + 1);
    lm__to_f32(base, b);
    for (size_t m = 0; m < k; m++) {
        float *d = block + n * (m + 1);
        lm_tensor *t;
        lm_model_find(p->models[m], name, &t); /* validated already */
        lm__to_f32(t, d);
        for (size_t i = 0; i < n; i++)
            d[i] -= b[i];
        deltas[m] = d;
    }

    lm_tensor_job job = {
        .struct_size = sizeof(job),
        .ctx = ctx,
        .name = name,
        .ndim = base->ndim,
        .shape = base->shape,
        .numel = n,
        .base = b,
        .n_models = k,
        .deltas = deltas,
        .weights = p->weights,
        .seed = lm__hash_string(ctx->seed, name),
        .out = out,
    };
    lm_status st = p->vt->merge_tensor(ex->state, &job, p->vt->user);
    if (st == LM_OK) {
        for (size_t i = 0; i < n; i++) {
            out[i] += b[i];
            if (!isfinite(out[i]) && isfinite(b[i])) {
                st = lm_context_set_error(ctx, LM_ERR_NONFINITE,
                                          "strategy '%s' produced a "
                                          "non-finite value in tensor '%s' "
                                          "at element %zu", p->vt->name,
                                          name, i);
                break;
            }
        }
    } else if (st > 0) {
        st = lm_context_set_error(ctx, LM_ERR_INTERNAL,
                                  "strategy '%s' returned positive status "
                                  "%d for '%s'", p->vt->name, (int)st, name);
    }
    if (st == LM_OK)
        lm_convert(out, LM_F32, dst->data, dst->dtype, n);
    lm_free(ctx, block);
    lm_free(ctx, (void *)deltas);
    return st;
}

static void *worker(void *arg)
{
    struct exec *ex = arg;
    for (;;) {
        if (atomic_load(&ex->failed))
            break;
        size_t i = atomic_fetch_add(&ex->next, 1);
        if (i >= ex->n_tensors)
            break;
        ex->status[i] = merge_one(ex, i);
        if (ex->status[i] != LM_OK)
            atomic_store(&ex->failed, true);
    }
    return NULL;
}

static lm_status run_workers(struct exec *ex, int n_threads)
{
    size_t want = (size_t)n_threads;
    if (want > ex->n_tensors)
        want = ex->n_tensors;
    if (want <= 1) {
        worker(ex);
        return LM_OK;
    }
    pthread_t *threads = lm__calloc(ex->plan->ctx, want, sizeof(*threads));
    if (!threads)
        return LM_ERR_OUT_OF_MEMORY;
    size_t started = 0;
    for (; started < want - 1; started++)
        if (pthread_create(&threads[started], NULL, worker, ex) != 0)
            break; /* fewer threads only costs time */
    worker(ex);
    for (size_t i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    lm_free(ex->plan->ctx, threads);
    return LM_OK;
}

static lm_status create_outputs(lm_plan *p, lm_model **out)
{
    lm_model *result;
    LM_TRY(lm_model_create(p->ctx, &result));
    for (size_t i = 0; i < p->base->count; i++) {
        const lm_tensor *b = p->base->entries[i].tensor;
        lm_tensor *t;
        lm_status st = lm_tensor_create(p->ctx, b->dtype, b->ndim, b->shape,
                                        &t);
        if (st == LM_OK) {
            st = lm_model_add(result, p->base->entries[i].name, t);
            if (st != LM_OK)
                lm_tensor_destroy(t);
        }
        if (st != LM_OK) {
            lm_model_destroy(result);
            return st;
        }
    }
    *out = result;
    return LM_OK;
}

lm_status lm__execute(lm_plan *p, lm_model **out)
{
    lm_context *ctx = p->ctx;
    LM_TRY(validate_inputs(p));

    struct exec ex;
    memset(&ex, 0, sizeof(ex));
    ex.plan = p;
    ex.n_tensors = p->base->count;
    atomic_init(&ex.next, 0);
    atomic_init(&ex.failed, false);
    LM_TRY(create_outputs(p, &ex.result));
    ex.status = lm__calloc(ctx, ex.n_tensors ? ex.n_tensors : 1,
                           sizeof(*ex.status));
    if (!ex.status) {
        lm_model_destroy(ex.result);
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "plan: out of memory");
    }

    lm_status st = LM_OK;
    if (p->vt->init) {
        lm_strategy_init_info info = {
            .struct_size = sizeof(info),
            .ctx = ctx,
            .params = p->params,
            .n_models = p->n_models,
            .weights = p->weights,
        };
        st = p->vt->init(&info, &ex.state, p->vt->user);
    }
    if (st == LM_OK) {
        st = run_workers(&ex, ctx->n_threads);
        if (p->vt->fini)
            p->vt->fini(ex.state, p->vt->user);
    }
    if (st == LM_OK) {
        for (size_t i = 0; i < ex.n_tensors; i++) {
            if (ex.status[i] != LM_OK) {
                st = ex.status[i];
                break;
            }
        }
    }
    lm_free(ctx, ex.status);
    if (st != LM_OK) {
        lm_model_destroy(ex.result);
        return st;
    }
    *out = ex.result;
    return LM_OK;
}
