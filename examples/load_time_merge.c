/* An inference-server-style host: it loads a small MLP from a safetensors
 * file tensor by tensor on several loader threads and, as each tensor
 * arrives, lets libmerge fold LoRA adapters into it (lm_merger_apply);
 * then it runs one forward pass and prints the outputs as exact hex
 * floats. With --offline it merges the whole model with lm_plan_execute
 * instead, so the two paths can be compared bit for bit.
 *
 * usage: load_time_merge MODEL.safetensors ADAPTER_DIR... [--threads N]
 *                        [--lambda L] [--offline]
 * The model holds fc1.weight [H, D], fc1.bias [H], fc2.weight [O, H],
 * fc2.bias [O]; the input is x_i = sin(i + 1), i < D. */
#include <libmerge.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ADAPTERS 16
#define MAX_THREADS 64

struct loader {
    lm_context *ctx;       /* shared: contexts are thread-safe */
    lm_merger *merger;
    const lm_model *file;  /* the mapped model file */
    lm_tensor **loaded;    /* host copies, one per tensor */
    size_t first, stride;  /* this thread's share of the tensors */
    lm_status status;
};

/* What a server's loader does: copy each tensor out of the file into its
 * own buffer, then merge the adapters into it in place. */
static void *load(void *arg)
{
    struct loader *l = arg;
    for (size_t i = l->first; i < lm_model_count(l->file); i += l->stride) {
        const char *name = lm_model_name_at(l->file, i);
        lm_tensor *copy = NULL;
        l->status = lm_tensor_clone(l->ctx, lm_model_at(l->file, i), &copy);
        if (l->status != LM_OK)
            return NULL;
        l->loaded[i] = copy;
        if (l->merger && lm_merger_touches(l->merger, name))
            l->status = lm_merger_apply(l->merger, name, copy);
        if (l->status != LM_OK)
            return NULL;
    }
    return NULL;
}

static const lm_tensor *find(const lm_model *m, lm_tensor **loaded,
                             const char *name)
{
    for (size_t i = 0; i < lm_model_count(m); i++)
        if (!strcmp(lm_model_name_at(m, i), name))
            return loaded ? loaded[i] : lm_model_at(m, i);
    fprintf(stderr, "load_time_merge: the model has no '%s'\n", name);
    exit(1);
}

static double at(const lm_tensor *t, size_t i)
{
    double v = 0;
    lm_tensor_get(t, i, &v);
    return v;
}

/* y = W2 relu(W1 x + b1) + b2 in f64, printed as hex floats. */
static void forward(const lm_tensor *w1, const lm_tensor *b1,
                    const lm_tensor *w2, const lm_tensor *b2)
{
    size_t h = (size_t)lm_tensor_dim(w1, 0), d = (size_t)lm_tensor_dim(w1, 1),
           o = (size_t)lm_tensor_dim(w2, 0);
    double *hidden = calloc(h, sizeof(double));
    for (size_t j = 0; j < h; j++) {
        double acc = at(b1, j);
        for (size_t i = 0; i < d; i++)
            acc += at(w1, j * d + i) * sin((double)i + 1.0);
        hidden[j] = acc > 0 ? acc : 0;
    }
    for (size_t k = 0; k < o; k++) {
        double acc = at(b2, k);
        for (size_t j = 0; j < h; j++)
            acc += at(w2, k * h + j) * hidden[j];
        printf("%a\n", acc);
    }
    free(hidden);
}

static int fail(lm_context *ctx, const char *what)
{
    fprintf(stderr, "load_time_merge: %s: %s\n", what, lm_context_error(ctx));
    return 1;
}

int main(int argc, char **argv)
{
    const char *model_path = NULL, *adapters[MAX_ADAPTERS];
    size_t n_adapters = 0, threads = 1;
    double lambda = 1.0;
    int offline = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = (size_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--lambda") && i + 1 < argc)
            lambda = atof(argv[++i]);
        else if (!strcmp(argv[i], "--offline"))
            offline = 1;
        else if (!model_path)
            model_path = argv[i];
        else if (n_adapters < MAX_ADAPTERS)
            adapters[n_adapters++] = argv[i];
    }
    if (!model_path || !n_adapters || threads < 1 || threads > MAX_THREADS) {
        fprintf(stderr, "usage: load_time_merge MODEL.safetensors ADAPTER_DIR... "
                        "[--threads 1..%d] [--lambda L] [--offline]\n", MAX_THREADS);
        return 2;
    }
    lm_context *ctx = NULL;
    lm_model *file = NULL;
    lm_lora *loras[MAX_ADAPTERS] = {0};
    lm_plan *plan = NULL;
    lm_context_options co = LM_CONTEXT_OPTIONS_INIT;
    co.n_threads = 1; /* the host's loader threads do the work */
    if (lm_context_create(&co, &ctx) != LM_OK)
        return 1;
    if (lm_safetensors_read(ctx, model_path, &file) != LM_OK)
        return fail(ctx, model_path);
    if (lm_plan_create(ctx, "task_arithmetic", &plan) != LM_OK ||
        lm_plan_set_float(plan, "lambda", lambda) != LM_OK ||
        lm_plan_set_base(plan, file) != LM_OK)
        return fail(ctx, "plan");
    for (size_t a = 0; a < n_adapters; a++)
        if (lm_peft_read(ctx, adapters[a], &loras[a]) != LM_OK ||
            lm_plan_add_lora(plan, loras[a], 1.0) != LM_OK)
            return fail(ctx, adapters[a]);

    int rc = 0;
    if (offline) {
        lm_model *merged = NULL;
        if (lm_plan_execute(plan, &merged) != LM_OK)
            return fail(ctx, "merge");
        forward(find(merged, NULL, "fc1.weight"), find(merged, NULL, "fc1.bias"),
                find(merged, NULL, "fc2.weight"), find(merged, NULL, "fc2.bias"));
        lm_model_destroy(merged);
    } else {
        lm_merger *merger = NULL;
        if (lm_merger_create(plan, &merger) != LM_OK)
            return fail(ctx, "merger");
        size_t n = lm_model_count(file);
        lm_tensor **loaded = calloc(n, sizeof(*loaded));
        struct loader l[MAX_THREADS];
        pthread_t tid[MAX_THREADS];
        for (size_t t = 0; t < threads; t++) {
            l[t] = (struct loader){ctx, merger, file, loaded, t, threads, LM_OK};
            pthread_create(&tid[t], NULL, load, &l[t]);
        }
        for (size_t t = 0; t < threads; t++) {
            pthread_join(tid[t], NULL);
            if (l[t].status != LM_OK && !rc)
                rc = fail(ctx, "loader");
        }
        if (!rc)
            forward(find(file, loaded, "fc1.weight"), find(file, loaded, "fc1.bias"),
                    find(file, loaded, "fc2.weight"), find(file, loaded, "fc2.bias"));
        for (size_t i = 0; i < n; i++)
            lm_tensor_destroy(loaded[i]);
        free(loaded);
        lm_merger_destroy(merger);
    }
    lm_plan_destroy(plan);
    for (size_t a = 0; a < n_adapters; a++)
        lm_lora_destroy(loras[a]);
    lm_model_destroy(file);
    lm_context_destroy(ctx);
    return rc;
}
