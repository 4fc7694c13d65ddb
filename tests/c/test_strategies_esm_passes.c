/* ESM's prepare pass runs only when layer scaling can use it
 * (docs/methods/esm.md, "Layer-level scaling"): with layer_scaling off
 * (the default) no tensor has a layer group, so ESM declines the pass
 * (prepare_passes 0).
 * Observed through the number of times each lazy input tensor is read:
 * - default and layer_scaling=false: every input tensor read once;
 * - the same strategy forced to run its pass (a copy of ESM's vtable
 *   registered without prepare_passes, so the core runs the one pass a
 *   prepare_tensor implies: the behaviour before ESM declined it): read
 *   twice, and bit-identical output, so declining changes no bit;
 * - layer_scaling=true: read twice, and the output differs (the betas);
 * - a load-time merger of the default needs no base and gives the
 *   offline merge's bits; with layer_scaling=true it still asks for one. */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "testutil.h"

#define T 3
#define ROWS 40

/* Two layers of two matrix types and a bias each: layer scaling groups
 * "layers.#.q.weight" and "layers.#.o.weight"; the biases take the mean
 * route. Statistics for the q matrices only, so both the essential-
 * subspace and the TSV routes run. */
static const char *const NAMES[] = {
    "layers.0.q.weight", "layers.0.o.weight", "layers.0.o.bias",
    "layers.1.q.weight", "layers.1.o.weight", "layers.1.o.bias",
};
#define N_TENSORS (sizeof(NAMES) / sizeof(NAMES[0]))

static void shape_of(size_t i, int *ndim, int64_t shape[2])
{
    bool bias = strstr(NAMES[i], "bias") != NULL;
    *ndim = bias ? 1 : 2;
    shape[0] = 12;
    shape[1] = 8;
}

static lm_model *make_model(lm_context *ctx, uint64_t seed)
{
    lm_model *m = NULL;
    ck_assert_ok(lm_model_create(ctx, &m));
    for (size_t i = 0; i < N_TENSORS; i++) {
        int ndim;
        int64_t shape[2];
        shape_of(i, &ndim, shape);
        tu_add_random(ctx, m, NAMES[i], LM_F32, ndim, shape,
                      seed * 100 + (uint64_t)i);
    }
    return m;
}

/* A fine-tuned model whose bytes come from a host callback that counts
 * its calls. */
struct counted {
    const lm_model *backing;
    pthread_mutex_t lock;
    int reads;
};

static lm_status counted_read(const char *name, void *dst, size_t nbytes,
                              void *user)
{
    struct counted *c = user;
    lm_tensor *t;
    if (lm_model_find(c->backing, name, &t) != LM_OK ||
        lm_tensor_nbytes(t) != nbytes)
        return LM_ERR_INTERNAL;
    memcpy(dst, lm_tensor_cdata(t), nbytes);
    pthread_mutex_lock(&c->lock);
    c->reads++;
    pthread_mutex_unlock(&c->lock);
    return LM_OK;
}

static lm_model *lazy_copy(lm_context *ctx, struct counted *c)
{
    lm_model *lazy = NULL;
    ck_assert_ok(lm_model_create(ctx, &lazy));
    for (size_t i = 0; i < lm_model_count(c->backing); i++) {
        const lm_tensor *t = lm_model_at(c->backing, i);
        ck_assert_ok(lm_model_add_lazy(lazy, lm_model_name_at(c->backing, i),
                                       lm_tensor_dtype(t), lm_tensor_ndim(t),
                                       lm_tensor_shape(t), counted_read, c));
    }
    return lazy;
}

struct fixture {
    lm_context *ctx;
    lm_model *base, *ft[T], *lazy[T];
    struct counted counts[T];
    lm_stats *stats;
};

static void setup(struct fixture *f)
{
    f->ctx = tu_context(2, 3);
    f->base = make_model(f->ctx, 1);
    ck_assert_ok(lm_stats_create(f->ctx, &f->stats));
    float x[ROWS * 8];
    for (int t = 0; t < T; t++) {
        f->ft[t] = make_model(f->ctx, 10 + (uint64_t)t);
        f->counts[t] = (struct counted){f->ft[t], PTHREAD_MUTEX_INITIALIZER, 0};
        f->lazy[t] = lazy_copy(f->ctx, &f->counts[t]);
        for (size_t i = 0; i < ROWS * 8; i++)
            x[i] = (float)((i * 2654435761u + (size_t)t * 97u) % 1000) /
                       500.0f - 1.0f;
        ck_assert_ok(lm_stats_observe(f->stats, (size_t)t, "layers.0.q.weight",
                                      x, ROWS, 8));
        ck_assert_ok(lm_stats_observe(f->stats, (size_t)t, "layers.1.q.weight",
                                      x, ROWS, 8));
    }
    /* ESM as it ran before it declined its pass: the same functions, but
     * no prepare_passes, so the core runs one pass for prepare_tensor. */
    const lm_strategy_vtable *esm;
    ck_assert_ok(lm_strategy_find(f->ctx, "esm", &esm));
    ck_assert_ptr_nonnull(esm->prepare_tensor);
    ck_assert_ptr_nonnull(esm->prepare_passes);
    lm_strategy_vtable every = *esm;
    every.name = "esm_every_pass";
    every.prepare_passes = NULL;
    ck_assert_ok(lm_register_strategy(f->ctx, &every));
}

