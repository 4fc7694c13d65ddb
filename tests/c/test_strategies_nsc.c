/* The `nsc` strategy: a LoRA merge W0 + sum_k lambda_{l,k} w_k s_k B_k A_k
 * with coefficients from a table file (lm_nsc_save_coefficients) or from
 * per-(tensor, model) `lambda` values. Checked against a reference written
 * here in f64 from the factors and the lambdas (|diff| <= 1e-5: the
 * library forms s B A in f32), through lm_plan_execute, a sink and
 * lm_merger (bit-identical for 1 and 4 threads), the C SPSA driver's
 * table against lm_nsc_materialize, and bad tables. The numpy reference
 * and the torch driver are in tests/python/test_nsc_strategy.py. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "libmerge/experimental/nsc.h"
#include "testutil.h"

#define TOL 1e-5

/* Base: two adapted matrices, an unadapted one and a bias. */
static const char *const NAMES[] = {"l1.weight", "l2.weight", "l3.weight",
                                    "l1.bias"};
static const int64_t SHAPES[][2] = {{6, 5}, {4, 6}, {3, 4}, {6, 0}};
static const double SCALES[2] = {2.0, 0.5};

struct fx {
    lm_context *ctx;
    lm_model *base;
    lm_lora *ads[2];
    char dir[64];
    char table[96];
};

static lm_model *make_base(lm_context *ctx)
{
    lm_model *m = NULL;
    ck_assert_ok(lm_model_create(ctx, &m));
    for (int i = 0; i < 4; i++)
        tu_add_random(ctx, m, NAMES[i], LM_F32, SHAPES[i][1] ? 2 : 1,
                      SHAPES[i], 100 + (uint64_t)i);
    return m;
}

/* Task 0 adapts l1 and l2 (rank 2), task 1 adapts l1 only (rank 3). */
static lm_lora *make_adapter(lm_context *ctx, int task)
{
    lm_lora *l = NULL;
    ck_assert_ok(lm_lora_create(ctx, &l));
    for (int i = 0; i < (task == 0 ? 2 : 1); i++) {
        int64_t r = task == 0 ? 2 : 3;
        uint64_t seed = 10 * (uint64_t)task + 2 * (uint64_t)i;
        lm_tensor *a = tu_random_tensor(ctx, LM_F32, 2,
                                        (int64_t[]){r, SHAPES[i][1]}, seed);
        lm_tensor *b = tu_random_tensor(ctx, LM_F32, 2,
                                        (int64_t[]){SHAPES[i][0], r}, seed + 1);
        ck_assert_ok(lm_lora_add(l, NAMES[i], a, b, SCALES[task]));
    }
    return l;
}

