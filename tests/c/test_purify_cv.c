/* lm_plan_tune_purify_cv: the objective it picks, the joint scale rule
 * (checked against the single tuners it is made of) and its errors; the
 * option init functions. The same numbers as the Python bindings' policy
 * of 0.1 are checked in tests/python/test_policy_reference.py. */
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "libmerge/experimental/nsc.h"
#include "libmerge/experimental/purify_tune.h"
#include "testutil.h"

#define T 3

struct fixture {
    lm_context *ctx;
    lm_model *base, *models[T];
    lm_stats *stats;
    lm_plan *plan;
};

static void setup(struct fixture *f, double fraction, size_t folds)
{
    f->ctx = tu_context(2, 7);
    ck_assert_ok(lm_model_create(f->ctx, &f->base));
    tu_add_random(f->ctx, f->base, "a.weight", LM_F32, 2, (int64_t[]){12, 8}, 1);
    ck_assert_ok(lm_stats_create(f->ctx, &f->stats));
    lm_stats_split_options so = LM_STATS_SPLIT_OPTIONS_INIT;
    so.heldout_fraction = fraction;
    so.folds = folds;
    ck_assert_ok(lm_stats_set_split(f->stats, &so));
    ck_assert_ok(lm_plan_create(f->ctx, "task_arithmetic", &f->plan));
    ck_assert_ok(lm_plan_set_base(f->plan, f->base));
    for (size_t t = 0; t < T; t++) {
        ck_assert_ok(lm_model_create(f->ctx, &f->models[t]));
        tu_add_random(f->ctx, f->models[t], "a.weight", LM_F32, 2, (int64_t[]){12, 8}, 10 + t);
        ck_assert_ok(lm_plan_add_model(f->plan, f->models[t], 1.0));
        lm_tensor *x = tu_random_tensor(f->ctx, LM_F32, 2, (int64_t[]){24, 8}, 100 + t);
        ck_assert_ok(lm_stats_observe_tensor(f->stats, t, "a.weight", x));
        lm_tensor_destroy(x);
    }
    ck_assert_ok(lm_plan_set_stats(f->plan, f->stats));
    lm_purify_options o;
    lm_purify_options_init(&o);
    o.allocation = LM_PURIFY_UNIFORM;
    ck_assert_ok(lm_plan_set_purify(f->plan, &o));
}

static void teardown(struct fixture *f)
{
    lm_plan_destroy(f->plan);
    for (size_t t = 0; t < T; t++)
        lm_model_destroy(f->models[t]);
    lm_model_destroy(f->base);
    lm_stats_destroy(f->stats);
    lm_context_destroy(f->ctx);
}

static const double CANDS[] = {1.0, 0.75, 0.5, 0.25};
static const double SCALES[] = {2.0, 0.3, 0.6};
#define NC 4
#define NS 3

/* The joint rule by hand from the plain tuners: per scale, tune; the
 * smallest drift at its own best keep wins, the first on ties. */
static void by_hand(struct fixture *f, bool folds, double *curve,
                    double *keep, double *scale)
{
    double best_value = INFINITY;
    const lm_stats *parts[2] = {lm_stats_fold_at(f->stats, 0),
                                lm_stats_fold_at(f->stats, 1)};
    for (size_t s = 0; s < NS; s++) {
        double best, *row = curve + s * NC;
        ck_assert_ok(lm_plan_set_float(f->plan, "lambda", SCALES[s]));
        if (folds)
            ck_assert_ok(lm_plan_tune_purify_folds(f->plan, parts, 2, CANDS, NC,
                                                   &best, row));
        else
            ck_assert_ok(lm_plan_tune_purify(f->plan, lm_stats_heldout(f->stats),
                                             CANDS, NC, &best, row));
        size_t i = 0;
        while (CANDS[i] != best)
            i++;
        if (row[i] < best_value) {
            best_value = row[i];
            *keep = best;
            *scale = SCALES[s];
        }
    }
}

