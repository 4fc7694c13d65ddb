/* dare_linear and dare_ties by their properties (docs/methods/ties_dare.md),
 * next to the exact-mask fixtures of test_strategies_ref.c: kept entries
 * are the task vector rescaled by 1/density and scaled by lambda, dropped
 * ones are exactly 0, each task's keep rate is binomial, tasks' masks are
 * independent, and masks depend only on the seed, the tensor name, the
 * task and the position (not on values, thread count or run).
 *
 * Task vector values are small multiples of powers of two, so every
 * expected output is exact in f32 and compared with ==. Rate bounds are 5
 * binomial standard deviations: a correct generator fails one with
 * probability 6e-7, and since masks are fixed by the seed, an outcome
 * that passes once passes always. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define N 32768 /* entries per tensor: rate bounds of +-0.014 at p = 0.5 */
#define MAX_TASKS 3

struct dare_run {
    const char *method;
    double density, lambda;
    int rescale, n_threads;
    uint64_t seed;
    size_t n_tasks;
    const float *tau[MAX_TASKS]; /* task vectors of tensor "a" */
    const float *tau_b;          /* optional tensor "b" (all tasks) */
};

static lm_model *zeros_model(lm_context *ctx, const float *zeros, int with_b)
{
    lm_model *m = NULL;
    int64_t shape[1] = {N};
    lm_tensor *t = NULL;
    ck_assert_ok(lm_model_create(ctx, &m));
    ck_assert_ok(lm_tensor_wrap(ctx, LM_F32, 1, shape, (void *)zeros,
                                N * sizeof(float), &t));
    ck_assert_ok(lm_model_add(m, "a", t));
    if (with_b) {
        ck_assert_ok(lm_tensor_wrap(ctx, LM_F32, 1, shape, (void *)zeros,
                                    N * sizeof(float), &t));
        ck_assert_ok(lm_model_add(m, "b", t));
    }
    return m;
}

static lm_model *task_model(lm_context *ctx, const float *a, const float *b)
{
    lm_model *m = NULL;
    int64_t shape[1] = {N};
    lm_tensor *t = NULL;
    ck_assert_ok(lm_model_create(ctx, &m));
    ck_assert_ok(lm_tensor_wrap(ctx, LM_F32, 1, shape, (void *)a,
                                N * sizeof(float), &t));
    ck_assert_ok(lm_model_add(m, "a", t));
    if (b) {
        ck_assert_ok(lm_tensor_wrap(ctx, LM_F32, 1, shape, (void *)b,
                                    N * sizeof(float), &t));
        ck_assert_ok(lm_model_add(m, "b", t));
    }
    return m;
}

/* Merge with a zero base, so the output is the merged task vector; copies
 * tensor "a" (and "b" when given) into out_a / out_b. */
static void run(const struct dare_run *r, float *out_a, float *out_b)
{
    static float zeros[N];
    lm_context *ctx = tu_context(r->n_threads, r->seed);
    lm_model *base = zeros_model(ctx, zeros, r->tau_b != NULL);
    lm_model *models[MAX_TASKS];
    lm_plan *plan = NULL;
    ck_assert_ok(lm_plan_create(ctx, r->method, &plan));
    ck_assert_ok(lm_plan_set_float(plan, "density", r->density));
    ck_assert_ok(lm_plan_set_float(plan, "lambda", r->lambda));
    ck_assert_ok(lm_plan_set_float(plan, "rescale", r->rescale));
    ck_assert_ok(lm_plan_set_base(plan, base));
    for (size_t t = 0; t < r->n_tasks; t++) {
        models[t] = task_model(ctx, r->tau[t], r->tau_b);
        ck_assert_ok(lm_plan_add_model(plan, models[t], 1.0));
    }
    lm_model *out = NULL;
    ck_assert_ok(lm_plan_execute(plan, &out));
    memcpy(out_a, lm_tensor_cdata(lm_model_at(out, 0)), N * sizeof(float));
    if (out_b)
        memcpy(out_b, lm_tensor_cdata(lm_model_at(out, 1)),
               N * sizeof(float));
    lm_model_destroy(out);
    lm_plan_destroy(plan);
    for (size_t t = 0; t < r->n_tasks; t++)
        lm_model_destroy(models[t]);
    lm_model_destroy(base);
    lm_context_destroy(ctx);
}

/* +-(1 + j/16), j = 0..12: nonzero, both signs, exact after any scaling by
 * a power of two. */
static void fill_tau(float *tau, unsigned salt)
{
    for (size_t i = 0; i < N; i++) {
        float v = 1.0f + (float)((i * 7 + salt) % 13) / 16.0f;
        tau[i] = ((i * 2654435761u + salt) >> 7) & 1 ? v : -v;
    }
}

static void assert_rate(size_t kept, double p, const char *what)
{
    double sd = sqrt(N * p * (1 - p));
    ck_assert_msg(fabs((double)kept - N * p) <= 5 * sd,
                  "%s: %zu of %d kept, expected %.0f +- %.0f (5 sd)", what,
                  kept, N, N * p, 5 * sd);
}

static float tau_a[N], tau_c[N], out1[N], out2[N], out3[N];

/* Kept entries are exactly lambda * tau / density (rescale) or lambda *
 * tau (no rescale), the rest exactly 0, with the same mask either way and
 * a binomial keep rate; for both methods (one task: dare_ties elects the
 * entry's own sign and divides by one). */