static void fx_init(struct fx *f, int threads)
{
    memset(f, 0, sizeof(*f));
    f->ctx = tu_context(threads, 3);
    f->base = make_base(f->ctx);
    f->ads[0] = make_adapter(f->ctx, 0);
    f->ads[1] = make_adapter(f->ctx, 1);
    snprintf(f->dir, sizeof(f->dir), "/tmp/lm_nsc_strategy_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(f->dir));
    snprintf(f->table, sizeof(f->table), "%s/coef.json", f->dir);
}

static void fx_free(struct fx *f)
{
    lm_model_destroy(f->base);
    lm_lora_destroy(f->ads[0]);
    lm_lora_destroy(f->ads[1]);
    lm_context_destroy(f->ctx);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* lambda[l][k] for module l (l1, l2), task k. */
static const double LAMBDA[2][2] = {{0.75, -0.3}, {1.25, 0.0}};

/* The table of LAMBDA, written by lm_nsc_save_coefficients. */
static void save_table(struct fx *f)
{
    lm_nsc *nsc = NULL;
    ck_assert_ok(lm_nsc_create(f->ctx, (const lm_lora *const *)f->ads, 2,
                               NULL, &nsc));
    ck_assert_uint_eq(lm_nsc_module_count(nsc), 2);
    for (size_t l = 0; l < 2; l++)
        ck_assert_ok(lm_nsc_set_lambdas(nsc, l, LAMBDA[l]));
    const char *tasks[2] = {"math \"v1\"", "code"};
    ck_assert_ok(lm_nsc_save_coefficients(nsc, f->table, tasks));
    lm_nsc_destroy(nsc);
}

/* Reference: W0 + sum_k lambda w_k s_k B_k A_k, in f64 from the factors. */
static double reference(const struct fx *f, int l, size_t i,
                        const double *weights)
{
    lm_tensor *w0 = NULL;
    ck_assert_ok(lm_model_find(f->base, NAMES[l], &w0));
    double v = tu_get(w0, i);
    if (l >= 2)
        return v;
    size_t cols = (size_t)SHAPES[l][1], row = i / cols, col = i % cols;
    for (int k = 0; k < 2; k++) {
        const lm_tensor *a, *b;
        double s;
        if (lm_lora_find(f->ads[k], NAMES[l], &a, &b, &s) != LM_OK)
            continue;
        size_t r = (size_t)lm_tensor_shape(a)[0];
        double ba = 0;
        for (size_t j = 0; j < r; j++)
            ba += tu_get(b, row * r + j) * tu_get(a, j * cols + col);
        v += LAMBDA[l][k] * weights[k] * s * ba;
    }
    return v;
}

static void check_against_reference(const struct fx *f, const lm_model *out,
                                    const double *weights)
{
    for (int l = 0; l < 4; l++) {
        lm_tensor *t = NULL;
        ck_assert_ok(lm_model_find(out, NAMES[l], &t));
        for (size_t i = 0; i < lm_tensor_numel(t); i++) {
            double want = reference(f, l, i, weights);
            if (l >= 2) /* unadapted: the base bit for bit */
                ck_assert(tu_get(t, i) == want);
            else
                ck_assert_msg(fabs(tu_get(t, i) - want) <= TOL,
                              "%s[%zu]: %.9g vs reference %.9g", NAMES[l],
                              i, tu_get(t, i), want);
        }
    }
}

static lm_plan *nsc_plan(struct fx *f, const double *weights)
{
    lm_plan *p = NULL;
    ck_assert_ok(lm_plan_create(f->ctx, "nsc", &p));
    ck_assert_ok(lm_plan_set_base(p, f->base));
    ck_assert_ok(lm_plan_add_lora(p, f->ads[0], weights[0]));
    ck_assert_ok(lm_plan_add_lora(p, f->ads[1], weights[1]));
    return p;
}

START_TEST(table_matches_reference)
{
    struct fx f;
    fx_init(&f, 2);
    save_table(&f);
    double w[2] = {1.0, 0.5};
    lm_plan *p = nsc_plan(&f, w);
    ck_assert_ok(lm_plan_set_string(p, "coefficients", f.table));
    lm_model *out = NULL;
    ck_assert_ok(lm_plan_execute(p, &out));
    check_against_reference(&f, out, w);

    /* The same lambdas per (tensor, model) give the same bits. */
    lm_plan *q = nsc_plan(&f, w);
    for (size_t l = 0; l < 2; l++)
        for (size_t k = 0; k < 2; k++)
            ck_assert_ok(lm_plan_set_float_for(q, "lambda", LAMBDA[l][k],
                                               NAMES[l], k));
    lm_model *out2 = NULL;
    ck_assert_ok(lm_plan_execute(q, &out2));
    for (int l = 0; l < 4; l++) {
        lm_tensor *a, *b;
        ck_assert_ok(lm_model_find(out, NAMES[l], &a));
        ck_assert_ok(lm_model_find(out2, NAMES[l], &b));
        ck_assert(memcmp(lm_tensor_data(a), lm_tensor_data(b),
                         lm_tensor_nbytes(a)) == 0);
    }
    lm_model_destroy(out2);
    lm_plan_destroy(q);
    lm_model_destroy(out);
    lm_plan_destroy(p);
    fx_free(&f);
}
END_TEST

/* A sink keeping copies of what it is given. */
struct keep {
    size_t n;
    void *data[8];
    size_t nbytes[8];
};

static lm_status keep_begin(const lm_tensor_desc *const *o, size_t n,
                            void *user)
{
    (void)o;
    ((struct keep *)user)->n = n;
    return n <= 8 ? LM_OK : LM_ERR_INVALID_ARGUMENT;
}

static lm_status keep_write(size_t i, const void *data, size_t nbytes,
                            void *user)
{
    struct keep *k = user;
    k->data[i] = malloc(nbytes);
    memcpy(k->data[i], data, nbytes);
    k->nbytes[i] = nbytes;
    return LM_OK;
}

static lm_status keep_end(int commit, void *user)
{
    (void)commit, (void)user;
    return LM_OK;
}

static void sink_and_merger(int threads)
{
    struct fx f;
    fx_init(&f, threads);
    save_table(&f);
    double w[2] = {1.0, 1.0};
    lm_plan *p = nsc_plan(&f, w);
    ck_assert_ok(lm_plan_set_string(p, "coefficients", f.table));
    lm_model *out = NULL;
    ck_assert_ok(lm_plan_execute(p, &out));
    check_against_reference(&f, out, w);

    struct keep k = {0};
    lm_sink_vtable sink = {.struct_size = sizeof(sink), .begin = keep_begin,
                           .write = keep_write, .end = keep_end, .user = &k};
    ck_assert_ok(lm_plan_execute_to(p, &sink));
    ck_assert_uint_eq(k.n, 4);
    for (size_t i = 0; i < 4; i++) {
        const lm_tensor *t = lm_model_at(out, i);
        ck_assert_uint_eq(k.nbytes[i], lm_tensor_nbytes(t));
        ck_assert(memcmp(k.data[i], lm_tensor_cdata(t), k.nbytes[i]) == 0);
        free(k.data[i]);
    }

    lm_merger *m = NULL;
    ck_assert_ok(lm_merger_create(p, &m));
    ck_assert(lm_merger_touches(m, "l1.weight"));
    ck_assert(!lm_merger_touches(m, "l3.weight"));
    tu_assert_merger_matches(f.ctx, m, f.base, out);
    lm_merger_destroy(m);
    lm_model_destroy(out);
    lm_plan_destroy(p);
    fx_free(&f);
}

/* `alpha` multiplies every coefficient, from a table and from per-tensor
 * lambdas alike: the reference with every weight times alpha. */
START_TEST(alpha_scales_every_coefficient)
{
    struct fx f;
    fx_init(&f, 2);
    save_table(&f);
    double w[2] = {1.0, 0.5}, alpha = 0.3;
    double scaled[2] = {w[0] * alpha, w[1] * alpha};
    lm_plan *p = nsc_plan(&f, w);
    ck_assert_ok(lm_plan_set_string(p, "coefficients", f.table));
    ck_assert_ok(lm_plan_set_float(p, "alpha", alpha));
    lm_model *out = NULL;
    ck_assert_ok(lm_plan_execute(p, &out));
    check_against_reference(&f, out, scaled);
    lm_model_destroy(out);
    lm_plan_destroy(p);

    lm_plan *q = nsc_plan(&f, w);
    for (size_t l = 0; l < 2; l++)
        for (size_t k = 0; k < 2; k++)
            ck_assert_ok(lm_plan_set_float_for(q, "lambda", LAMBDA[l][k],
                                               NAMES[l], k));
    ck_assert_ok(lm_plan_set_float(q, "alpha", alpha));
    ck_assert_ok(lm_plan_execute(q, &out));
    check_against_reference(&f, out, scaled);
    lm_model_destroy(out);
    /* Outside its declared range [0, 1e3]: refused. */
    ck_assert_int_ne(lm_plan_set_float(q, "alpha", -0.5), LM_OK);
    lm_plan_destroy(q);
    fx_free(&f);
}
END_TEST

START_TEST(sink_and_merger_one_thread)
{
    sink_and_merger(1);
}
END_TEST

START_TEST(sink_and_merger_four_threads)
{
    sink_and_merger(4);
}
END_TEST

START_TEST(save_load_round_trip)
{
    struct fx f;
    fx_init(&f, 1);
    save_table(&f);
    lm_nsc *nsc = NULL;
    ck_assert_ok(lm_nsc_create(f.ctx, (const lm_lora *const *)f.ads, 2, NULL,
                               &nsc));
    ck_assert_ok(lm_nsc_load_coefficients(nsc, f.table));
    for (size_t l = 0; l < 2; l++) {
        double got[2];
        ck_assert_ok(lm_nsc_get_lambdas(nsc, l, got));
        for (size_t k = 0; k < 2; k++)
            ck_assert(got[k] == LAMBDA[l][k]); /* %.17g: bit for bit */
    }
    lm_nsc_destroy(nsc);
    fx_free(&f);
}
END_TEST

/* The C SPSA driver's lambdas, saved, merge to what lm_nsc_materialize
 * makes of them. The host scores l2's inputs x W1^T. */
struct host {
    const lm_model *base;
    lm_tensor *w1;
    const lm_tensor *x;
    int calls;
    int stop_at; /* > 0: fail that call */
};

static int evaluate(lm_nsc *nsc, size_t task, size_t step, void *user)
{
    struct host *h = user;
    (void)step;
    if (++h->calls == h->stop_at)
        return 1;
    lm_tensor *w0 = NULL;
    if (lm_model_find(h->base, "l1.weight", &w0) != LM_OK ||
        lm_nsc_materialize(nsc, 0, w0, h->w1) != LM_OK)
        return 1;
    const float *w = lm_tensor_data(h->w1), *x = lm_tensor_cdata(h->x);
    float z[16 * 6];
    for (size_t i = 0; i < 16; i++)
        for (size_t o = 0; o < 6; o++) {
            float acc = 0;
            for (size_t c = 0; c < 5; c++)
                acc += x[i * 5 + c] * w[o * 5 + c];
            z[i * 6 + o] = acc;
        }
    /* Task 1 has no adapter on l2: it reports l1's inputs instead. */
    return (task == 0 ? lm_nsc_observe(nsc, 0, 1, z, 16, 6)
                      : lm_nsc_observe(nsc, 1, 0, x, 16, 5)) != LM_OK;
}

START_TEST(spsa_table_merges_like_materialize)
{
    struct fx f;
    fx_init(&f, 2);
    lm_nsc *nsc = NULL;
    ck_assert_ok(lm_nsc_create(f.ctx, (const lm_lora *const *)f.ads, 2, NULL,
                               &nsc));
    struct host h = {f.base, NULL, NULL, 0, 0};
    ck_assert_ok(lm_tensor_create(f.ctx, LM_F32, 2, (int64_t[]){6, 5}, &h.w1));
    lm_tensor *x = tu_random_tensor(f.ctx, LM_F32, 2, (int64_t[]){16, 5}, 7);
    h.x = x;
    lm_nsc_spsa_options o = LM_NSC_SPSA_OPTIONS_INIT;
    o.steps = 5;
    ck_assert_ok(lm_nsc_spsa(nsc, &o, evaluate, &h, NULL, NULL, NULL));
    ck_assert_ok(lm_nsc_save_coefficients(nsc, f.table, NULL));
    double w[2] = {1.0, 1.0};
    lm_plan *p = nsc_plan(&f, w);
    ck_assert_ok(lm_plan_set_string(p, "coefficients", f.table));
    lm_model *out = NULL;
    ck_assert_ok(lm_plan_execute(p, &out));
    for (size_t l = 0; l < 2; l++) {
        lm_tensor *w0 = NULL, *got = NULL, *want = NULL;
        ck_assert_ok(lm_model_find(f.base, NAMES[l], &w0));
        ck_assert_ok(lm_model_find(out, NAMES[l], &got));
        ck_assert_ok(lm_tensor_create(f.ctx, LM_F64, 2, SHAPES[l], &want));
        ck_assert_ok(lm_nsc_materialize(nsc, l, w0, want));
        for (size_t i = 0; i < lm_tensor_numel(got); i++)
            ck_assert_msg(fabs(tu_get(got, i) - tu_get(want, i)) <= TOL,
                          "%s[%zu]: %.9g vs %.9g", NAMES[l], i,
                          tu_get(got, i), tu_get(want, i));
        lm_tensor_destroy(want);
    }
    lm_model_destroy(out);
    lm_plan_destroy(p);
    lm_tensor_destroy(x);
    lm_tensor_destroy(h.w1);
    lm_nsc_destroy(nsc);
    fx_free(&f);
}
END_TEST

static void same_bytes(const lm_model *a, const lm_model *b)
{
    for (size_t i = 0; i < lm_model_count(a); i++) {
        const lm_tensor *x = lm_model_at(a, i), *y = lm_model_at(b, i);
        ck_assert(memcmp(lm_tensor_cdata(x), lm_tensor_cdata(y),
                         lm_tensor_nbytes(x)) == 0);
    }
}

/* NSC inside the plan (lm_plan_set_nsc_forward): the SPSA run through the
 * host's callback at the first execution equals a standalone lm_nsc_spsa
 * with the same seed and options, bit for bit, and so does the merge with
 * its table; later executions and a merger reuse it without calling the
 * host again and give the same bytes. */
START_TEST(forward_inside_the_plan)
{
    struct fx f;
    fx_init(&f, 2);
    struct host h = {f.base, NULL, NULL, 0, 0};
    ck_assert_ok(lm_tensor_create(f.ctx, LM_F32, 2, (int64_t[]){6, 5}, &h.w1));
    lm_tensor *x = tu_random_tensor(f.ctx, LM_F32, 2, (int64_t[]){16, 5}, 7);
    h.x = x;
    lm_nsc_spsa_options o = LM_NSC_SPSA_OPTIONS_INIT;
    o.steps = 6;
    double w[2] = {1.0, 1.0};
    lm_plan *p = nsc_plan(&f, w);
    ck_assert_ok(lm_plan_set_nsc_forward(p, evaluate, &h, NULL, &o));
    ck_assert_ptr_null(lm_plan_nsc(p));
    lm_model *out = NULL;
    ck_assert_ok(lm_plan_execute(p, &out));
    ck_assert_int_eq(h.calls, 2 * 2 * 6); /* tasks x (+, -) x steps */
    const lm_nsc *inside = lm_plan_nsc(p);
    ck_assert_ptr_nonnull(inside);

    lm_nsc *alone = NULL;
    ck_assert_ok(lm_nsc_create(f.ctx, (const lm_lora *const *)f.ads, 2, NULL,
                               &alone));
    ck_assert_ok(lm_nsc_spsa(alone, &o, evaluate, &h, NULL, NULL, NULL));
    for (size_t l = 0; l < 2; l++) {
        double a[2], b[2];
        ck_assert_ok(lm_nsc_get_lambdas(inside, l, a));
        ck_assert_ok(lm_nsc_get_lambdas(alone, l, b));
        ck_assert(a[0] == b[0] && a[1] == b[1]);
        ck_assert(a[0] != 0.4); /* the optimiser moved it */
    }
    ck_assert_ok(lm_nsc_save_coefficients(alone, f.table, NULL));
    lm_nsc_destroy(alone);
    lm_plan *q = nsc_plan(&f, w);
    ck_assert_ok(lm_plan_set_string(q, "coefficients", f.table));
    lm_model *want = NULL;
    ck_assert_ok(lm_plan_execute(q, &want));
    same_bytes(out, want);
    lm_model_destroy(want);
    lm_plan_destroy(q);

    int calls = h.calls;
    lm_model *again = NULL;
    ck_assert_ok(lm_plan_execute(p, &again));
    same_bytes(out, again);
    lm_model_destroy(again);
    lm_merger *m = NULL;
    ck_assert_ok(lm_merger_create(p, &m));
    tu_assert_merger_matches(f.ctx, m, f.base, out);
    lm_merger_destroy(m);
    ck_assert_int_eq(h.calls, calls);

    /* Not with a table too; a host that stops; detaching. */
    ck_assert_ok(lm_plan_set_string(p, "coefficients", f.table));
    ck_assert_status(lm_plan_execute(p, &again), LM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx),
                                 "lm_plan_set_nsc_forward"));
    ck_assert_ok(lm_plan_set_string(p, "coefficients", ""));
    h.calls = 0;
    h.stop_at = 3;
    ck_assert_ok(lm_plan_set_nsc_forward(p, evaluate, &h, NULL, &o));
    ck_assert_status(lm_plan_execute(p, &again), LM_ERR_CALLBACK);
    ck_assert_ptr_null(lm_plan_nsc(p));
    ck_assert_ok(lm_plan_set_nsc_forward(p, NULL, NULL, NULL, NULL));
    ck_assert_status(lm_plan_execute(p, &again), LM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "no coefficients"));
    lm_plan_destroy(p);

    lm_plan *ta = NULL;
    ck_assert_ok(lm_plan_create(f.ctx, "task_arithmetic", &ta));
    ck_assert_status(lm_plan_set_nsc_forward(ta, evaluate, &h, NULL, NULL),
                     LM_ERR_INVALID_ARGUMENT);
    lm_plan_destroy(ta);
    lm_model_destroy(out);
    lm_tensor_destroy(x);
    lm_tensor_destroy(h.w1);
    fx_free(&f);
}
END_TEST

