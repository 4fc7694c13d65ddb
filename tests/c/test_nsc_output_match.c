/* nsc alpha_rule=output_match (lib/nsc/output_match.c) against values
 * computed here: with one task the least-squares factor is 1 / lambda by
 * hand (the merge gives the adapter back: lambda f = 1); with two tasks f
 * is summed directly over the calibration rows x in the output space,
 * f = max(0, sum_k mean_x (D_k x).(M x) / sum_k mean_x |M x|^2), D_k =
 * s_k B_k A_k and M = sum_k lambda_k D_k, in f64 from the factors (not
 * through Gram matrices), and the merge is W0 + alpha f M (|diff| <= 1e-5:
 * the library forms s B A in f32). Also f = 0 when the merged delta points
 * away from the adapters, f = 1 when it is zero, and the errors: no
 * statistics, a task without them, statistics of another width. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define TOL 1e-5
#define OUT 3
#define IN 4
#define NROWS 9

static const char *const NAME = "l1.weight";

struct fx {
    lm_context *ctx;
    lm_model *base;
    lm_lora *ads[2];
    float rows[2][(NROWS + 2) * IN];
    size_t n_rows[2];
    lm_stats *stats;
};

static const double SCALES[2] = {2.0, 0.5};

static void setup(struct fx *f)
{
    memset(f, 0, sizeof(*f));
    f->ctx = tu_context(2, 3);
    ck_assert_ok(lm_model_create(f->ctx, &f->base));
    tu_add_random(f->ctx, f->base, NAME, LM_F32, 2, (int64_t[]){OUT, IN}, 1);
    tu_add_random(f->ctx, f->base, "l2.weight", LM_F32, 2,
                  (int64_t[]){2, OUT}, 2);
    ck_assert_ok(lm_stats_create(f->ctx, &f->stats));
    for (int t = 0; t < 2; t++) {
        int64_t r = t == 0 ? 2 : 1;
        ck_assert_ok(lm_lora_create(f->ctx, &f->ads[t]));
        lm_tensor *a = tu_random_tensor(f->ctx, LM_F32, 2,
                                        (int64_t[]){r, IN}, 10 + 2 * t);
        lm_tensor *b = tu_random_tensor(f->ctx, LM_F32, 2,
                                        (int64_t[]){OUT, r}, 11 + 2 * t);
        ck_assert_ok(lm_lora_add(f->ads[t], NAME, a, b, SCALES[t]));
        /* Tasks with different row counts: each task's mean weighs the
         * same. */
        f->n_rows[t] = NROWS + 2 * (size_t)t;
        lm_tensor *x = tu_random_tensor(f->ctx, LM_F32, 2,
                                        (int64_t[]){(int64_t)f->n_rows[t], IN},
                                        20 + t);
        for (size_t i = 0; i < f->n_rows[t] * IN; i++)
            f->rows[t][i] = (float)tu_get(x, i);
        lm_tensor_destroy(x);
        ck_assert_ok(lm_stats_observe(f->stats, (size_t)t, NAME, f->rows[t],
                                      f->n_rows[t], IN));
    }
}

static void teardown(struct fx *f)
{
    lm_lora_destroy(f->ads[0]);
    lm_lora_destroy(f->ads[1]);
    lm_model_destroy(f->base);
    lm_stats_destroy(f->stats);
    lm_context_destroy(f->ctx);
}

/* D_t = s_t B_t A_t in f64. */
static void delta(const struct fx *f, int t, double *d)
{
    const lm_tensor *a, *b;
    double s;
    ck_assert_ok(lm_lora_find(f->ads[t], NAME, &a, &b, &s));
    size_t r = (size_t)lm_tensor_shape(a)[0];
    for (size_t i = 0; i < OUT; i++)
        for (size_t j = 0; j < IN; j++) {
            double v = 0;
            for (size_t q = 0; q < r; q++)
                v += tu_get(b, i * r + q) * tu_get(a, q * IN + j);
            d[i * IN + j] = s * v;
        }
}

