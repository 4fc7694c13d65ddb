/* ESM's memory estimate (docs/methods/esm.md, "Memory estimate"): an
 * essential-subspace layer is checked against memory_budget before the
 * library reads the tensor, with everything it holds counted (the
 * library's inputs, the task vectors widened to f64, the route's working
 * set, the concatenation) times the threads. Shown with an allocator that
 * counts live bytes:
 * - a refusal allocates nothing near the budget (no tensor-sized block);
 *   the merged tensor goes to a sink in host memory, so the counts are
 *   the merge's own;
 * - each route's estimate bounds the peak its merge really reaches, and
 *   is not loose by more than 4x;
 * - the estimate scales with the threads;
 * - auto under a budget between the randomized and the exact routes'
 *   estimates gives exactly the forced randomized merge. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define NAME "lm_head.weight"
#define D_OUT 256
#define D_IN 64
#define T 4
#define ROWS 100
#define GIB (1024.0 * 1024.0 * 1024.0)

struct run {
    lm_status st;
    char msg[1024];
    long long peak, largest; /* during lm_plan_execute, over its start */
    float *out;              /* D_OUT x D_IN merged tensor on success */
};

/* The merged tensor lands in host memory (malloc), not in a model the
 * library allocates up front, so the counts are the merge's alone. */
static lm_status sink_begin(const lm_tensor_desc *const *outputs, size_t n,
                            void *user)
{
    (void)outputs;
    (void)n;
    (void)user;
    return LM_OK;
}

static lm_status sink_write(size_t index, const void *data, size_t nbytes,
                            void *user)
{
    (void)index;
    float **out = user;
    *out = malloc(nbytes);
    if (!*out)
        return LM_ERR_OUT_OF_MEMORY;
    memcpy(*out, data, nbytes);
    return LM_OK;
}

static lm_status sink_end(int commit, void *user)
{
    (void)commit;
    (void)user;
    return LM_OK;
}

/* One ESM merge of a [D_OUT, D_IN] head, T tasks with ROWS calibration
 * rows each, rank 4 (so the randomized sketch is small), no layer
 * scaling; route "" = auto. */
static void merge(int threads, const char *route, double budget_bytes,
                  struct run *r)
{
    struct tu_counting_alloc c;
    tu_counting_alloc_init(&c);
    lm_context_options o = LM_CONTEXT_OPTIONS_INIT;
    o.allocator = &c.alloc;
    o.n_threads = threads;
    o.seed = 5;
    lm_context *ctx = NULL;
    ck_assert_ok(lm_context_create(&o, &ctx));
    const int64_t shape[2] = {D_OUT, D_IN};
    lm_model *base, *ft[T];
    lm_stats *stats;
    lm_plan *p;
    ck_assert_ok(lm_model_create(ctx, &base));
    tu_add_random(ctx, base, NAME, LM_F32, 2, shape, 1);
    ck_assert_ok(lm_stats_create(ctx, &stats));
    float *x = malloc(sizeof(float) * ROWS * D_IN);
    ck_assert_ptr_nonnull(x);
    for (int t = 0; t < T; t++) {
        ck_assert_ok(lm_model_create(ctx, &ft[t]));
        tu_add_random(ctx, ft[t], NAME, LM_F32, 2, shape, 10 + (uint64_t)t);
        for (size_t i = 0; i < (size_t)ROWS * D_IN; i++)
            x[i] = (float)((i * 2654435761u + (size_t)t * 97u) % 1000) / 500.0f -
                   1.0f;
        ck_assert_ok(lm_stats_observe(stats, (size_t)t, NAME, x, ROWS, D_IN));
    }
    free(x);
    ck_assert_ok(lm_plan_create(ctx, "esm", &p));
    ck_assert_ok(lm_plan_set_base(p, base));
    for (int t = 0; t < T; t++)
        ck_assert_ok(lm_plan_add_model(p, ft[t], 1.0));
    ck_assert_ok(lm_plan_set_stats(p, stats));
    ck_assert_ok(lm_plan_set_string(p, "layer_scaling", "false"));
    ck_assert_ok(lm_plan_set_float(p, "rank", 4));
    ck_assert_ok(lm_plan_set_float(p, "memory_budget", budget_bytes / GIB));
    if (*route)
        ck_assert_ok(lm_plan_set_string(p, "esd_route", route));
    tu_counting_alloc_mark(&c);
    long long before = atomic_load(&c.live);
    r->out = NULL;
    lm_sink_vtable sink = {.struct_size = sizeof(sink),
                           .begin = sink_begin,
                           .write = sink_write,
                           .end = sink_end,
                           .user = &r->out};
    r->st = lm_plan_execute_to(p, &sink);
    r->peak = atomic_load(&c.peak) - before;
    r->largest = atomic_load(&c.largest);
    snprintf(r->msg, sizeof(r->msg), "%s", lm_context_error(ctx));
    if (r->st == LM_OK)
        ck_assert_ptr_nonnull(r->out);
    lm_plan_destroy(p);
    lm_stats_destroy(stats);
    for (int t = 0; t < T; t++)
        lm_model_destroy(ft[t]);
    lm_model_destroy(base);
    lm_context_destroy(ctx);
    ck_assert_int_eq((int)atomic_load(&c.live), 0);
}