/* A plan with `text` as its table: the status of executing it, and the
 * message containing `fragment` and the file's name. */
static void expect_bad(struct fx *f, const char *text, lm_status want,
                       const char *fragment)
{
    FILE *fp = fopen(f->table, "w");
    ck_assert_ptr_nonnull(fp);
    fputs(text, fp);
    fclose(fp);
    double w[2] = {1.0, 1.0};
    lm_plan *p = nsc_plan(f, w);
    ck_assert_ok(lm_plan_set_string(p, "coefficients", f->table));
    lm_model *out = NULL;
    ck_assert_status(lm_plan_execute(p, &out), want);
    ck_assert_ptr_null(out);
    const char *msg = lm_context_error(f->ctx);
    ck_assert_msg(strstr(msg, fragment) && strstr(msg, f->table),
                  "message '%s' lacks '%s' or the file name", msg, fragment);
    lm_merger *m = NULL;
    ck_assert_status(lm_merger_create(p, &m), want == LM_ERR_NOT_FOUND
                                                  ? LM_OK
                                                  : want);
    if (m) { /* a missing module shows when that tensor is merged */
        lm_tensor *t = tu_random_tensor(f->ctx, LM_F32, 2, SHAPES[1], 1);
        ck_assert_status(lm_merger_apply(m, "l2.weight", t), want);
        lm_tensor_destroy(t);
        lm_merger_destroy(m);
    }
    lm_plan_destroy(p);
}

