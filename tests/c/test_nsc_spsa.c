/* NSC through the C API: the gradient-free SPSA driver on a two-layer
 * linear host, determinism, and errors. The numerics (ratio, gradients,
 * AdamW) are checked against numpy/torch in tests/python/test_nsc.py. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "libmerge/experimental/nsc.h"
#include "testutil.h"

#define D 8
#define R 2
#define ROWS 32

struct host {
    lm_context *ctx;
    lm_tensor *w0;       /* base of module 0 ("l1.weight") */
    lm_tensor *w;        /* merged module 0, host buffer */
    float x[ROWS * D];   /* the task's inputs (same for both tasks) */
    int calls;
};

/* The merged first layer feeds the second, whose inputs NSC scores. */
static int evaluate(lm_nsc *nsc, size_t task, size_t step, void *user)
{
    struct host *h = user;
    (void)step;
    h->calls++;
    if (lm_nsc_materialize(nsc, 0, h->w0, h->w) != LM_OK)
        return 1;
    const float *w = lm_tensor_data(h->w);
    float z[ROWS * D];
    for (size_t i = 0; i < ROWS; i++)
        for (size_t o = 0; o < D; o++) {
            float acc = 0;
            for (size_t k = 0; k < D; k++)
                acc += h->x[i * D + k] * w[o * D + k];
            z[i * D + o] = acc;
        }
    return lm_nsc_observe(nsc, task, 1, z, ROWS, D) != LM_OK;
}

static lm_lora *adapter(lm_context *ctx, uint64_t seed)
{
    lm_lora *l = NULL;
    ck_assert_ok(lm_lora_create(ctx, &l));
    const char *names[] = {"l1.weight", "l2.weight"};
    for (int i = 0; i < 2; i++) {
        lm_tensor *a = tu_random_tensor(ctx, LM_F32, 2, (int64_t[]){R, D}, seed + 2 * i);
        lm_tensor *b = tu_random_tensor(ctx, LM_F32, 2, (int64_t[]){D, R}, seed + 2 * i + 1);
        ck_assert_ok(lm_lora_add(l, names[i], a, b, 2.0));
    }
    return l;
}

/* One SPSA run on the two-layer host. `nso`/`so` may be NULL (defaults);
 * `chunks` > 1 splits the steps into that many lm_nsc_spsa calls
 * (first_step continuing); `freeze_target` freezes module 1, whose own
 * coefficients cannot change its inputs. lambdas gets both modules'
 * coefficients (module 0's two, then module 1's two). Returns the number
 * of evaluations. */
static int run(uint64_t seed, const lm_nsc_options *nso,
                const lm_nsc_spsa_options *so, size_t chunks,
                int freeze_target, double *first, double *last,
                double *lambdas)
{
    struct host h;
    memset(&h, 0, sizeof(h));
    h.ctx = tu_context(1, seed);
    h.w0 = tu_random_tensor(h.ctx, LM_F32, 2, (int64_t[]){D, D}, 99);
    ck_assert_ok(lm_tensor_create(h.ctx, LM_F32, 2, (int64_t[]){D, D}, &h.w));
    lm_tensor *x = tu_random_tensor(h.ctx, LM_F32, 2, (int64_t[]){ROWS, D}, 98);
    memcpy(h.x, lm_tensor_data(x), sizeof(h.x));
    lm_tensor_destroy(x);
    lm_lora *ads[2] = {adapter(h.ctx, 10), adapter(h.ctx, 20)};
    lm_nsc *nsc = NULL;
    ck_assert_ok(lm_nsc_create(h.ctx, (const lm_lora *const *)ads, 2, nso, &nsc));
    lm_lora_destroy(ads[0]);  /* copied: need not outlive the nsc */
    lm_lora_destroy(ads[1]);
    if (freeze_target)
        ck_assert_ok(lm_nsc_set_frozen(nsc, 1, 1));
    lm_nsc_spsa_options o = LM_NSC_SPSA_OPTIONS_INIT;
    if (so)
        o = *so;
    size_t total = o.steps;
    o.steps = total / chunks;
    for (size_t c = 0; c < chunks; c++) {
        o.first_step = c * o.steps;
        ck_assert_ok(lm_nsc_spsa(nsc, &o, evaluate, &h, c == 0 ? first : NULL,
                                 c + 1 == chunks ? last : NULL, NULL));
    }
    ck_assert_ok(lm_nsc_get_lambdas(nsc, 0, lambdas));
    ck_assert_ok(lm_nsc_get_lambdas(nsc, 1, lambdas + 2));
    lm_nsc_destroy(nsc);
    lm_tensor_destroy(h.w0);
    lm_tensor_destroy(h.w);
    lm_context_destroy(h.ctx);
    return h.calls;
}

