/* Plan execution: tensors in parallel on the context's threads, each
 * merged by exactly one worker with inputs and a seed that do not depend on
 * scheduling, so results are bit-identical for any thread count. Inputs are
 * read one tensor at a time and handed back (done_with) right after, and
 * results go straight to the sink, so peak memory is a few tensors per
 * worker. */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "core/plan_private.h"

struct exec {
    lm_plan *plan;
    enum lm__pass pass;
    const lm_sink_vtable *sink;
    void *state;               /* strategy state from init */
    lm_tensor_desc *outputs;
    const lm_tensor_desc **output_list; /* what the sink's begin gets */
    size_t n_tensors;
    atomic_size_t next;        /* next tensor index to claim */
    atomic_bool stop;          /* a failure or a cancellation */
    lm_status *status;         /* per tensor */
    size_t *tie_src;           /* per tensor: merged as this one (ties.c) */
    pthread_mutex_t progress_lock;
    size_t done;
    uint64_t bytes_done, bytes_total;
    bool cancelled;
};

/* Every adapter target is a 2-D base tensor of matching shape. */
static lm_status validate_lora(const lm_plan *p, size_t m)
{
    const lm_lora *l = p->loras[m];
    for (size_t i = 0; i < l->count; i++) {
        const struct lm_lora_entry *e = &l->entries[i];
        lm_tensor *t;
        if (lm_model_find(p->base, e->target, &t) != LM_OK)
            return lm_context_set_error(p->ctx, LM_ERR_NOT_FOUND,
                                        "adapter %zu targets '%s', which the "
                                        "base lacks", m, e->target);
        int64_t rows = e->transposed ? e->a->shape[1] : e->b->shape[0];
        int64_t cols = e->transposed ? e->b->shape[0] : e->a->shape[1];
        if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols)
            return lm_context_set_error(
                p->ctx, LM_ERR_SHAPE,
                "adapter %zu: '%s' is B [%lld, %lld] x A [%lld, %lld] but the "
                "base tensor is %d-D%s", m, e->target,
                (long long)e->b->shape[0], (long long)e->b->shape[1],
                (long long)e->a->shape[0], (long long)e->a->shape[1], t->ndim,
                t->ndim == 2 ? " of another shape" : "");
    }
    return LM_OK;
}

/* Every tensor of a task vector is a base tensor of the same shape. */
static lm_status validate_task_vector(const lm_plan *p, size_t m)
{
    const lm_model *d = p->tvs[m]->deltas;
    for (size_t i = 0; i < d->count; i++) {
        lm_tensor *t;
        if (lm_model_find(p->base, d->entries[i].name, &t) != LM_OK)
            return lm_context_set_error(p->ctx, LM_ERR_NOT_FOUND,
                                        "task vector %zu has tensor '%s', "
                                        "which the base lacks", m,
                                        d->entries[i].name);
        bool same = t->ndim == d->entries[i].tensor->ndim;
        for (int k = 0; same && k < t->ndim; k++)
            same = t->shape[k] == d->entries[i].tensor->shape[k];
        if (!same)
            return lm_context_set_error(p->ctx, LM_ERR_SHAPE,
                                        "task vector %zu: tensor '%s' has "
                                        "another shape than the base's", m,
                                        d->entries[i].name);
    }
    return LM_OK;
}

static bool base_has(const void *base, const char *name)
{
    lm_tensor *t;
    return lm_model_find(base, name, &t) == LM_OK;
}

/* Every model holds every base tensor with the same shape and dtype, and
 * nothing else; per-tensor parameters name base tensors. */
