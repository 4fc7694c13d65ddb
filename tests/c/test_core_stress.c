/* Concurrency stress: many threads, each with its own context, plans and
 * mergers over shared read-only models, plus threads sharing one context
 * and one merger; every result must equal the single-threaded offline
 * merge bit for bit. Run under ThreadSanitizer by tools/test.sh. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "testutil.h"

#define N_TENSORS 24
#define N_WORKERS 8
#define ROUNDS 3

static const char *const METHODS[] = {"task_arithmetic", "ties", "dare_ties",
                                      "tsv"};

struct shared {
    lm_model *base, *a, *b;       /* read-only, from the main context */
    lm_model *want[4];            /* offline result per method */
};

static lm_model *make_model(lm_context *ctx, uint64_t seed)
{
    lm_model *m = NULL;
    ck_assert_ok(lm_model_create(ctx, &m));
    char name[32];
    for (int i = 0; i < N_TENSORS; i++) {
        snprintf(name, sizeof(name), "t%02d", i);
        tu_add_random(ctx, m, name, i % 3 ? LM_F32 : LM_BF16, 2,
                      (int64_t[]){8 + i % 4, 6}, seed * 1000 + (uint64_t)i);
    }
    return m;
}

static lm_plan *plan_for(lm_context *ctx, const struct shared *s, int method)
{
    lm_plan *p = NULL;
    if (lm_plan_create(ctx, METHODS[method], &p) != LM_OK)
        return NULL;
    lm_plan_set_base(p, s->base);
    lm_plan_add_model(p, s->a, 1.0);
    lm_plan_add_model(p, s->b, 0.5);
    return p;
}

static int same(const lm_tensor *x, const lm_tensor *y)
{
    return lm_tensor_nbytes(x) == lm_tensor_nbytes(y) &&
           !memcmp(lm_tensor_cdata(x), lm_tensor_cdata(y), lm_tensor_nbytes(x));
}

struct worker {
    const struct shared *s;
    int id;
    int failures;
};

/* Own context per thread: plans executed with 2 workers, and a merger
 * applied tensor by tensor. */
static void *own_context(void *arg)
{
    struct worker *w = arg;
    for (int round = 0; round < ROUNDS; round++) {
        int method = (w->id + round) % 4;
        lm_context_options o = LM_CONTEXT_OPTIONS_INIT;
        o.n_threads = 2;
        o.seed = 7;
        lm_context *ctx = NULL;
        if (lm_context_create(&o, &ctx) != LM_OK) {
            w->failures++;
            continue;
        }
        lm_plan *p = plan_for(ctx, w->s, method);
        lm_model *out = NULL;
        if (!p || lm_plan_execute(p, &out) != LM_OK)
            w->failures++;
        for (size_t i = 0; out && i < lm_model_count(out); i++)
            w->failures += !same(lm_model_at(out, i),
                                 lm_model_at(w->s->want[method], i));
        lm_model_destroy(out);
        lm_merger *m = NULL;
        if (method != 3 && lm_merger_create(p, &m) == LM_OK) {
            for (size_t i = 0; i < N_TENSORS; i++) {
                lm_tensor *copy = NULL;
                lm_tensor_clone(ctx, lm_model_at(w->s->base, i), &copy);
                if (lm_merger_apply(m, lm_model_name_at(w->s->base, i), copy) != LM_OK ||
                    !same(copy, lm_model_at(w->s->want[method], i)))
                    w->failures++;
                lm_tensor_destroy(copy);
            }
            lm_merger_destroy(m);
        }
        lm_plan_destroy(p);
        lm_context_destroy(ctx);
    }
    return NULL;
}

struct shared_merger {
    const struct shared *s;
    lm_merger *merger;
    lm_context *ctx;
    int id, failures;
};

/* Threads sharing one context and one merger, each taking a stride. */
static void *one_merger(void *arg)
{
    struct shared_merger *w = arg;
    for (size_t i = (size_t)w->id; i < N_TENSORS; i += N_WORKERS) {
        lm_tensor *copy = NULL;
        lm_tensor_clone(w->ctx, lm_model_at(w->s->base, i), &copy);
        if (lm_merger_apply(w->merger, lm_model_name_at(w->s->base, i), copy) != LM_OK ||
            !same(copy, lm_model_at(w->s->want[1], i)))
            w->failures++;
        lm_tensor_destroy(copy);
    }
    return NULL;
}

START_TEST(threads_contexts_and_mergers)
{
    lm_context *ctx = tu_context(1, 7);
    struct shared s = {make_model(ctx, 1), make_model(ctx, 2),
                       make_model(ctx, 3), {NULL}};
    for (int m = 0; m < 4; m++) {
        lm_plan *p = plan_for(ctx, &s, m);
        ck_assert_ok(lm_plan_execute(p, &s.want[m]));
        lm_plan_destroy(p);
    }
    pthread_t tid[N_WORKERS];
    struct worker w[N_WORKERS];
    for (int i = 0; i < N_WORKERS; i++) {
        w[i] = (struct worker){&s, i, 0};
        pthread_create(&tid[i], NULL, own_context, &w[i]);
    }
    for (int i = 0; i < N_WORKERS; i++) {
        pthread_join(tid[i], NULL);
        ck_assert_int_eq(w[i].failures, 0);
    }
    lm_plan *p = plan_for(ctx, &s, 1);
    lm_merger *merger = NULL;
    ck_assert_ok(lm_merger_create(p, &merger));
    struct shared_merger sm[N_WORKERS];
    for (int i = 0; i < N_WORKERS; i++) {
        sm[i] = (struct shared_merger){&s, merger, ctx, i, 0};
        pthread_create(&tid[i], NULL, one_merger, &sm[i]);
    }
    for (int i = 0; i < N_WORKERS; i++) {
        pthread_join(tid[i], NULL);
        ck_assert_int_eq(sm[i].failures, 0);
    }
    lm_merger_destroy(merger);
    lm_plan_destroy(p);
    for (int m = 0; m < 4; m++)
        lm_model_destroy(s.want[m]);
    lm_model_destroy(s.base);
    lm_model_destroy(s.a);
    lm_model_destroy(s.b);
    lm_context_destroy(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("stress");
    TCase *tc = tcase_create("stress");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, threads_contexts_and_mergers);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
