/* The purification stage through the C API: option checks, composition
 * with the executor (thread-count independence), tuning and its errors.
 * The numerics are checked against numpy in tests/python/test_purify.py. */
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include "libmerge/experimental/purify_tune.h"
#include "testutil.h"

#define T 3

struct fixture {
    lm_context *ctx;
    lm_model *base, *models[T];
    lm_stats *stats, *heldout;
    lm_plan *plan;
    lm_context *logged; /* counted_setup's plan context */
};

static void observe(lm_context *ctx, lm_stats *s, size_t t, const char *name,
                    size_t rows, size_t d, uint64_t seed)
{
    lm_tensor *x = tu_random_tensor(ctx, LM_F32, 2,
                                    (int64_t[]){(int64_t)rows, (int64_t)d},
                                    seed);
    ck_assert_ok(lm_stats_observe_tensor(s, t, name, x));
    lm_tensor_destroy(x);
}

static void setup(struct fixture *f, int threads, const char *method)
{
    f->ctx = tu_context(threads, 7);
    ck_assert_ok(lm_model_create(f->ctx, &f->base));
    tu_add_random(f->ctx, f->base, "a.weight", LM_F32, 2, (int64_t[]){24, 16}, 1);
    tu_add_random(f->ctx, f->base, "b.weight", LM_BF16, 2, (int64_t[]){16, 32}, 2);
    tu_add_random(f->ctx, f->base, "a.bias", LM_F32, 1, (int64_t[]){24}, 3);
    ck_assert_ok(lm_stats_create(f->ctx, &f->stats));
    ck_assert_ok(lm_stats_create(f->ctx, &f->heldout));
    ck_assert_ok(lm_plan_create(f->ctx, method, &f->plan));
    ck_assert_ok(lm_plan_set_base(f->plan, f->base));
    for (size_t t = 0; t < T; t++) {
        ck_assert_ok(lm_model_create(f->ctx, &f->models[t]));
        tu_add_random(f->ctx, f->models[t], "a.weight", LM_F32, 2, (int64_t[]){24, 16}, 10 + t);
        tu_add_random(f->ctx, f->models[t], "b.weight", LM_BF16, 2, (int64_t[]){16, 32}, 20 + t);
        tu_add_random(f->ctx, f->models[t], "a.bias", LM_F32, 1, (int64_t[]){24}, 30 + t);
        ck_assert_ok(lm_plan_add_model(f->plan, f->models[t], 1.0));
        observe(f->ctx, f->stats, t, "a.weight", 40, 16, 100 + t);
        observe(f->ctx, f->stats, t, "b.weight", 40, 32, 200 + t);
        observe(f->ctx, f->heldout, t, "a.weight", 30, 16, 300 + t);
        observe(f->ctx, f->heldout, t, "b.weight", 30, 32, 400 + t);
    }
}

static void teardown(struct fixture *f)
{
    lm_plan_destroy(f->plan);
    for (size_t t = 0; t < T; t++)
        lm_model_destroy(f->models[t]);
    lm_model_destroy(f->base);
    lm_stats_destroy(f->stats);
    lm_stats_destroy(f->heldout);
    lm_context_destroy(f->ctx);
}

/* The output lives in f's context: destroy it before teardown(f). */
static lm_model *run(struct fixture *f, int threads, const char *method)
{
    setup(f, threads, method);
    lm_purify_options o = LM_PURIFY_OPTIONS_INIT;
    o.keep = 0.8;
    ck_assert_ok(lm_plan_set_purify(f->plan, &o));
    ck_assert_ok(lm_plan_set_stats(f->plan, f->stats));
    lm_model *out = NULL;
    ck_assert_ok(lm_plan_execute(f->plan, &out));
    return out;
}

static void assert_same(const lm_model *a, const lm_model *b)
{
    ck_assert_uint_eq(lm_model_count(a), lm_model_count(b));
    for (size_t i = 0; i < lm_model_count(a); i++) {
        lm_tensor *x = lm_model_at(a, i), *y = lm_model_at(b, i);
        ck_assert_uint_eq(lm_tensor_nbytes(x), lm_tensor_nbytes(y));
        ck_assert(memcmp(lm_tensor_data(x), lm_tensor_data(y),
                         lm_tensor_nbytes(x)) == 0);
    }
}