#define HEAD "{\"format\": \"libmerge-nsc-coefficients\", \"version\": 1, "

START_TEST(bad_tables)
{
    struct fx f;
    fx_init(&f, 2);
    expect_bad(&f, HEAD "\"tasks\": [\"a\", \"b\"], \"modules\": "
                        "{\"l1.weight\": [1, 2]}}",
               LM_ERR_NOT_FOUND, "'l2.weight'");
    expect_bad(&f, HEAD "\"tasks\": [\"a\"], \"modules\": "
                        "{\"l1.weight\": [1], \"l2.weight\": [1]}}",
               LM_ERR_INVALID_ARGUMENT, "'tasks' lists 1 tasks");
    expect_bad(&f, HEAD "\"tasks\": [\"a\", \"b\"], \"modules\": "
                        "{\"l1.weight\": [NaN, 1], \"l2.weight\": [1, 1]}}",
               LM_ERR_FORMAT, "NaN");
    expect_bad(&f, HEAD "\"tasks\": [\"a\", \"b\"], \"modules\": "
                        "{\"l1.weight\": [1e999, 1], \"l2.weight\": [1, 1]}}",
               LM_ERR_NONFINITE, "modules['l1.weight'][0]");
    expect_bad(&f, HEAD "\"tasks\": [\"a\", \"b\"], \"modules\": "
                        "{\"l1.weight\": [1, 2, 3], \"l2.weight\": [1, 1]}}",
               LM_ERR_FORMAT, "modules['l1.weight'] has 3 values");
    expect_bad(&f, HEAD "\"tasks\": [\"a\", \"b\"], \"modules\": "
                        "{\"l1.weight\": [1, \"x\"], \"l2.weight\": [1, 1]}}",
               LM_ERR_FORMAT, "modules['l1.weight'][1]");
    expect_bad(&f, HEAD "\"tasks\": [\"a\", \"b\"], \"modules\": "
                        "{\"l1.weight\": [1, 2], \"l1.weight\": [1, 1]}}",
               LM_ERR_FORMAT, "listed twice");
    expect_bad(&f, HEAD "\"tasks\": [], \"modules\": {}}", LM_ERR_FORMAT,
               "'tasks'");
    expect_bad(&f, HEAD "\"tasks\": [\"a\", \"b\"]}", LM_ERR_FORMAT,
               "'modules'");
    expect_bad(&f, "{\"format\": \"other\", \"version\": 1}", LM_ERR_FORMAT,
               "'format'");
    expect_bad(&f, "{\"format\": \"libmerge-nsc-coefficients\", "
                   "\"version\": 2}",
               LM_ERR_UNSUPPORTED, "version 2");
    expect_bad(&f, "[1, 2]", LM_ERR_FORMAT, "not a JSON object");

    /* No such file, no coefficients at all, both kinds, a full model. */
    double w[2] = {1.0, 1.0};
    lm_plan *p = nsc_plan(&f, w);
    lm_model *out = NULL;
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "no coefficients"));
    ck_assert_ok(lm_plan_set_string(p, "coefficients", "/nonexistent/c.json"));
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_IO);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "/nonexistent/c.json"));
    ck_assert_ok(lm_plan_set_float(p, "lambda", 0.5));
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "not both"));
    lm_plan_destroy(p);
    ck_assert_ok(lm_plan_create(f.ctx, "nsc", &p));
    ck_assert_ok(lm_plan_set_base(p, f.base));
    ck_assert_ok(lm_plan_add_lora(p, f.ads[0], 1.0));
    ck_assert_ok(lm_plan_add_model(p, f.base, 1.0));
    ck_assert_ok(lm_plan_set_float(p, "lambda", 0.5));
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "task 1"));
    lm_plan_destroy(p);

    /* Loading into an lm_nsc is as strict, and all or nothing. */
    lm_nsc *nsc = NULL;
    ck_assert_ok(lm_nsc_create(f.ctx, (const lm_lora *const *)f.ads, 2, NULL,
                               &nsc));
    FILE *fp = fopen(f.table, "w");
    fputs(HEAD "\"tasks\": [\"a\", \"b\"], \"modules\": {\"l1.weight\": "
               "[1, 2], \"l2.weight\": [3, 4], \"l9.weight\": [1, 1]}}", fp);
    fclose(fp);
    ck_assert_status(lm_nsc_load_coefficients(nsc, f.table), LM_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "'l9.weight'"));
    double got[2];
    ck_assert_ok(lm_nsc_get_lambdas(nsc, 0, got));
    ck_assert(got[0] == 0.4 && got[1] == 0.4); /* unchanged */
    ck_assert_status(lm_nsc_save_coefficients(NULL, f.table, NULL),
                     LM_ERR_INVALID_ARGUMENT);
    lm_nsc_destroy(nsc);
    fx_free(&f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("strategies_nsc");
    TCase *tc = tcase_create("nsc");
    tcase_add_test(tc, table_matches_reference);
    tcase_add_test(tc, alpha_scales_every_coefficient);
    tcase_add_test(tc, sink_and_merger_one_thread);
    tcase_add_test(tc, sink_and_merger_four_threads);
    tcase_add_test(tc, save_load_round_trip);
    tcase_add_test(tc, spsa_table_merges_like_materialize);
    tcase_add_test(tc, bad_tables);
    tcase_add_test(tc, forward_inside_the_plan);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