static void teardown(struct fixture *f)
{
    for (int t = 0; t < T; t++) {
        lm_model_destroy(f->lazy[t]);
        lm_model_destroy(f->ft[t]);
        pthread_mutex_destroy(&f->counts[t].lock);
    }
    lm_model_destroy(f->base);
    lm_stats_destroy(f->stats);
    lm_context_destroy(f->ctx);
}

/* A plan over the lazy models; layer_scaling NULL leaves the default. */
static lm_plan *plan(struct fixture *f, const char *method,
                     const char *layer_scaling, bool base)
{
    lm_plan *p = NULL;
    ck_assert_ok(lm_plan_create(f->ctx, method, &p));
    if (base)
        ck_assert_ok(lm_plan_set_base(p, f->base));
    for (int t = 0; t < T; t++)
        ck_assert_ok(lm_plan_add_model(p, f->lazy[t], 1.0));
    ck_assert_ok(lm_plan_set_stats(p, f->stats));
    if (layer_scaling)
        ck_assert_ok(lm_plan_set_string(p, "layer_scaling", layer_scaling));
    return p;
}

/* Execute and return the output; *reads = input reads per tensor of each
 * model (the same for every model, checked). */
static lm_model *run(struct fixture *f, const char *method,
                     const char *layer_scaling, int *reads)
{
    for (int t = 0; t < T; t++)
        f->counts[t].reads = 0;
    lm_plan *p = plan(f, method, layer_scaling, true);
    lm_model *out = NULL;
    ck_assert_ok(lm_plan_execute(p, &out));
    lm_plan_destroy(p);
    int total = f->counts[0].reads;
    ck_assert_int_eq(total % (int)N_TENSORS, 0);
    for (int t = 1; t < T; t++)
        ck_assert_int_eq(f->counts[t].reads, total);
    *reads = total / (int)N_TENSORS;
    return out;
}

START_TEST(pass_only_with_layer_scaling)
{
    struct fixture f;
    setup(&f);
    int reads;
    lm_model *dflt = run(&f, "esm", NULL, &reads);
    ck_assert_int_eq(reads, 1);
    lm_model *off = run(&f, "esm", "false", &reads);
    ck_assert_int_eq(reads, 1);
    tu_assert_same_bytes(dflt, off, "default vs layer_scaling=false");
    lm_model *every = run(&f, "esm_every_pass", NULL, &reads);
    ck_assert_int_eq(reads, 2);
    tu_assert_same_bytes(dflt, every, "declined vs run prepare pass");
    lm_model *scaled = run(&f, "esm", "true", &reads);
    ck_assert_int_eq(reads, 2);
    /* The q matrices of the two layers have different merged norms, so
     * their betas differ from 1: the pass did something. */
    int differ = 0;
    for (size_t i = 0; i < N_TENSORS; i++) {
        const lm_tensor *a = lm_model_at(dflt, i), *b = lm_model_at(scaled, i);
        differ += memcmp(lm_tensor_cdata(a), lm_tensor_cdata(b),
                         lm_tensor_nbytes(a)) != 0;
    }
    ck_assert_int_eq(differ, 4); /* the four matrices; the biases are not
                                    scaled (mean route) */
    lm_model_destroy(dflt);
    lm_model_destroy(off);
    lm_model_destroy(every);
    lm_model_destroy(scaled);
    teardown(&f);
}
END_TEST

START_TEST(merger_needs_no_base_by_default)
{
    struct fixture f;
    setup(&f);
    int reads;
    lm_model *want = run(&f, "esm", NULL, &reads);
    lm_plan *p = plan(&f, "esm", NULL, false);
    lm_merger *m = NULL;
    for (int t = 0; t < T; t++)
        f.counts[t].reads = 0;
    ck_assert_ok(lm_merger_create(p, &m));
    /* Nothing read at creation: no pass ran. */
    for (int t = 0; t < T; t++)
        ck_assert_int_eq(f.counts[t].reads, 0);
    tu_assert_merger_matches(f.ctx, m, f.base, want);
    lm_merger_destroy(m);
    lm_plan_destroy(p);

    p = plan(&f, "esm", "true", false);
    ck_assert_status(lm_merger_create(p, &m), LM_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "'esm'"));
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx),
                                 "set the plan's base"));
    lm_plan_destroy(p);
    lm_model_destroy(want);
    teardown(&f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("esm_passes");
    TCase *tc = tcase_create("esm_passes");
    tcase_add_test(tc, pass_only_with_layer_scaling);
    tcase_add_test(tc, merger_needs_no_base_by_default);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