static lm_plan *plan(struct fx *f, int n_tasks, const double *lambda,
                     const lm_stats *stats, double alpha)
{
    lm_plan *p = NULL;
    ck_assert_ok(lm_plan_create(f->ctx, "nsc", &p));
    ck_assert_ok(lm_plan_set_base(p, f->base));
    for (int t = 0; t < n_tasks; t++) {
        ck_assert_ok(lm_plan_add_lora(p, f->ads[t], 1.0));
        ck_assert_ok(lm_plan_set_float_for(p, "lambda", lambda[t], NAME,
                                           (size_t)t));
    }
    ck_assert_ok(lm_plan_set_float(p, "alpha", alpha));
    ck_assert_ok(lm_plan_set_string(p, "alpha_rule", "output_match"));
    if (stats)
        ck_assert_ok(lm_plan_set_stats(p, stats));
    return p;
}

/* The merged l1 minus W0 equals want (OUT x IN); l2 is the base's. */
static void check_merge(struct fx *f, lm_plan *p, const double *want)
{
    lm_model *out = NULL;
    ck_assert_ok(lm_plan_execute(p, &out));
    lm_tensor *got = NULL, *w0 = NULL;
    ck_assert_ok(lm_model_find(out, NAME, &got));
    ck_assert_ok(lm_model_find(f->base, NAME, &w0));
    for (size_t i = 0; i < OUT * IN; i++) {
        double v = tu_get(got, i) - tu_get(w0, i);
        ck_assert_msg(fabs(v - want[i]) <= TOL, "[%zu] %.9g vs %.9g", i, v,
                      want[i]);
    }
    lm_tensor *a = NULL, *b = NULL;
    ck_assert_ok(lm_model_find(out, "l2.weight", &a));
    ck_assert_ok(lm_model_find(f->base, "l2.weight", &b));
    ck_assert(memcmp(lm_tensor_data(a), lm_tensor_data(b),
                     lm_tensor_nbytes(a)) == 0);
    lm_model_destroy(out);
}

START_TEST(one_task_gives_the_adapter_back)
{
    /* M = lambda D: f = <D, M>_C / <M, M>_C = 1 / lambda, whatever the
     * rows, so the merge is W0 + D (times alpha). */
    struct fx f;
    setup(&f);
    double d[OUT * IN], want[OUT * IN];
    delta(&f, 0, d);
    const double lambdas[] = {0.5, 0.2, 1.7};
    for (size_t i = 0; i < 3; i++) {
        for (double alpha = 1.0; alpha > 0.2; alpha -= 0.6) {
            lm_plan *p = plan(&f, 1, &lambdas[i], f.stats, alpha);
            for (size_t j = 0; j < OUT * IN; j++)
                want[j] = alpha * d[j];
            check_merge(&f, p, want);
            lm_plan_destroy(p);
        }
    }
    teardown(&f);
}
END_TEST

/* f from the rows, in the output space. */
static double factor_by_rows(const struct fx *f, const double *lambda,
                             double d[2][OUT * IN], double *m)
{
    for (size_t j = 0; j < OUT * IN; j++)
        m[j] = lambda[0] * d[0][j] + lambda[1] * d[1][j];
    double num = 0, den = 0;
    for (int t = 0; t < 2; t++) {
        double nt = 0, dt = 0;
        for (size_t r = 0; r < f->n_rows[t]; r++) {
            const float *x = f->rows[t] + r * IN;
            for (size_t i = 0; i < OUT; i++) {
                double yd = 0, ym = 0;
                for (size_t j = 0; j < IN; j++) {
                    yd += d[t][i * IN + j] * (double)x[j];
                    ym += m[i * IN + j] * (double)x[j];
                }
                nt += yd * ym;
                dt += ym * ym;
            }
        }
        num += nt / (double)f->n_rows[t];
        den += dt / (double)f->n_rows[t];
    }
    return num > 0 ? num / den : 0.0;
}