START_TEST(bit_identical_for_any_thread_count)
{
    const char *methods[] = {"task_arithmetic", "ties", "tsv"};
    for (size_t i = 0; i < 3; i++) {
        struct fixture f[3];
        lm_model *one = run(&f[0], 1, methods[i]), *two = run(&f[1], 2, methods[i]),
                 *four = run(&f[2], 4, methods[i]);
        assert_same(one, two);
        assert_same(one, four);
        lm_model_destroy(one);
        lm_model_destroy(two);
        lm_model_destroy(four);
        for (int k = 0; k < 3; k++)
            teardown(&f[k]);
    }
}
END_TEST

START_TEST(option_errors)
{
    struct fixture f;
    setup(&f, 1, "task_arithmetic");
    lm_purify_options o = LM_PURIFY_OPTIONS_INIT;
    o.keep = 0;
    ck_assert_status(lm_plan_set_purify(f.plan, &o), LM_ERR_OUT_OF_RANGE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "keep"));
    o = (lm_purify_options)LM_PURIFY_OPTIONS_INIT;
    o.epsilon = -1;
    ck_assert_status(lm_plan_set_purify(f.plan, &o), LM_ERR_OUT_OF_RANGE);
    o = (lm_purify_options)LM_PURIFY_OPTIONS_INIT;
    o.max_prune_factor = 0.5;
    ck_assert_status(lm_plan_set_purify(f.plan, &o), LM_ERR_OUT_OF_RANGE);
    o = (lm_purify_options)LM_PURIFY_OPTIONS_INIT;
    o.allocation = (lm_purify_allocation)7;
    ck_assert_status(lm_plan_set_purify(f.plan, &o), LM_ERR_OUT_OF_RANGE);
    o = (lm_purify_options)LM_PURIFY_OPTIONS_INIT;
    o.struct_size = 8;
    ck_assert_status(lm_plan_set_purify(f.plan, &o), LM_ERR_ABI);
    /* Tuning needs purification enabled, and purification needs stats. */
    double c[] = {1.0, 0.9};
    ck_assert_status(lm_plan_tune_purify(f.plan, f.heldout, c, 2, NULL, NULL),
                     LM_ERR_STATE);
    o = (lm_purify_options)LM_PURIFY_OPTIONS_INIT;
    ck_assert_ok(lm_plan_set_purify(f.plan, &o));
    lm_model *out = NULL;
    ck_assert_int_ne(lm_plan_execute(f.plan, &out), LM_OK);
    ck_assert_ptr_null(out);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "stat"));
    /* Disabling it again gives the plain merge. */
    ck_assert_ok(lm_plan_set_purify(f.plan, NULL));
    ck_assert_ok(lm_plan_execute(f.plan, &out));
    lm_model_destroy(out);
    teardown(&f);
}
END_TEST

/* The held-out drift of the plan executed as it stands. */
static double executed_drift(struct fixture *f)
{
    lm_model *out = NULL;
    double drift = 0;
    ck_assert_ok(lm_plan_execute(f->plan, &out));
    ck_assert_ok(lm_plan_heldout_drift(f->plan, out, f->heldout, &drift));
    lm_model_destroy(out);
    return drift;
}

START_TEST(tuning_reports_the_curve)
{
    struct fixture f;
    setup(&f, 2, "task_arithmetic");
    lm_purify_options o = LM_PURIFY_OPTIONS_INIT;
    ck_assert_ok(lm_plan_set_purify(f.plan, &o));
    ck_assert_ok(lm_plan_set_stats(f.plan, f.stats));
    double c[] = {1.0, 0.9, 0.7, 0.5}, curve[4], best = 0;
    ck_assert_ok(lm_plan_tune_purify(f.plan, f.heldout, c, 4, &best, curve));
    size_t arg = 0;
    for (size_t i = 0; i < 4; i++) {
        ck_assert(isfinite(curve[i]) && curve[i] > 0);
        if (curve[i] < curve[arg])
            arg = i;
    }
    ck_assert(best == c[arg]);
    /* The plan keeps the chosen ratio: its drift is the curve's minimum. */
    ck_assert(executed_drift(&f) == curve[arg]);
    teardown(&f);
}
END_TEST