static lm_status validate_inputs(const lm_plan *p)
{
    const lm_model *base = p->base;
    LM_TRY(lm__params_check_tensors(p->params, base_has, base));
    LM_TRY(lm__layout_check(p));
    for (size_t m = 0; m < p->n_models; m++) {
        const lm_model *model = p->models[m];
        if (p->tvs[m]) {
            LM_TRY(validate_task_vector(p, m));
            continue;
        }
        if (!model) {
            LM_TRY(validate_lora(p, m));
            continue;
        }
        char what[64];
        snprintf(what, sizeof(what), "model %zu", m);
        for (size_t i = 0; i < base->count; i++) {
            const char *name = base->entries[i].name;
            lm_tensor *t;
            if (lm_model_find(model, name, &t) != LM_OK)
                return lm_context_set_error(p->ctx, LM_ERR_NOT_FOUND,
                                            "model %zu has no tensor '%s' "
                                            "(present in the base)", m, name);
            if (!lm__rows_differ(p, base->entries[i].tensor, t))
                LM_TRY(lm__check_pair(p->ctx, what, name,
                                      base->entries[i].tensor, t));
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

/* Convert the result to the output dtype, into the sink's buffer or the
 * worker's scratch (kept across tensors), and hand it over. */
static lm_status emit(struct exec *ex, size_t index,
                      const struct lm__merged *out,
                      struct lm__fused_scratch *scratch)
{
    lm_context *ctx = ex->plan->ctx;
    const lm_tensor_desc *d = &ex->outputs[index];
    size_t n = ex->plan->base->entries[index].tensor->numel;
    void *dst = ex->sink->buffer ? ex->sink->buffer(index, ex->sink->user)
                                 : NULL;
    if (!dst) {
        if (!scratch->data || scratch->size < d->nbytes) {
            lm_free(ctx, scratch->data);
            scratch->data = lm_alloc(ctx, d->nbytes ? d->nbytes : 1);
            scratch->size = scratch->data ? d->nbytes : 0;
        }
        dst = scratch->data;
        if (!dst)
            return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                        "out of memory for output '%s'",
                                        d->name);
    }
    lm__merged_write(out, n, dst, d->dtype);
    lm_status st = ex->sink->write(index, dst, d->nbytes, ex->sink->user);
    if (st > 0)
        st = LM_ERR_CALLBACK;
    return st;
}

static lm_status merge_one(struct exec *ex, size_t index,
                           struct lm__fused_scratch *scratch)
{
    lm_plan *p = ex->plan;
    /* A tied tensor is its source's merge, emitted under its own name. */
    size_t as = ex->tie_src[index] == SIZE_MAX ? index : ex->tie_src[index];
    if (as != index && ex->pass != LM__PASS_MERGE)
        return LM_OK;
    const char *name = p->base->entries[as].name;
    const lm_tensor *base = p->base->entries[as].tensor;
    if (ex->pass == LM__PASS_MERGE) {
        bool done;
        LM_TRY(lm__fused_merge(p, ex->state, name, base, index,
                               &ex->outputs[index], ex->sink, scratch,
                               &done));
        if (done)
            return LM_OK;
    }
    struct lm__merged merged;
    lm_status st = lm__merge_tensor(p, ex->state, name, base, true, ex->pass,
                                    &merged);
    if (st == LM_OK && ex->pass == LM__PASS_MERGE)
        st = emit(ex, index, &merged, scratch);
    lm__merged_free(p->ctx, &merged);
    return st;
}

static void report_progress(struct exec *ex, size_t index)
{
    lm_plan *p = ex->plan;
    pthread_mutex_lock(&ex->progress_lock);
    ex->done++;
    ex->bytes_done += ex->outputs[index].nbytes;
    if (p->progress && !ex->cancelled &&
        p->progress(ex->done, ex->n_tensors, ex->bytes_done, ex->bytes_total,
                    p->progress_user) != 0) {
        ex->cancelled = true;
        atomic_store(&ex->stop, true);
    }
    pthread_mutex_unlock(&ex->progress_lock);
}

static void *worker(void *arg)
{
    struct exec *ex = arg;
    struct lm__fused_scratch scratch = {NULL, 0};
    lm__threads_hold(ex->plan->ctx, 1);
    for (;;) {
        if (atomic_load(&ex->stop))
            break;
        size_t i = atomic_fetch_add(&ex->next, 1);
        if (i >= ex->n_tensors)
            break;
        ex->status[i] = merge_one(ex, i, &scratch);
        if (ex->status[i] != LM_OK)
            atomic_store(&ex->stop, true);
        else if (ex->pass == LM__PASS_MERGE)
            report_progress(ex, i);
    }
    lm_free(ex->plan->ctx, scratch.data);
    /* Idle from here on: a tensor still merging may borrow this thread. */
    lm__threads_release(ex->plan->ctx, 1);
    return NULL;
}

/* More workers than this would not help on any machine we target, and a
 * fixed array keeps thread start-up free of allocation. */
#define MAX_WORKERS 256

static void run_workers(struct exec *ex, int n_threads)
{
    size_t want = (size_t)n_threads;
    if (want > ex->n_tensors)
        want = ex->n_tensors;
    if (want > MAX_WORKERS)
        want = MAX_WORKERS;
    pthread_t threads[MAX_WORKERS];
    size_t started = 0;
    /* Failing to start threads only costs time: the caller works too. */
    for (; want > 1 && started < want - 1; started++)
        if (pthread_create(&threads[started], NULL, worker, ex) != 0)
            break;
    worker(ex);
    for (size_t i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
}

static lm_status describe_outputs(struct exec *ex)
{
    lm_plan *p = ex->plan;
    ex->outputs = lm__calloc(p->ctx, ex->n_tensors ? ex->n_tensors : 1,
                             sizeof(*ex->outputs));
    ex->output_list = lm__calloc(p->ctx, ex->n_tensors ? ex->n_tensors : 1,
                                 sizeof(*ex->output_list));
    if (!ex->outputs || !ex->output_list)
        return LM_ERR_OUT_OF_MEMORY;
    for (size_t i = 0; i < ex->n_tensors; i++) {
        const lm_tensor *b = p->base->entries[i].tensor;
        lm_tensor_desc *d = &ex->outputs[i];
        ex->output_list[i] = d;
        d->struct_size = sizeof(*d);
        d->name = p->base->entries[i].name;
        d->dtype = p->has_output_dtype ? p->output_dtype : b->dtype;
        d->ndim = b->ndim;
        memcpy(d->shape, b->shape, sizeof(d->shape));
        d->nbytes = b->numel * lm_dtype_size(d->dtype);
        ex->bytes_total += d->nbytes;
    }
    return LM_OK;
}

static lm_status first_failure(const struct exec *ex)
{
    for (size_t i = 0; i < ex->n_tensors; i++)
        if (ex->status[i] != LM_OK)
            return ex->status[i];
    return LM_OK;
}

/* Everything before the first merged tensor that needs every tensor:
 * the stages' measuring pass (when one asks for it), then a two-pass
 * strategy's prepare pass. Nothing is emitted. */
static lm_status first_passes(struct exec *ex)
{
    lm_plan *p = ex->plan;
    bool measure = false;
    LM_TRY(lm__stages_begin(p, &measure));
    lm_status st = LM_OK;
    if (measure) {
        ex->pass = LM__PASS_MEASURE;
        run_workers(ex, p->ctx->n_threads);
        st = first_failure(ex);
        atomic_store(&ex->next, 0);
        if (st == LM_OK)
            lm__stages_measured(p);
    }
    unsigned passes = lm__prepare_passes(p, ex->state);
    for (unsigned i = 0; st == LM_OK && i < passes; i++) {
        ex->pass = LM__PASS_PREPARE;
        run_workers(ex, p->ctx->n_threads);
        st = first_failure(ex);
        if (st == LM_OK && p->vt->prepared)
            st = p->vt->prepared(ex->state, p->vt->user);
        atomic_store(&ex->next, 0);
    }
    return st;
}

unsigned lm__prepare_passes(const lm_plan *p, void *state)
{
    if (!p->vt->prepare_tensor)
        return 0;
    /* The registry pads older vtables with zeros: NULL means one pass. */
    return p->vt->prepare_passes ? p->vt->prepare_passes(state, p->vt->user)
                                 : 1;
}

/* An execution over every tensor of the plan's base, before any pass:
 * on failure nothing needs releasing. */
static lm_status exec_init(struct exec *ex, lm_plan *p,
                           const lm_sink_vtable *sink, void *state)
{
    memset(ex, 0, sizeof(*ex));
    ex->plan = p;
    ex->sink = sink;
    ex->state = state;
    ex->n_tensors = p->base->count;
    atomic_init(&ex->next, 0);
    atomic_init(&ex->stop, false);
    ex->status = lm__calloc(p->ctx, ex->n_tensors ? ex->n_tensors : 1,
                            sizeof(*ex->status));
    if (!ex->status)
        return lm_context_set_error(p->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "plan: out of memory");
    lm_status st = lm__ties_resolve(p, &ex->tie_src);
    if (st != LM_OK) {
        lm_free(p->ctx, ex->status);
        return st;
    }
    if (pthread_mutex_init(&ex->progress_lock, NULL) != 0) {
        lm_free(p->ctx, ex->status);
        lm_free(p->ctx, ex->tie_src);
        return lm_context_set_error(p->ctx, LM_ERR_INTERNAL,
                                    "cannot create a mutex");
    }
    return LM_OK;
}

lm_status lm__first_passes(lm_plan *p, void *state)
{
    LM_TRY(validate_inputs(p));
    struct exec ex;
    LM_TRY(exec_init(&ex, p, NULL, state));
    lm_status st = first_passes(&ex);
    pthread_mutex_destroy(&ex.progress_lock);
    lm_free(p->ctx, ex.status);
    lm_free(p->ctx, ex.tie_src);
    return st;
}

static lm_status execute(lm_plan *p, const lm_sink_vtable *sink)
{
    lm_context *ctx = p->ctx;
    LM_TRY(validate_inputs(p));

    struct exec ex;
    LM_TRY(exec_init(&ex, p, sink, NULL));
    lm_status st = describe_outputs(&ex);
    if (st == LM_OK) {
        st = sink->begin(ex.output_list, ex.n_tensors, sink->user);
        if (st > 0)
            st = LM_ERR_CALLBACK;
        if (st != LM_OK) {
            lm_free(ctx, ex.outputs);
            lm_free(ctx, ex.output_list);
            lm_free(ctx, ex.status);
            lm_free(ctx, ex.tie_src);
            pthread_mutex_destroy(&ex.progress_lock);
            return st;
        }
        if (p->vt->init) {
            lm_strategy_init_info info = {
                .struct_size = sizeof(info),
                .ctx = ctx,
                .params = p->params,
                .n_models = p->n_models,
                .weights = p->weights,
                .stats = p->stats,
            };
            st = p->vt->init(&info, &ex.state, p->vt->user);
        }
        bool initialised = st == LM_OK;
        /* A strategy with prepare passes runs the stages on every tensor
         * more than once, on the same inputs. */
        bool reuse = initialised && lm__prepare_passes(p, ex.state) > 0;
        if (reuse) {
            st = lm__stages_reuse_begin(p);
            reuse = st == LM_OK;
        }
        if (st == LM_OK)
            st = first_passes(&ex);
        ex.pass = LM__PASS_MERGE;
        if (st == LM_OK) {
            run_workers(&ex, ctx->n_threads);
            st = first_failure(&ex);
            if (st == LM_OK && ex.cancelled)
                st = lm_context_set_error(ctx, LM_ERR_CANCELLED,
                                          "merge cancelled by the progress "
                                          "callback after %zu of %zu tensors",
                                          ex.done, ex.n_tensors);
        }
        if (reuse)
            lm__stages_reuse_end(p);
        if (initialised && p->vt->fini)
            p->vt->fini(ex.state, p->vt->user);
        lm_status end = sink->end(st == LM_OK, sink->user);
        if (st == LM_OK && end != LM_OK)
            st = end > 0 ? LM_ERR_CALLBACK : end;
    } else {
        st = lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                  "plan: out of memory");
    }
    lm_free(ctx, ex.outputs);
    lm_free(ctx, ex.output_list);
    lm_free(ctx, ex.status);
    lm_free(ctx, ex.tie_src);
    pthread_mutex_destroy(&ex.progress_lock);
    return st;
}

/* One run: large per-tensor buffers are reused from tensor to tensor
 * (lm__workspace_alloc) and released when it ends. */
lm_status lm__execute(lm_plan *p, const lm_sink_vtable *sink)
{
    lm__workspace_begin(p->ctx);
    lm_status st = execute(p, sink);
    lm__workspace_end(p->ctx);
    return st;
}