START_TEST(spsa_lowers_the_objective)
{
    lm_nsc_spsa_options so = LM_NSC_SPSA_OPTIONS_INIT;
    so.steps = 80;
    double first, last, lam[4], first2, last2, lam2[4];
    int calls = run(5, NULL, &so, 1, 0, &first, &last, lam);
    ck_assert_int_eq(calls, 2 * (2 * 80 + 2)); /* 2 tasks, +-, first, last */
    ck_assert_msg(last < first - 1e-3, "objective %g -> %g", first, last);
    run(5, NULL, &so, 1, 0, &first2, &last2, lam2); /* same seed: same path */
    ck_assert(last2 == last);
    for (int i = 0; i < 4; i++)
        ck_assert(lam2[i] == lam[i]);
}
END_TEST

/* Module 1's coefficients cannot change module 1's inputs: their true
 * gradient is zero. Unfrozen, SPSA's perturbations move them anyway;
 * frozen, they stay at init while module 0 follows the same path as far
 * as its own perturbations go. */
START_TEST(frozen_modules_stay_put)
{
    lm_nsc_spsa_options so = LM_NSC_SPSA_OPTIONS_INIT;
    so.steps = 40;
    so.lr = 1e-2;
    double f, l, free_[4], frozen[4];
    run(5, NULL, &so, 1, 0, &f, &l, free_);
    ck_assert(free_[2] != 0.4 || free_[3] != 0.4); /* noise moved them */
    run(5, NULL, &so, 1, 1, &f, &l, frozen);
    ck_assert(frozen[2] == 0.4 && frozen[3] == 0.4);
    ck_assert(frozen[0] != 0.4 && frozen[1] != 0.4); /* the rest learns */
}
END_TEST

/* A run in chunks (first_step continuing) is the same run. */
START_TEST(chunks_continue_the_same_run)
{
    lm_nsc_spsa_options so = LM_NSC_SPSA_OPTIONS_INIT;
    so.steps = 30;
    double f1, l1, one[4], f3, l3, three[4];
    run(7, NULL, &so, 1, 0, &f1, &l1, one);
    run(7, NULL, &so, 3, 0, &f3, &l3, three);
    ck_assert(f1 == f3 && l1 == l3);
    for (int i = 0; i < 4; i++)
        ck_assert(one[i] == three[i]);
}
END_TEST

/* Pushed hard (lr 0.2 from init 0.05) the unconstrained lambdas leave
 * [0, inf); the default bound keeps them there, a box and a trust
 * region hold too, and the released behaviour is the infinite bounds. */
START_TEST(safeguards_project_every_update)
{
    lm_nsc_spsa_options so = LM_NSC_SPSA_OPTIONS_INIT;
    so.steps = 60;
    so.lr = 0.2;
    lm_nsc_options no = LM_NSC_OPTIONS_INIT;
    no.init = 0.05;
    no.lambda_min = -HUGE_VAL;
    double f, l, lam[4], unconstrained[4];
    run(3, &no, &so, 1, 0, &f, &l, lam);
    memcpy(unconstrained, lam, sizeof(lam));
    double lowest = lam[0];
    for (int i = 1; i < 4; i++)
        lowest = fmin(lowest, lam[i]);
    ck_assert_msg(lowest < 0, "unconstrained lambdas stayed >= 0 (%g)", lowest);

    no.lambda_min = 0.0; /* the default */
    run(3, &no, &so, 1, 0, &f, &l, lam);
    for (int i = 0; i < 4; i++)
        ck_assert(lam[i] >= 0.0);
    ck_assert(memcmp(lam, unconstrained, sizeof(lam)) != 0);

    no.lambda_max = 0.3;
    no.trust_radius = 0.1; /* [max(0, 0.05 - 0.1), min(0.3, 0.15)] */
    run(3, &no, &so, 1, 0, &f, &l, lam);
    int at_bound = 0;
    for (int i = 0; i < 4; i++) {
        ck_assert(lam[i] >= 0.0 && lam[i] <= 0.05 + 0.1);
        at_bound |= lam[i] == 0.0 || lam[i] == 0.05 + 0.1;
    }
    ck_assert(at_bound); /* the box acted */
}
END_TEST

static int stop_now(lm_nsc *nsc, size_t task, size_t step, void *user)
{
    (void)nsc, (void)task, (void)step, (void)user;
    return 1;
}