static int stop_second(double keep, const lm_model *merged, double *score,
                       void *user)
{
    int *calls = user;
    (void)merged;
    *score = keep;
    return ++*calls == 2;
}

START_TEST(host_score_can_stop)
{
    struct fixture f;
    setup(&f, 1, "task_arithmetic");
    lm_purify_options o = LM_PURIFY_OPTIONS_INIT;
    ck_assert_ok(lm_plan_set_purify(f.plan, &o));
    ck_assert_ok(lm_plan_set_stats(f.plan, f.stats));
    double c[] = {0.6, 0.9, 0.7};
    int calls = 0;
    ck_assert_status(lm_plan_tune_purify_score(f.plan, c, 3, stop_second,
                                               &calls, NULL, NULL),
                     LM_ERR_CALLBACK);
    ck_assert_int_eq(calls, 2);
    calls = -100;
    double best = 0;
    ck_assert_ok(lm_plan_tune_purify_score(f.plan, c, 3, stop_second, &calls,
                                           &best, NULL));
    ck_assert(best == 0.9); /* the score is the keep ratio: maximised */
    teardown(&f);
}
END_TEST

/* K folds: the curve is the sum of single-split curves run on the other
 * folds' statistics; the plan's own statistics come back afterwards. */
START_TEST(folds_sum_single_split_curves)
{
    struct fixture f;
    setup(&f, 2, "task_arithmetic");
    enum { K = 3 };
    lm_stats *folds[K];
    for (int k = 0; k < K; k++)
        ck_assert_ok(lm_stats_create(f.ctx, &folds[k]));
    for (size_t t = 0; t < T; t++) {
        const char *names[2] = {"a.weight", "b.weight"};
        size_t dims[2] = {16, 32};
        for (int l = 0; l < 2; l++) {
            lm_tensor *x = tu_random_tensor(
                f.ctx, LM_F32, 2, (int64_t[]){30, (int64_t)dims[l]}, 500 + t * 2 + l);
            const float *rows = lm_tensor_cdata(x);
            /* Two uneven batches: the split follows the row stream. */
            ck_assert_ok(lm_stats_observe_folds(folds, K, t, names[l], rows, 7,
                                                dims[l]));
            ck_assert_ok(lm_stats_observe_folds(folds, K, t, names[l],
                                                rows + 7 * dims[l], 23, dims[l]));
            lm_tensor_destroy(x);
        }
    }
    for (int k = 0; k < K; k++) {
        const double *g;
        size_t d;
        uint64_t n;
        ck_assert_ok(lm_stats_find(folds[k], 0, "a.weight", &g, &d, &n));
        ck_assert_uint_eq(n, 10);
    }
    lm_purify_options o = LM_PURIFY_OPTIONS_INIT;
    ck_assert_ok(lm_plan_set_purify(f.plan, &o));
    ck_assert_ok(lm_plan_set_stats(f.plan, f.stats));
    double c[] = {1.0, 0.8, 0.6}, curve[3], best = 0, want[3] = {0};
    ck_assert_ok(lm_plan_tune_purify_folds(f.plan, (const lm_stats *const *)folds,
                                           K, c, 3, &best, curve));
    for (int k = 0; k < K; k++) {
        lm_stats *train = NULL;
        ck_assert_ok(lm_stats_create(f.ctx, &train));
        for (int g = 0; g < K; g++)
            if (g != k)
                ck_assert_ok(lm_stats_merge(train, folds[g]));
        ck_assert_ok(lm_plan_set_stats(f.plan, train));
        double one[3];
        ck_assert_ok(lm_plan_tune_purify(f.plan, folds[k], c, 3, NULL, one));
        for (int i = 0; i < 3; i++)
            want[i] += one[i];
        ck_assert_ok(lm_plan_set_stats(f.plan, f.stats));
        lm_stats_destroy(train);
    }
    size_t arg = 0;
    for (int i = 0; i < 3; i++) {
        ck_assert(curve[i] == want[i]);
        if (want[i] < want[arg])
            arg = (size_t)i;
    }
    ck_assert(best == c[arg]);
    ck_assert_status(lm_plan_tune_purify_folds(f.plan, (const lm_stats *const *)folds,
                                               1, c, 3, &best, curve),
                     LM_ERR_INVALID_ARGUMENT);
    /* A non-finite row leaves every fold unchanged. */
    float bad[16] = {0};
    bad[5] = NAN;
    ck_assert_status(lm_stats_observe_folds(folds, K, 0, "a.weight", bad, 1, 16),
                     LM_ERR_NONFINITE);
    ck_assert_status(lm_stats_observe_folds(folds, K, 0, "a.weight", bad, 1, 8),
                     LM_ERR_SHAPE);
    const double *g;
    size_t d;
    uint64_t n;
    ck_assert_ok(lm_stats_find(folds[0], 0, "a.weight", &g, &d, &n));
    ck_assert_uint_eq(n, 10);
    for (int k = 0; k < K; k++)
        lm_stats_destroy(folds[k]);
    teardown(&f);
}
END_TEST