static void check_joint(double fraction, size_t folds)
{
    struct fixture f;
    setup(&f, fraction, folds);
    double want[NS * NC], keep = 0, scale = 0;
    by_hand(&f, folds != 0, want, &keep, &scale);
    lm_purify_cv_options o;
    lm_purify_cv_options_init(&o);
    o.candidates = CANDS;
    o.n_candidates = NC;
    o.scale = "lambda";
    o.scales = SCALES;
    o.n_scales = NS;
    double curve[NS * NC];
    lm_purify_cv_result r = LM_PURIFY_CV_RESULT_INIT;
    ck_assert_ok(lm_plan_tune_purify_cv(f.plan, &o, curve, &r));
    ck_assert(memcmp(curve, want, sizeof(curve)) == 0);
    ck_assert_double_eq(r.keep, keep);
    ck_assert_double_eq(r.scale, scale);
    ck_assert_int_eq(r.objective, folds ? LM_PURIFY_FOLDS_DRIFT : LM_PURIFY_HELDOUT_DRIFT);
    ck_assert_uint_eq(r.n_folds, folds);
    /* The plan keeps the choice: a plain execution at it gives the same
     * drift as the curve's winning point. */
    lm_model *merged = NULL;
    ck_assert_ok(lm_plan_execute(f.plan, &merged));
    if (!folds) {
        double drift;
        ck_assert_ok(lm_plan_heldout_drift(f.plan, merged, lm_stats_heldout(f.stats),
                                           &drift));
        size_t s = 0, i = 0;
        while (SCALES[s] != scale)
            s++;
        while (CANDS[i] != keep)
            i++;
        ck_assert_double_eq(drift, want[s * NC + i]);
    }
    lm_model_destroy(merged);
    teardown(&f);
}

START_TEST(joint_scale_on_heldout_split)
{
    check_joint(0.25, 0);
}
END_TEST

START_TEST(joint_scale_on_folds)
{
    check_joint(0, 2);
}
END_TEST

static int minus_drift(double keep, const lm_model *merged, double *score, void *user)
{
    (void)keep;
    struct fixture *f = user;
    double d;
    if (lm_plan_heldout_drift(f->plan, merged, lm_stats_heldout(f->stats), &d))
        return 1;
    *score = -d;
    return 0;
}

START_TEST(score_wins_over_heldout_and_default_candidates)
{
    struct fixture f;
    setup(&f, 0.5, 0);
    lm_purify_cv_options o = LM_PURIFY_CV_OPTIONS_INIT;
    o.score = minus_drift;
    o.score_user = &f;
    const double *defaults;
    size_t n = lm_purify_default_candidates(&defaults);
    ck_assert_uint_eq(n, 12);
    ck_assert_double_eq(defaults[0], 1.0);
    ck_assert_double_eq(defaults[11], 0.5);
    double scores[12], drifts[12];
    lm_purify_cv_result r = LM_PURIFY_CV_RESULT_INIT;
    ck_assert_ok(lm_plan_tune_purify_cv(f.plan, &o, scores, &r));
    ck_assert_int_eq(r.objective, LM_PURIFY_HOST_SCORE);
    ck_assert(isnan(r.scale));
    o.score = NULL; /* now the stats' held-out part */
    lm_purify_cv_result r2 = LM_PURIFY_CV_RESULT_INIT;
    ck_assert_ok(lm_plan_tune_purify_cv(f.plan, &o, drifts, &r2));
    ck_assert_int_eq(r2.objective, LM_PURIFY_HELDOUT_DRIFT);
    ck_assert_double_eq(r.keep, r2.keep);
    for (size_t i = 0; i < 12; i++)
        ck_assert_double_eq(scores[i], -drifts[i]);
    teardown(&f);
}
END_TEST