static int observe_nothing(lm_nsc *nsc, size_t task, size_t step, void *user)
{
    (void)nsc, (void)task, (void)step, (void)user;
    return 0;
}

START_TEST(errors)
{
    lm_context *ctx = tu_context(1, 0);
    lm_lora *ads[2] = {adapter(ctx, 1), adapter(ctx, 2)};
    lm_nsc *nsc = NULL;
    lm_nsc_options o = LM_NSC_OPTIONS_INIT;
    o.beta1 = 1.0;
    ck_assert_status(lm_nsc_create(ctx, (const lm_lora *const *)ads, 2, &o, &nsc),
                     LM_ERR_OUT_OF_RANGE);
    o = (lm_nsc_options)LM_NSC_OPTIONS_INIT;
    o.lambda_max = 0.3; /* below the default init 0.4 */
    ck_assert_status(lm_nsc_create(ctx, (const lm_lora *const *)ads, 2, &o, &nsc),
                     LM_ERR_OUT_OF_RANGE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "init"));
    o.lambda_max = -1.0; /* below lambda_min */
    ck_assert_status(lm_nsc_create(ctx, (const lm_lora *const *)ads, 2, &o, &nsc),
                     LM_ERR_OUT_OF_RANGE);
    o = (lm_nsc_options)LM_NSC_OPTIONS_INIT;
    o.trust_radius = 0;
    ck_assert_status(lm_nsc_create(ctx, (const lm_lora *const *)ads, 2, &o, &nsc),
                     LM_ERR_OUT_OF_RANGE);
    o = (lm_nsc_options)LM_NSC_OPTIONS_INIT;
    o.struct_size = 4;
    ck_assert_status(lm_nsc_create(ctx, (const lm_lora *const *)ads, 2, &o, &nsc),
                     LM_ERR_ABI);
    ck_assert_ok(lm_nsc_create(ctx, (const lm_lora *const *)ads, 2, NULL, &nsc));
    ck_assert_uint_eq(lm_nsc_module_count(nsc), 2);
    size_t idx = 9;
    ck_assert_ok(lm_nsc_module_find(nsc, "l2.weight", &idx));
    ck_assert_uint_eq(idx, 1);
    ck_assert_status(lm_nsc_module_find(nsc, "l3.weight", &idx), LM_ERR_NOT_FOUND);
    ck_assert_status(lm_nsc_spsa(nsc, NULL, stop_now, NULL, NULL, NULL, NULL),
                     LM_ERR_CALLBACK);
    ck_assert_status(lm_nsc_spsa(nsc, NULL, observe_nothing, NULL, NULL, NULL, NULL),
                     LM_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "lm_nsc_observe"));
    double bad[2] = {NAN, 0};
    ck_assert_status(lm_nsc_set_lambdas(nsc, 0, bad), LM_ERR_NONFINITE);
    double negative[2] = {0.2, -0.1}; /* set by the host: allowed */
    ck_assert_ok(lm_nsc_set_lambdas(nsc, 0, negative));
    ck_assert_status(lm_nsc_set_frozen(nsc, 2, 1), LM_ERR_OUT_OF_RANGE);
    lm_nsc_spsa_options so = LM_NSC_SPSA_OPTIONS_INIT;
    so.first_step = SIZE_MAX;
    ck_assert_status(lm_nsc_spsa(nsc, &so, observe_nothing, NULL, NULL, NULL, NULL),
                     LM_ERR_OUT_OF_RANGE);
    lm_tensor *g = tu_random_tensor(ctx, LM_F32, 2, (int64_t[]){D, D + 1}, 3);
    ck_assert_status(lm_nsc_accumulate(nsc, 0, g, NULL), LM_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "l1.weight"));
    lm_tensor_destroy(g);
    float z[D] = {0};
    double mean;
    ck_assert_status(lm_nsc_ratio(nsc, 2, 0, z, 1, D, &mean, NULL, 0),
                     LM_ERR_OUT_OF_RANGE);
    lm_nsc_destroy(nsc);
    lm_lora_destroy(ads[0]);
    lm_lora_destroy(ads[1]);
    lm_context_destroy(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("nsc");
    TCase *tc = tcase_create("nsc");
    tcase_add_test(tc, spsa_lowers_the_objective);
    tcase_add_test(tc, frozen_modules_stay_put);
    tcase_add_test(tc, chunks_continue_the_same_run);
    tcase_add_test(tc, safeguards_project_every_update);
    tcase_add_test(tc, errors);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