/* Purified task vectors are computed once per search (only the scale
 * changes between its evaluations) and once per execution of a two-pass
 * strategy (esm), and reusing them changes no bit of any evaluated merge. */
static pthread_mutex_t count_lock = PTHREAD_MUTEX_INITIALIZER;

static void count_purify(int level, const char *message, void *user)
{
    (void)level;
    pthread_mutex_lock(&count_lock);
    *(int *)user += strncmp(message, "purify: tensor '", 16) == 0 &&
                    strstr(message, ": eps ") != NULL;
    pthread_mutex_unlock(&count_lock);
}

static uint64_t model_hash(const lm_model *m)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < lm_model_count(m); i++) {
        lm_tensor *t = lm_model_at(m, i);
        const unsigned char *b = lm_tensor_data(t);
        for (size_t j = 0; j < lm_tensor_nbytes(t); j++)
            h = (h ^ b[j]) * 1099511628211ULL;
    }
    return h;
}

struct evaluations {
    int n;
    double values[16];
    uint64_t hashes[16];
};

static int record_hash(double value, const lm_model *merged, double *score,
                       void *user)
{
    struct evaluations *e = user;
    e->values[e->n] = value;
    e->hashes[e->n++] = model_hash(merged);
    *score = -(value - 0.6) * (value - 0.6);
    return 0;
}

/* The fixture's plan, on a context that counts purification logs. */
static void count_factoring(int level, const char *message, void *user)
{
    (void)level;
    pthread_mutex_lock(&count_lock);
    *(int *)user += strncmp(message, "purify: factoring '", 19) == 0;
    pthread_mutex_unlock(&count_lock);
}

static void counted_setup(struct fixture *f, const char *method, int *count,
                          lm_purify_allocation allocation, lm_log_fn counter)
{
    setup(f, 2, method);
    lm_context_options o = LM_CONTEXT_OPTIONS_INIT;
    o.n_threads = 2;
    o.seed = 7;
    o.log = counter;
    o.log_user = count;
    o.log_level = LM_LOG_DEBUG;
    lm_context *logged = NULL;
    ck_assert_ok(lm_context_create(&o, &logged));
    lm_plan_destroy(f->plan);
    ck_assert_ok(lm_plan_create(logged, method, &f->plan));
    ck_assert_ok(lm_plan_set_base(f->plan, f->base));
    for (size_t t = 0; t < T; t++)
        ck_assert_ok(lm_plan_add_model(f->plan, f->models[t], 1.0));
    lm_purify_options po = LM_PURIFY_OPTIONS_INIT;
    po.keep = 0.8;
    po.allocation = allocation;
    ck_assert_ok(lm_plan_set_purify(f->plan, &po));
    ck_assert_ok(lm_plan_set_stats(f->plan, f->stats));
    f->logged = logged;
}

