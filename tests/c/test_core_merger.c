/* Load-time mergers: many loader threads, any order, same bits as an
 * offline merge. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define N_TENSORS 32

static lm_model *make_model(lm_context *ctx, uint64_t seed)
{
    lm_model *m = NULL;
    lm_model_create(ctx, &m);
    char name[32];
    for (int i = 0; i < N_TENSORS; i++) {
        snprintf(name, sizeof(name), "layer%02d.weight", i);
        tu_add_random(ctx, m, name, i % 2 ? LM_BF16 : LM_F32, 2,
                      (int64_t[]){6 + i % 3, 5}, seed * 100 + (uint64_t)i);
    }
    return m;
}

struct loader {
    lm_merger *merger;
    lm_model *work; /* copies of the base, merged in place */
    int id, n_threads;
    lm_status status;
};

static void *load(void *arg)
{
    struct loader *l = arg;
    /* Each thread takes every n-th tensor, backwards: an arbitrary order. */
    for (int i = N_TENSORS - 1 - l->id; i >= 0; i -= l->n_threads) {
        lm_status st = lm_merger_apply(l->merger, lm_model_name_at(l->work, (size_t)i),
                                       lm_model_at(l->work, (size_t)i));
        if (st != LM_OK)
            l->status = st;
    }
    return NULL;
}

START_TEST(threads_match_offline_merge)
{
    lm_context *ctx = tu_context(1, 5);
    lm_model *base = make_model(ctx, 1), *a = make_model(ctx, 2),
             *b = make_model(ctx, 3);
    lm_lora *l = NULL;
    lm_lora_create(ctx, &l);
    lm_lora_add(l, "layer03.weight",
                tu_random_tensor(ctx, LM_F32, 2, (int64_t[]){2, 5}, 9),
                tu_random_tensor(ctx, LM_F32, 2, (int64_t[]){6, 2}, 10), 0.5);
    lm_plan *p = NULL;
    lm_plan_create(ctx, "task_arithmetic", &p);
    lm_plan_set_float(p, "lambda", 0.4);
    lm_plan_set_base(p, base);
    lm_plan_add_model(p, a, 1.0);
    lm_plan_add_model(p, b, 0.5);
    lm_plan_add_lora(p, l, 2.0);
    lm_model *offline = NULL;
    ck_assert_ok(lm_plan_execute(p, &offline));

    for (int n_threads = 1; n_threads <= 8; n_threads *= 8) {
        lm_merger *m = NULL;
        ck_assert_ok(lm_merger_create(p, &m));
        lm_model *work = NULL;
        lm_model_create(ctx, &work);
        for (size_t i = 0; i < N_TENSORS; i++) {
            lm_tensor *c;
            lm_tensor_clone(ctx, lm_model_at(base, i), &c);
            lm_model_add(work, lm_model_name_at(base, i), c);
        }
        pthread_t th[8];
        struct loader ls[8];
        for (int t = 0; t < n_threads; t++) {
            ls[t] = (struct loader){m, work, t, n_threads, LM_OK};
            pthread_create(&th[t], NULL, load, &ls[t]);
        }
        for (int t = 0; t < n_threads; t++) {
            pthread_join(th[t], NULL);
            ck_assert_int_eq(ls[t].status, LM_OK);
        }
        for (size_t i = 0; i < N_TENSORS; i++) {
            const lm_tensor *x = lm_model_at(offline, i);
            ck_assert_int_eq(memcmp(lm_tensor_cdata(x),
                                    lm_tensor_cdata(lm_model_at(work, i)),
                                    lm_tensor_nbytes(x)), 0);
        }
        lm_model_destroy(work);
        lm_merger_destroy(m);
    }
    lm_model_destroy(offline);
    lm_plan_destroy(p);
    lm_lora_destroy(l);
    lm_model_destroy(base);
    lm_model_destroy(a);
    lm_model_destroy(b);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(adapters_only_untouched_and_errors)
{
    lm_context *ctx = tu_context(1, 0);
    lm_lora *l = NULL;
    lm_lora_create(ctx, &l);
    lm_lora_add(l, "q", tu_random_tensor(ctx, LM_F32, 2, (int64_t[]){2, 4}, 1),
                tu_random_tensor(ctx, LM_F32, 2, (int64_t[]){3, 2}, 2), 1.0);
    lm_plan *p = NULL;
    lm_plan_create(ctx, "task_arithmetic", &p);
    lm_merger *m = NULL;
    ck_assert_status(lm_merger_create(p, &m), LM_ERR_STATE);
    lm_plan_add_lora(p, l, 1.0);
    lm_plan *two_pass = NULL;
    lm_plan_create(ctx, "esm", &two_pass);
    lm_plan_add_lora(two_pass, l, 1.0);
    /* A two-pass strategy runs its first pass over the plan's base (ESM
     * only with layer scaling: test_strategies_esm_passes.c). */
    ck_assert_ok(lm_plan_set_string(two_pass, "layer_scaling", "true"));
    ck_assert_status(lm_merger_create(two_pass, &m), LM_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "set the plan's base"));
    lm_plan_destroy(two_pass);
    ck_assert_ok(lm_merger_create(p, &m));
    ck_assert_int_eq(lm_merger_touches(m, "q"), 1);
    ck_assert_int_eq(lm_merger_touches(m, "k"), 0);

    lm_tensor *k = tu_random_tensor(ctx, LM_F16, 1, (int64_t[]){7}, 3), *kc;
    lm_tensor_clone(ctx, k, &kc);
    ck_assert_ok(lm_merger_apply(m, "k", k));
    ck_assert_int_eq(memcmp(lm_tensor_cdata(k), lm_tensor_cdata(kc), 14), 0);

    lm_tensor *q = tu_random_tensor(ctx, LM_F32, 2, (int64_t[]){3, 4}, 4);
    lm_tensor *qb = NULL;
    lm_tensor_create(ctx, LM_BF16, 2, (int64_t[]){3, 4}, &qb);
    ck_assert_ok(lm_merger_apply_to(m, "q", q, qb));
    const lm_tensor *a, *b;
    lm_lora_find(l, "q", &a, &b, NULL);
    double want = tu_get(q, 5) + tu_get(b, 2) * tu_get(a, 1) +
                  tu_get(b, 3) * tu_get(a, 5);
    ck_assert(fabs(tu_get(qb, 5) - want) <= 0x1p-8 * fabs(want) + 1e-6);

    lm_tensor *wrong = tu_random_tensor(ctx, LM_F32, 2, (int64_t[]){4, 3}, 5);
    ck_assert_status(lm_merger_apply(m, "q", wrong), LM_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "'q'"));
    ck_assert_status(lm_merger_apply_to(m, "q", q, k), LM_ERR_SHAPE);
    lm_tensor_destroy(k);
    lm_tensor_destroy(kc);
    lm_tensor_destroy(q);
    lm_tensor_destroy(qb);
    lm_tensor_destroy(wrong);
    lm_merger_destroy(m);
    lm_merger_destroy(NULL);
    lm_plan_destroy(p);
    lm_lora_destroy(l);
    lm_context_destroy(ctx);
}
END_TEST