START_TEST(two_tasks_match_the_rows)
{
    struct fx f;
    setup(&f);
    double d[2][OUT * IN], m[OUT * IN], want[OUT * IN];
    delta(&f, 0, d[0]);
    delta(&f, 1, d[1]);
    const double lambda[2] = {0.75, 0.4};
    double fac = factor_by_rows(&f, lambda, d, m);
    ck_assert(fac > 0 && fabs(fac - 1.0) > 0.05); /* a real rescaling */
    lm_plan *p = plan(&f, 2, lambda, f.stats, 0.5);
    for (size_t j = 0; j < OUT * IN; j++)
        want[j] = 0.5 * fac * m[j];
    check_merge(&f, p, want);
    lm_plan_destroy(p);
    teardown(&f);
}
END_TEST

START_TEST(opposed_or_zero_delta)
{
    struct fx f;
    setup(&f);
    double d[2][OUT * IN], m[OUT * IN], zero[OUT * IN] = {0};
    delta(&f, 0, d[0]);
    delta(&f, 1, d[1]);
    /* The merge points away from task 0's adapter and is small along
     * task 1's: no positive scale fits, f = 0 and the base is returned. */
    const double away[2] = {-1.0, 0.01};
    ck_assert(factor_by_rows(&f, away, d, m) == 0.0);
    lm_plan *p = plan(&f, 2, away, f.stats, 1.0);
    check_merge(&f, p, zero);
    lm_plan_destroy(p);
    /* A zero merged delta: nothing to scale (f = 1), the base. */
    const double none[2] = {0.0, 0.0};
    p = plan(&f, 2, none, f.stats, 1.0);
    check_merge(&f, p, zero);
    lm_plan_destroy(p);
    teardown(&f);
}
END_TEST

START_TEST(errors)
{
    struct fx f;
    setup(&f);
    const double lambda[2] = {0.75, 0.4};
    lm_model *out = NULL;
    /* No statistics at all: refused before any tensor. */
    lm_plan *p = plan(&f, 2, lambda, NULL, 1.0);
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx),
                                 "alpha_rule=output_match needs"));
    lm_plan_destroy(p);
    /* Task 1 has none for the module. */
    lm_stats *part = NULL;
    ck_assert_ok(lm_stats_create(f.ctx, &part));
    ck_assert_ok(lm_stats_observe(part, 0, NAME, f.rows[0], NROWS, IN));
    p = plan(&f, 2, lambda, part, 1.0);
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_NOT_FOUND);
    const char *msg = lm_context_error(f.ctx);
    ck_assert_ptr_nonnull(strstr(msg, "task 1"));
    ck_assert_ptr_nonnull(strstr(msg, NAME));
    lm_plan_destroy(p);
    /* Statistics of another width under the module's name. */
    ck_assert_ok(lm_stats_observe(part, 1, NAME, f.rows[1], 2, IN - 1));
    p = plan(&f, 2, lambda, part, 1.0);
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "4 input columns"));
    lm_plan_destroy(p);
    lm_stats_destroy(part);
    /* An unknown rule. */
    ck_assert_ok(lm_plan_create(f.ctx, "nsc", &p));
    ck_assert(lm_plan_set_string(p, "alpha_rule", "bogus") != LM_OK ||
              (lm_plan_set_base(p, f.base) == LM_OK &&
               lm_plan_add_lora(p, f.ads[0], 1.0) == LM_OK &&
               lm_plan_execute(p, &out) != LM_OK));
    lm_plan_destroy(p);
    ck_assert_ptr_null(out);
    teardown(&f);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("nsc_output_match");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, one_task_gives_the_adapter_back);
    tcase_add_test(tc, two_tasks_match_the_rows);
    tcase_add_test(tc, opposed_or_zero_delta);
    tcase_add_test(tc, errors);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run(suite());
}