static void counted_teardown(struct fixture *f)
{
    lm_plan_destroy(f->plan);
    f->plan = NULL;
    lm_context_destroy(f->logged);
    teardown(f);
}

START_TEST(search_purifies_once)
{
    /* one single-pass and one two-pass strategy (kept small: valgrind) */
    const char *methods[] = {"task_arithmetic", "esm"};
    const char *params[] = {"lambda", "alpha"};
    lm_purify_allocation allocations[] = {LM_PURIFY_MODEL, LM_PURIFY_LAYER};
    for (size_t i = 0; i < 2; i++)
        for (size_t a = 0; a < 2; a++) {
            struct fixture f;
            int count = 0;
            counted_setup(&f, methods[i], &count, allocations[a], count_purify);
            struct evaluations e = {0};
            double best;
            ck_assert_ok(lm_plan_search(f.plan, params[i], 0.0, 2.0, 0.01, 4,
                                        record_hash, &e, &best, NULL));
            ck_assert_int_eq(e.n, 4);
            /* two purified tensors x T tasks, whatever the evaluations */
            ck_assert_int_eq(count, 2 * T);
            for (int k = 0; k < e.n; k++) {
                ck_assert_ok(lm_plan_set_float(f.plan, params[i], e.values[k]));
                lm_model *out = NULL;
                ck_assert_ok(lm_plan_execute(f.plan, &out));
                ck_assert_uint_eq(model_hash(out), e.hashes[k]);
                lm_model_destroy(out);
            }
            /* without the search: once per execution, two passes or one */
            ck_assert_int_eq(count, 2 * T * (1 + e.n));
            counted_teardown(&f);
        }
}
END_TEST

/* A purify tuning factors every layer once for all its candidates (only
 * keep changes), and every point of its curve is the drift of a plain
 * execution at that keep, to the bit. */
START_TEST(tuning_factors_once)
{
    const char *methods[] = {"task_arithmetic", "task_arithmetic", "esm"};
    lm_purify_allocation allocations[] = {LM_PURIFY_MODEL, LM_PURIFY_LAYER,
                                          LM_PURIFY_LAYER};
    for (size_t i = 0; i < 3; i++) {
        struct fixture f;
        int count = 0;
        counted_setup(&f, methods[i], &count, allocations[i], count_factoring);
        double c[] = {1.0, 0.9, 0.7}, curve[3], best = 0;
        ck_assert_ok(lm_plan_tune_purify(f.plan, f.heldout, c, 3, &best, curve));
        /* two 2-D tensors with statistics x T tasks */
        ck_assert_int_eq(count, 2 * T);
        lm_purify_options o = LM_PURIFY_OPTIONS_INIT;
        o.allocation = allocations[i];
        for (int k = 0; k < 3; k++) {
            o.keep = c[k];
            ck_assert_ok(lm_plan_set_purify(f.plan, &o));
            ck_assert(executed_drift(&f) == curve[k]);
        }
        /* outside a tuning every execution factors again */
        ck_assert_int_ge(count, 2 * T * 4);
        counted_teardown(&f);
    }
}
END_TEST

struct loader {
    lm_merger *merger;
    const lm_model *base;
    lm_model *out; /* preallocated outputs, one per base tensor */
    size_t first, step;
};

static void *load(void *arg)
{
    struct loader *l = arg;
    for (size_t i = l->first; i < lm_model_count(l->base); i += l->step) {
        lm_status st = lm_merger_apply_to(
            l->merger, lm_model_name_at(l->base, i), lm_model_at(l->base, i),
            (lm_tensor *)lm_model_at(l->out, i));
        ck_assert_int_eq(st, LM_OK);
    }
    return NULL;
}

