/* Allocation-failure injection: fail the Nth allocation, for every N along
 * a full merge (models, plan, execution on 2 threads, file sink, stats,
 * adapters). Each run must end in LM_OK or LM_ERR_OUT_OF_MEMORY (or a
 * status the failed step reports) without crashing, and every allocation
 * must be freed (counted here; LeakSanitizer checks it again in CI). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

struct failing_alloc {
    atomic_long count;      /* allocations attempted */
    long fail_at;           /* 1-based; 0 = never */
    atomic_long live;       /* allocated minus freed */
};

static void *f_alloc(size_t n, void *user)
{
    struct failing_alloc *f = user;
    long k = atomic_fetch_add(&f->count, 1) + 1;
    if (f->fail_at && k == f->fail_at)
        return NULL;
    void *p = malloc(n);
    if (p)
        atomic_fetch_add(&f->live, 1);
    return p;
}

static void f_free(void *p, void *user)
{
    struct failing_alloc *f = user;
    if (p)
        atomic_fetch_sub(&f->live, 1);
    free(p);
}

/* A full pipeline; returns the first failing status. */
static int flat_score(double value, const lm_model *merged, double *score,
                      void *user)
{
    (void)value;
    (void)merged;
    (void)user;
    *score = 0;
    return 0;
}

static lm_status pipeline(lm_context *ctx, const char *dir)
{
    lm_status st;
    lm_model *base = NULL, *a = NULL, *b = NULL, *out = NULL;
    lm_plan *p = NULL;
    lm_lora *l = NULL;
    lm_stats *stats = NULL;
    lm_file_sink *sink = NULL;
    lm_tensor *t = NULL, *la = NULL, *lb = NULL;
    float rows[6 * 4] = {0};
    char path[256];
    snprintf(path, sizeof(path), "%s/out.safetensors", dir);

#define STEP(expr) if ((st = (expr)) != LM_OK) goto done
    STEP(lm_model_create(ctx, &base));
    STEP(lm_model_create(ctx, &a));
    STEP(lm_model_create(ctx, &b));
    const char *names[] = {"w0", "w1", "w2", "w3", "w4"};
    for (int i = 0; i < 5; i++) {
        lm_model *ms[3] = {base, a, b};
        for (int m = 0; m < 3; m++) {
            STEP(lm_tensor_create(ctx, LM_F32, 2, (int64_t[]){6, 4}, &t));
            STEP(lm_model_add(ms[m], names[i], t));
            t = NULL;
        }
    }
    STEP(lm_lora_create(ctx, &l));
    STEP(lm_tensor_create(ctx, LM_F32, 2, (int64_t[]){2, 4}, &la));
    STEP(lm_tensor_create(ctx, LM_F32, 2, (int64_t[]){6, 2}, &lb));
    STEP(lm_lora_add(l, "w1", la, lb, 1.0));
    la = lb = NULL;
    STEP(lm_stats_create(ctx, &stats));
    STEP(lm_stats_observe(stats, 0, "w0", rows, 6, 4));
    STEP(lm_plan_create(ctx, "task_arithmetic", &p));
    STEP(lm_plan_set_string(p, "lambda", "0.5"));
    STEP(lm_plan_set_base(p, base));
    STEP(lm_plan_add_model(p, a, 1.0));
    STEP(lm_plan_add_model(p, b, 1.0));
    STEP(lm_plan_add_lora(p, l, 1.0));
    STEP(lm_plan_set_stats(p, stats));
    STEP(lm_plan_execute(p, &out));
    STEP(lm_safetensors_sink_create(ctx, path, NULL, &sink));
    STEP(lm_plan_execute_to(p, lm_file_sink_vtable(sink)));
    lm_purify_options po = LM_PURIFY_OPTIONS_INIT;
    double keeps[] = {1.0, 0.5};
    STEP(lm_plan_set_purify(p, &po));
    STEP(lm_plan_tune_purify(p, stats, keeps, 2, NULL, NULL));
    /* a search keeps the purified task vectors for its evaluations */
    STEP(lm_plan_search(p, "lambda", 0.0, 1.0, 0.1, 3, flat_score, NULL, NULL,
                        NULL));
#undef STEP
done:
    lm_file_sink_destroy(sink);
    unlink(path);
    lm_tensor_destroy(t);
    lm_tensor_destroy(la);
    lm_tensor_destroy(lb);
    lm_model_destroy(out);
    lm_plan_destroy(p);
    lm_stats_destroy(stats);
    lm_lora_destroy(l);
    lm_model_destroy(base);
    lm_model_destroy(a);
    lm_model_destroy(b);
    return st;
}

START_TEST(every_allocation_may_fail)
{
    char dir[] = "/tmp/lm_oom_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    long n = 1, failures = 0;
    for (;; n++) {
        struct failing_alloc f;
        atomic_init(&f.count, 0);
        atomic_init(&f.live, 0);
        f.fail_at = n;
        lm_allocator alloc = {sizeof(alloc), f_alloc, f_free, &f};
        lm_context_options o = LM_CONTEXT_OPTIONS_INIT;
        o.allocator = &alloc;
        o.n_threads = 2;
        lm_context *ctx = NULL;
        lm_status st = lm_context_create(&o, &ctx);
        if (st == LM_OK) {
            st = pipeline(ctx, dir);
            lm_context_destroy(ctx);
        }
        ck_assert_msg(atomic_load(&f.live) == 0,
                      "failing allocation %ld: %ld blocks leaked", n,
                      atomic_load(&f.live));
        if (atomic_load(&f.count) < n) {
            ck_assert_msg(st == LM_OK, "no failure injected but status %d",
                          (int)st);
            break; /* the whole pipeline ran with fewer allocations */
        }
        ck_assert_msg(st != LM_OK, "allocation %ld failed silently", n);
        failures++;
    }
    printf("alloc_failures: %ld injected failures, all clean\n", failures);
    ck_assert_int_gt(failures, 50);
    rmdir(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("alloc_failures");
    TCase *tc = tcase_create("reliability");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, every_allocation_may_fail);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