/* The bytes the refusal says the route needs. */
static double needed(const struct run *r)
{
    const char *n = strstr(r->msg, " needs ");
    ck_assert_msg(n != NULL, "no estimate in: %s", r->msg);
    return strtod(n + 7, NULL);
}

/* The estimate of a forced route, from its refusal at a 1 KiB budget. */
static double estimate(int threads, const char *route)
{
    struct run r;
    merge(threads, route, 1024, &r);
    ck_assert_status(r.st, LM_ERR_OUT_OF_RANGE);
    return needed(&r);
}

START_TEST(refusal_allocates_nothing_near_the_budget)
{
    /* 128 KiB: a third of the library's input block alone (base, 4 deltas
     * and the output, 64 KiB each). */
    struct run r;
    merge(1, "", 131072, &r);
    ck_assert_status(r.st, LM_ERR_OUT_OF_RANGE);
    ck_assert_msg(strstr(r.msg, "'" NAME "' (256 x 64, 4 tasks)") &&
                      strstr(r.msg, "the cheapest route output needs") &&
                      strstr(r.msg, "above memory_budget 131072 bytes"),
                  "%s", r.msg);
    ck_assert_msg(r.peak < 131072, "peak %lld bytes during a refused merge",
                  r.peak);
    ck_assert_msg(r.largest < D_OUT * D_IN * 4,
                  "a %lld-byte block was allocated before the refusal",
                  r.largest);
}
END_TEST

START_TEST(estimate_bounds_the_measured_peak)
{
    static const char *const routes[] = {"gram", "output", "randomized"};
    for (int i = 0; i < 6; i++) {
        int threads = 1 + i / 3; /* 2: tasks run in parallel */
        double est = estimate(threads, routes[i % 3]);
        struct run r;
        merge(threads, routes[i % 3], 1000.0 * GIB, &r);
        ck_assert_msg(r.st == LM_OK, "%s: %s", routes[i % 3], r.msg);
        printf("route %-10s threads %d estimate %9.0f bytes, measured peak "
               "%9lld\n", routes[i % 3], threads, est, r.peak);
        ck_assert_msg((double)r.peak <= est,
                      "%s: peak %lld bytes above the estimate %.0f",
                      routes[i % 3], r.peak, est);
        ck_assert_msg((double)r.peak >= est / (4 * threads),
                      "%s: estimate %.0f is over %dx the peak %lld",
                      routes[i % 3], est, 4 * threads, r.peak);
        free(r.out);
    }
}
END_TEST

START_TEST(estimate_counts_every_thread)
{
    double one = estimate(1, "output"), three = estimate(3, "output");
    ck_assert_msg(three >= 3 * one - 3 && three <= 3 * one + 3,
                  "3 threads: %.0f bytes, 1 thread: %.0f", three, one);
}
END_TEST

START_TEST(auto_falls_back_to_randomized_within_the_budget)
{
    double rnd = estimate(1, "randomized"), out = estimate(1, "output");
    ck_assert_msg(rnd < out, "randomized %.0f, output %.0f", rnd, out);
    struct run a, want, exact;
    merge(1, "", 0.5 * (rnd + out), &a);
    ck_assert_msg(a.st == LM_OK, "%s", a.msg);
    merge(1, "randomized", 1000.0 * GIB, &want);
    merge(1, "output", 1000.0 * GIB, &exact);
    ck_assert_ok(want.st);
    ck_assert_ok(exact.st);
    ck_assert(memcmp(a.out, want.out, sizeof(float) * D_OUT * D_IN) == 0);
    /* rank 4 < rank G: the sketch approximates, so the fallback shows. */
    ck_assert(memcmp(a.out, exact.out, sizeof(float) * D_OUT * D_IN) != 0);
    free(a.out);
    free(want.out);
    free(exact.out);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("strategies_esm_memory");
    TCase *tc = tcase_create("esm_memory");
    tcase_add_test(tc, refusal_allocates_nothing_near_the_budget);
    tcase_add_test(tc, estimate_bounds_the_measured_peak);
    tcase_add_test(tc, estimate_counts_every_thread);
    tcase_add_test(tc, auto_falls_back_to_randomized_within_the_budget);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