/* Load-time merging of strategies and stages that need every tensor
 * first (ESM's layer scaling, purification's per-model allocation): the
 * merger runs those passes over the plan's base at creation, and tensors
 * applied from 1 or 8 loader threads are bit-identical to an execution. */
START_TEST(load_time_first_pass_matches_execution)
{
    const char *methods[] = {"task_arithmetic", "esm", "esm"};
    const bool purified[] = {true, false, true};
    for (int c = 0; c < 3; c++)
        for (int loaders = 1; loaders <= 8; loaders += 7) {
            struct fixture f;
            setup(&f, 2, methods[c]);
            if (purified[c]) {
                lm_purify_options o = LM_PURIFY_OPTIONS_INIT;
                o.keep = 0.7;
                o.allocation = LM_PURIFY_MODEL;
                ck_assert_ok(lm_plan_set_purify(f.plan, &o));
            }
            ck_assert_ok(lm_plan_set_stats(f.plan, f.stats));
            if (c > 0) /* one layer group, so layer scaling matters */
                ck_assert_ok(lm_plan_set_string(f.plan, "layer_group",
                                                "weight"));
            /* The merger first: nothing measured before may help it. */
            lm_merger *m;
            ck_assert_ok(lm_merger_create(f.plan, &m));
            lm_model *got;
            ck_assert_ok(lm_model_create(f.ctx, &got));
            for (size_t i = 0; i < lm_model_count(f.base); i++) {
                const lm_tensor *b = lm_model_at(f.base, i);
                lm_tensor *t;
                ck_assert_ok(lm_tensor_create(
                    f.ctx, lm_tensor_dtype(b), lm_tensor_ndim(b),
                    (int64_t[]){lm_tensor_dim(b, 0),
                                lm_tensor_ndim(b) > 1 ? lm_tensor_dim(b, 1)
                                                      : 0},
                    &t));
                ck_assert_ok(lm_model_add(got, lm_model_name_at(f.base, i), t));
            }
            pthread_t threads[8];
            struct loader ls[8];
            for (int k = 0; k < loaders; k++) {
                ls[k] = (struct loader){m, f.base, got, (size_t)k,
                                        (size_t)loaders};
                ck_assert_int_eq(pthread_create(&threads[k], NULL, load,
                                                &ls[k]), 0);
            }
            for (int k = 0; k < loaders; k++)
                pthread_join(threads[k], NULL);
            lm_merger_destroy(m);
            lm_model *want;
            ck_assert_ok(lm_plan_execute(f.plan, &want));
            assert_same(want, got);
            lm_model_destroy(got);
            lm_model_destroy(want);
            teardown(&f);
        }
}
END_TEST

START_TEST(merger_without_base_refuses_model_allocation)
{
    struct fixture f;
    setup(&f, 1, "task_arithmetic");
    lm_plan *p;
    ck_assert_ok(lm_plan_create(f.ctx, "task_arithmetic", &p));
    ck_assert_ok(lm_plan_add_model(p, f.models[0], 1.0));
    lm_purify_options o = LM_PURIFY_OPTIONS_INIT;
    o.allocation = LM_PURIFY_MODEL;
    ck_assert_ok(lm_plan_set_purify(p, &o));
    ck_assert_ok(lm_plan_set_stats(p, f.stats));
    lm_merger *m = NULL;
    ck_assert_int_ne(lm_merger_create(p, &m), LM_OK);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "allocation"));
    lm_plan_destroy(p);
    teardown(&f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("purify");
    TCase *tc = tcase_create("purify");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, bit_identical_for_any_thread_count);
    tcase_add_test(tc, option_errors);
    tcase_add_test(tc, tuning_reports_the_curve);
    tcase_add_test(tc, host_score_can_stop);
    tcase_add_test(tc, load_time_first_pass_matches_execution);
    tcase_add_test(tc, merger_without_base_refuses_model_allocation);
    tcase_add_test(tc, folds_sum_single_split_curves);
    tcase_add_test(tc, search_purifies_once);
    tcase_add_test(tc, tuning_factors_once);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