START_TEST(kept_entries_and_rate)
{
    static const char *methods[] = {"dare_linear", "dare_ties"};
    const double densities[] = {0.1, 0.25, 0.5};
    fill_tau(tau_a, 1);
    for (int m = 0; m < 2; m++) {
        for (int d = 0; d < 3; d++) {
            struct dare_run r = {methods[m], densities[d], 0.5, 1, 2, 7,
                                 1, {tau_a}, NULL};
            run(&r, out1, NULL);
            r.rescale = 0;
            run(&r, out2, NULL);
            size_t kept = 0;
            for (size_t i = 0; i < N; i++) {
                int k1 = out1[i] != 0, k2 = out2[i] != 0;
                tu_check(k1 == k2, "%s: rescale changed the mask at %zu",
                              methods[m], i);
                kept += (size_t)k1;
                if (!k1)
                    continue;
                double want = 0.5 * tau_a[i] / densities[d];
                /* density 0.1: the f32 division rounds; 2^-24 relative. */
                tu_check(fabs(out1[i] - want) <= 0x1p-23 * fabs(want),
                              "%s density %g [%zu]: %.9g, want %.9g",
                              methods[m], densities[d], i, out1[i], want);
                tu_check(out2[i] == 0.5f * tau_a[i],
                              "%s no rescale [%zu]: %.9g, want %.9g",
                              methods[m], i, out2[i], 0.5f * tau_a[i]);
            }
            assert_rate(kept, densities[d], methods[m]);
        }
    }
}
END_TEST

/* Three tasks with task vectors 1, 4 and 16 everywhere, no rescaling:
 * entry i of the dare_linear sum is sum_t keep_t(i) 4^t, which decodes
 * every task's mask. Each is binomial, pairs are kept together at rate
 * p^2 (independent streams per task) and no two masks are equal. */
START_TEST(masks_independent_across_tasks)
{
    static float ones[N], fours[N], sixteens[N];
    unsigned char keep[MAX_TASKS][N];
    for (size_t i = 0; i < N; i++) {
        ones[i] = 1;
        fours[i] = 4;
        sixteens[i] = 16;
    }
    const double p = 0.5;
    struct dare_run r = {"dare_linear", p, 1.0, 0, 1, 11,
                         3, {ones, fours, sixteens}, NULL};
    run(&r, out1, NULL);
    size_t count[MAX_TASKS] = {0};
    for (size_t i = 0; i < N; i++) {
        unsigned v = (unsigned)out1[i];
        tu_check((float)v == out1[i] && v <= 21 && (v & 0x2A) == 0,
                      "entry %zu = %.9g is not a sum of distinct 4^t", i,
                      out1[i]);
        for (int t = 0; t < MAX_TASKS; t++) {
            keep[t][i] = (v >> (2 * t)) & 1;
            count[t] += keep[t][i];
        }
    }
    for (int t = 0; t < MAX_TASKS; t++)
        assert_rate(count[t], p, "task keep rate");
    for (int s = 0; s < MAX_TASKS; s++) {
        for (int t = s + 1; t < MAX_TASKS; t++) {
            size_t both = 0;
            for (size_t i = 0; i < N; i++)
                both += (size_t)(keep[s][i] & keep[t][i]);
            assert_rate(both, p * p, "two tasks kept together");
            ck_assert(memcmp(keep[s], keep[t], N) != 0);
        }
    }
}
END_TEST

static int same_mask(const float *x, const float *y)
{
    for (size_t i = 0; i < N; i++)
        if ((x[i] != 0) != (y[i] != 0))
            return 0;
    return 1;
}

/* Masks depend on the seed and the tensor name, not on the values, the
 * thread count or the run. */
START_TEST(masks_by_seed_and_name)
{
    static float b1[N], b4[N], copy_a[N];
    fill_tau(tau_a, 1);
    fill_tau(tau_c, 5); /* other values at the same positions */
    /* Tensors "a" and "b" hold the same task vector, in separate storage
     * (shared storage would tie them: one parameter, one mask). */
    memcpy(copy_a, tau_a, sizeof(copy_a));
    struct dare_run r = {"dare_linear", 0.3, 1.0, 1, 1, 42, 1, {tau_a}, copy_a};
    run(&r, out1, b1);
    r.n_threads = 4;
    run(&r, out2, b4);
    ck_assert(memcmp(out1, out2, sizeof(out1)) == 0);
    ck_assert(memcmp(b1, b4, sizeof(b1)) == 0);
    ck_assert(!same_mask(out1, b1)); /* the name changes the mask */
    r.seed = 43;
    run(&r, out3, NULL);
    ck_assert(!same_mask(out1, out3)); /* so does the seed */
    r.seed = 42;
    r.tau[0] = tau_c;
    run(&r, out3, NULL);
    ck_assert(same_mask(out1, out3)); /* the values do not */
}
END_TEST

/* density 1 keeps everything: dare_linear is task arithmetic. */
START_TEST(density_one_is_task_arithmetic)
{
    fill_tau(tau_a, 1);
    fill_tau(tau_c, 5);
    struct dare_run r = {"dare_linear", 1.0, 0.75, 1, 2, 3, 2,
                         {tau_a, tau_c}, NULL};
    run(&r, out1, NULL);
    for (size_t i = 0; i < N; i++)
        tu_check(out1[i] == (float)(0.75 * ((double)tau_a[i] + tau_c[i])),
                      "[%zu] %.9g", i, out1[i]);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("strategies_dare");
    TCase *tc = tcase_create("properties");
    tcase_add_test(tc, kept_entries_and_rate);
    tcase_add_test(tc, masks_independent_across_tasks);
    tcase_add_test(tc, masks_by_seed_and_name);
    tcase_add_test(tc, density_one_is_task_arithmetic);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