START_TEST(cv_errors)
{
    struct fixture f;
    setup(&f, 0, 0);
    lm_purify_cv_options o = LM_PURIFY_CV_OPTIONS_INIT;
    ck_assert_status(lm_plan_tune_purify_cv(f.plan, &o, NULL, NULL),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "held-out"));
    const lm_stats *one[1] = {f.stats};
    o.folds = one;
    o.n_folds = 1;
    ck_assert_status(lm_plan_tune_purify_cv(f.plan, &o, NULL, NULL),
                     LM_ERR_INVALID_ARGUMENT);
    o.folds = NULL;
    o.heldout = f.stats;
    o.scale = "lambda";
    ck_assert_status(lm_plan_tune_purify_cv(f.plan, &o, NULL, NULL),
                     LM_ERR_INVALID_ARGUMENT);
    o.scale = NULL;
    o.struct_size = 8;
    ck_assert_status(lm_plan_tune_purify_cv(f.plan, &o, NULL, NULL), LM_ERR_ABI);
    o.struct_size = sizeof(o);
    ck_assert_ok(lm_plan_tune_purify_cv(f.plan, &o, NULL, NULL));
    ck_assert_ok(lm_plan_set_purify(f.plan, NULL));
    ck_assert_status(lm_plan_tune_purify_cv(f.plan, &o, NULL, NULL), LM_ERR_STATE);
    ck_assert_status(lm_plan_tune_purify_cv(NULL, &o, NULL, NULL),
                     LM_ERR_INVALID_ARGUMENT);
    teardown(&f);
}
END_TEST

START_TEST(options_init_equal_the_macros)
{
    /* Padding may differ from the macro's; compare the fields. */
    lm_purify_options p;
    lm_purify_options_init(&p);
    ck_assert_uint_eq(p.struct_size, sizeof(p));
    ck_assert_double_eq(p.keep, 0.97);
    ck_assert_int_eq(p.allocation, LM_PURIFY_MODEL);
    ck_assert_double_eq(p.max_prune_factor, 1.5);
    lm_context_options c;
    lm_context_options_init(&c);
    ck_assert_uint_eq(c.struct_size, sizeof(c));
    ck_assert_int_eq(c.log_level, LM_LOG_WARN);
    lm_nsc_options n;
    lm_nsc_options_init(&n);
    ck_assert_uint_eq(n.struct_size, sizeof(n));
    ck_assert_double_eq(n.lr, 1e-3);
    ck_assert_double_eq(n.weight_decay, 0.01);
    lm_nsc_spsa_options sp;
    lm_nsc_spsa_options_init(&sp);
    ck_assert_uint_eq(sp.struct_size, sizeof(sp));
    ck_assert_uint_eq(sp.steps, 100);
    lm_npz_options z;
    lm_npz_options_init(&z);
    ck_assert_uint_eq(z.struct_size, sizeof(z));
    ck_assert_int_eq(z.compress, 0);
    lm_gguf_options g;
    lm_gguf_options_init(&g);
    ck_assert_uint_eq(g.struct_size, sizeof(g));
    lm_safetensors_sink_options st;
    lm_safetensors_sink_options_init(&st);
    ck_assert_uint_eq(st.struct_size, sizeof(st));
    lm_stats_split_options ss;
    lm_stats_split_options_init(&ss);
    ck_assert_uint_eq(ss.struct_size, sizeof(ss));
    ck_assert_uint_eq(ss.folds, 0);
    lm_purify_cv_options cv;
    lm_purify_cv_options_init(&cv);
    ck_assert_uint_eq(cv.struct_size, sizeof(cv));
    ck_assert_ptr_null(cv.candidates);
    /* NULL is accepted by every init. */
    lm_purify_options_init(NULL);
    lm_context_options_init(NULL);
    lm_nsc_options_init(NULL);
    lm_nsc_spsa_options_init(NULL);
    lm_npz_options_init(NULL);
    lm_gguf_options_init(NULL);
    lm_safetensors_sink_options_init(NULL);
    lm_stats_split_options_init(NULL);
    lm_purify_cv_options_init(NULL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("purify_cv");
    TCase *tc = tcase_create("cv");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, joint_scale_on_heldout_split);
    tcase_add_test(tc, joint_scale_on_folds);
    tcase_add_test(tc, score_wins_over_heldout_and_default_candidates);
    tcase_add_test(tc, cv_errors);
    tcase_add_test(tc, options_init_equal_the_macros);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