/* TIES and KnOTS with scope=model run two prepare passes (the whole-model
 * threshold) at merger creation: with a base, every apply gives the
 * offline merge's bits; without one, LM_ERR_STATE, while scope=tensor
 * still needs no base. */
START_TEST(model_scope_prepare_passes)
{
    static const char *const methods[] = {"ties", "knots"};
    for (int i = 0; i < 2; i++) {
        lm_context *ctx = tu_context(4, 7);
        lm_model *base = make_model(ctx, 11), *a = make_model(ctx, 12),
                 *b = make_model(ctx, 13);
        lm_plan *p = NULL;
        ck_assert_ok(lm_plan_create(ctx, methods[i], &p));
        ck_assert_ok(lm_plan_set_string(p, "scope", "model"));
        ck_assert_ok(lm_plan_set_float(p, "density", 0.3));
        lm_plan_add_model(p, a, 1.0);
        lm_plan_add_model(p, b, 1.0);
        lm_merger *m = NULL;
        ck_assert_status(lm_merger_create(p, &m), LM_ERR_STATE);
        ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), methods[i]));
        ck_assert_ok(lm_plan_set_string(p, "scope", "tensor"));
        ck_assert_ok(lm_merger_create(p, &m));
        lm_merger_destroy(m);
        ck_assert_ok(lm_plan_set_string(p, "scope", "model"));
        lm_plan_set_base(p, base);
        lm_model *offline = NULL;
        ck_assert_ok(lm_plan_execute(p, &offline));
        ck_assert_ok(lm_merger_create(p, &m));
        tu_assert_merger_matches(ctx, m, base, offline);
        lm_merger_destroy(m);
        /* The whole-model trim differs from the per-tensor one. */
        ck_assert_ok(lm_plan_set_string(p, "scope", "tensor"));
        lm_model *per_tensor = NULL;
        ck_assert_ok(lm_plan_execute(p, &per_tensor));
        int differ = 0;
        for (size_t t = 0; t < N_TENSORS && !differ; t++)
            differ = memcmp(lm_tensor_cdata(lm_model_at(offline, t)),
                            lm_tensor_cdata(lm_model_at(per_tensor, t)),
                            lm_tensor_nbytes(lm_model_at(offline, t))) != 0;
        ck_assert(differ);
        lm_model_destroy(per_tensor);
        lm_model_destroy(offline);
        lm_plan_destroy(p);
        lm_model_destroy(base);
        lm_model_destroy(a);
        lm_model_destroy(b);
        lm_context_destroy(ctx);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("merger");
    TCase *tc = tcase_create("merger");
    tcase_add_test(tc, threads_match_offline_merge);
    tcase_add_test(tc, adapters_only_untouched_and_errors);
    tcase_add_test(tc, model_scope_prepare_passes);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
