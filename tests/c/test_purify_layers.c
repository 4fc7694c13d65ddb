/* lm_plan_tune_purify_layers and lm_plan_purify_layer_keep against a
 * tuning done here by hand: every fold's training statistics built from
 * the raw rows (row j of a key goes to fold j mod K), the plan executed at
 * each candidate on them, each layer's held-out drift summed directly over
 * fold f's rows, sum_t sum_x ||(W_merged - W_t) x||^2 (not through Gram
 * matrices), and the standard-error rule applied to each layer's own fold
 * curve: the largest candidate whose mean excess over the layer's minimum
 * is within se_rule standard errors (sample SD of the fold-paired
 * differences over sqrt(K)). The ratios must match exactly and the gain
 * against keep 1 and its SE to 1e-6 of the drift (the two routes round the merged
 * weights to f32 from Gram sums added in different orders). PAVE's own numbers are
 * checked against numpy in tests/python/test_purify.py. Also the errors
 * and states of both calls. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "libmerge/experimental/purify_tune.h"
#include "testutil.h"

#define T 2
#define K 4
#define NR 28 /* rows per (task, layer); 7 per fold */
#define NL 2
#define NC 4

static const char *const LAYERS[NL] = {"a.weight", "b.weight"};
static const int64_t SHAPES[NL][2] = {{8, 8}, {6, 10}};
static const double CANDS[NC] = {1.0, 0.75, 0.5, 0.25};

struct fx {
    lm_context *ctx;
    lm_model *base, *models[T];
    float *rows[T][NL];
    lm_stats *stats; /* every row, split into K folds */
};

/* A plain LCG in [-1, 1), so the values do not depend on the library. */
static double lcg(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(*s >> 11) * 0x1.0p-53 * 2.0 - 1.0;
}

/* Layer a is planted (as tests/python/test_purify_layers.py, on
 * coordinate blocks): task t's inputs live on columns 4t..4t+3 (plus
 * small noise everywhere) and its task vector is signal there plus noise
 * on the other task's block, which collides in the merge, so pruning
 * pays. Layer b is dense: inputs and task vectors without structure, where
 * pruning only loses. */
static void fill(float *base, float *tau, float *x, size_t l, size_t t,
                 uint64_t seed)
{
    uint64_t sb = seed * 0x9E3779B97F4A7C15ull + 1;
    uint64_t s = (seed + 7919 * (t + 1)) * 0x9E3779B97F4A7C15ull + 1;
    size_t m = (size_t)SHAPES[l][0], n = (size_t)SHAPES[l][1];
    for (size_t i = 0; i < m * n; i++) {
        size_t block = (i % n) / 4;
        base[i] = l == 0 ? 0.0f : (float)lcg(&sb);
        tau[i] = (float)(l == 0 ? (block == t ? 1.0 : 0.5) * lcg(&s)
                                : lcg(&s));
    }
    for (size_t r = 0; r < NR; r++)
        for (size_t j = 0; j < n; j++) {
            double v = lcg(&s);
            x[r * n + j] = (float)(l == 0 ? (j / 4 == t ? v : 0.05 * v)
                                          : v * pow(0.6, (double)j));
        }
}

static lm_tensor *wrap_copy(lm_context *ctx, const float *v, size_t l)
{
    lm_tensor *t = NULL;
    ck_assert_ok(lm_tensor_create(ctx, LM_F32, 2, SHAPES[l], &t));
    memcpy(lm_tensor_data(t), v, lm_tensor_nbytes(t));
    return t;
}

static lm_plan *new_plan(struct fx *f, const lm_stats *stats, double keep)
{
    lm_plan *p = NULL;
    ck_assert_ok(lm_plan_create(f->ctx, "task_arithmetic", &p));
    ck_assert_ok(lm_plan_set_base(p, f->base));
    for (size_t t = 0; t < T; t++)
        ck_assert_ok(lm_plan_add_model(p, f->models[t], 1.0));
    ck_assert_ok(lm_plan_set_float(p, "lambda", 0.5));
    ck_assert_ok(lm_plan_set_stats(p, stats));
    lm_purify_options o;
    lm_purify_options_init(&o);
    o.allocation = LM_PURIFY_LAYER;
    o.keep = keep;
    ck_assert_ok(lm_plan_set_purify(p, &o));
    return p;
}

static void setup(struct fx *f, uint64_t seed)
{
    memset(f, 0, sizeof(*f));
    f->ctx = tu_context(2, 7);
    ck_assert_ok(lm_model_create(f->ctx, &f->base));
    ck_assert_ok(lm_stats_create(f->ctx, &f->stats));
    lm_stats_split_options so = LM_STATS_SPLIT_OPTIONS_INIT;
    so.folds = K;
    ck_assert_ok(lm_stats_set_split(f->stats, &so));
    for (size_t t = 0; t < T; t++)
        ck_assert_ok(lm_model_create(f->ctx, &f->models[t]));
    for (size_t l = 0; l < NL; l++) {
        size_t m = (size_t)SHAPES[l][0], n = (size_t)SHAPES[l][1];
        float *base = malloc(m * n * sizeof(float));
        float *w = malloc(m * n * sizeof(float));
        for (size_t t = 0; t < T; t++) {
            f->rows[t][l] = malloc(NR * n * sizeof(float));
            fill(base, w, f->rows[t][l], l, t, seed + 10 * l);
            for (size_t i = 0; i < m * n; i++)
                w[i] += base[i];
            ck_assert_ok(lm_model_add(f->models[t], LAYERS[l],
                                      wrap_copy(f->ctx, w, l)));
            /* Two calls: the fold split follows the stream, not the
             * batches. */
            ck_assert_ok(lm_stats_observe(f->stats, t, LAYERS[l],
                                          f->rows[t][l], 5, n));
            ck_assert_ok(lm_stats_observe(f->stats, t, LAYERS[l],
                                          f->rows[t][l] + 5 * n, NR - 5, n));
        }
        ck_assert_ok(lm_model_add(f->base, LAYERS[l],
                                  wrap_copy(f->ctx, base, l)));
        free(base);
        free(w);
    }
    tu_add_random(f->ctx, f->base, "a.bias", LM_F32, 1,
                  (int64_t[]){SHAPES[0][0]}, seed + 9);
    for (size_t t = 0; t < T; t++)
        tu_add_random(f->ctx, f->models[t], "a.bias", LM_F32, 1,
                      (int64_t[]){SHAPES[0][0]}, seed + 50 + t);
}

static void teardown(struct fx *f)
{
    for (size_t t = 0; t < T; t++) {
        lm_model_destroy(f->models[t]);
        for (size_t l = 0; l < NL; l++)
            free(f->rows[t][l]);
    }
    lm_model_destroy(f->base);
    lm_stats_destroy(f->stats);
    lm_context_destroy(f->ctx);
}

/* sum over task t and fold f's rows x of ||(merged - W_t) x||^2. */
static double direct_drift(const struct fx *f, const lm_model *merged,
                           size_t l, size_t fold)
{
    size_t m = (size_t)SHAPES[l][0], n = (size_t)SHAPES[l][1];
    lm_tensor *mt = NULL;
    ck_assert_ok(lm_model_find(merged, LAYERS[l], &mt));
    double acc = 0;
    for (size_t t = 0; t < T; t++) {
        lm_tensor *wt = NULL;
        ck_assert_ok(lm_model_find(f->models[t], LAYERS[l], &wt));
        for (size_t r = fold; r < NR; r += K) {
            const float *x = f->rows[t][l] + r * n;
            for (size_t i = 0; i < m; i++) {
                double y = 0;
                for (size_t j = 0; j < n; j++)
                    y += (tu_get(mt, i * n + j) - tu_get(wt, i * n + j)) *
                         (double)x[j];
                acc += y * y;
            }
        }
    }
    return acc;
}

/* d[l][fold][c]: each layer's held-out drift, by hand. */
static void curves_by_hand(struct fx *f, double d[NL][K][NC])
{
    for (size_t fold = 0; fold < K; fold++) {
        lm_stats *train = NULL;
        ck_assert_ok(lm_stats_create(f->ctx, &train));
        for (size_t t = 0; t < T; t++)
            for (size_t l = 0; l < NL; l++) {
                size_t n = (size_t)SHAPES[l][1];
                for (size_t r = 0; r < NR; r++)
                    if (r % K != fold)
                        ck_assert_ok(lm_stats_observe(
                            train, t, LAYERS[l], f->rows[t][l] + r * n, 1, n));
            }
        for (size_t c = 0; c < NC; c++) {
            lm_plan *p = new_plan(f, train, CANDS[c]);
            lm_model *merged = NULL;
            ck_assert_ok(lm_plan_execute(p, &merged));
            for (size_t l = 0; l < NL; l++)
                d[l][fold][c] = direct_drift(f, merged, l, fold);
            lm_model_destroy(merged);
            lm_plan_destroy(p);
        }
        lm_stats_destroy(train);
    }
}

/* Mean and standard error over folds of d[.][a] - d[.][b]. */
static void paired(double d[K][NC], size_t a, size_t b, double *mean,
                   double *se)
{
    double m = 0, ss = 0;
    for (size_t f = 0; f < K; f++)
        m += d[f][a] - d[f][b];
    m /= K;
    for (size_t f = 0; f < K; f++) {
        double e = d[f][a] - d[f][b] - m;
        ss += e * e;
    }
    *mean = m;
    *se = sqrt(ss / (K - 1) / K);
}

static size_t rule_by_hand(double d[K][NC], double z)
{
    size_t best = 0;
    double sums[NC];
    for (size_t c = 0; c < NC; c++) {
        sums[c] = 0;
        for (size_t f = 0; f < K; f++)
            sums[c] += d[f][c];
        if (sums[c] < sums[best])
            best = c;
    }
    size_t chosen = best;
    for (size_t c = 0; z > 0 && c < NC; c++) {
        double excess, se;
        paired(d, c, best, &excess, &se);
        if (excess <= z * se && CANDS[c] > CANDS[chosen])
            chosen = c;
    }
    return chosen;
}

static void check_rule(uint64_t seed, double z, bool want_differ)
{
    struct fx f;
    setup(&f, seed);
    double d[NL][K][NC];
    curves_by_hand(&f, d);
    size_t want[NL];
    /* Per fold: keep 1 everywhere minus the per-layer choice. */
    double one[K][NC] = {{0}};
    for (size_t l = 0; l < NL; l++) {
        want[l] = rule_by_hand(d[l], z);
        for (size_t fold = 0; fold < K; fold++) {
            one[fold][0] += d[l][fold][0];
            one[fold][1] += d[l][fold][want[l]];
        }
    }
    double gain, gain_se;
    paired(one, 0, 1, &gain, &gain_se);
    /* The fixture must exercise the rule: layers that choose differently,
     * and pruning somewhere. */
    if (want_differ)
        ck_assert_msg(want[0] != want[1] && (want[0] || want[1]),
                      "fixture: both layers choose keep %g / %g",
                      CANDS[want[0]], CANDS[want[1]]);

    lm_plan *p = new_plan(&f, f.stats, 0.97);
    lm_purify_cv_options o;
    lm_purify_cv_options_init(&o);
    o.candidates = CANDS;
    o.n_candidates = NC;
    o.se_rule = z;
    lm_purify_cv_result r = LM_PURIFY_CV_RESULT_INIT;
    ck_assert_ok(lm_plan_tune_purify_layers(p, &o, &r));
    for (size_t l = 0; l < NL; l++) {
        double keep = 0;
        ck_assert_ok(lm_plan_purify_layer_keep(p, LAYERS[l], &keep));
        ck_assert_msg(keep == CANDS[want[l]], "seed %llu se_rule %g: '%s' "
                      "keep %g, by hand %g", (unsigned long long)seed, z,
                      LAYERS[l], keep, CANDS[want[l]]);
    }
    double scale = 0;
    for (size_t fold = 0; fold < K; fold++)
        scale += one[fold][0];
    ck_assert(isnan(r.keep) && isnan(r.scale));
    ck_assert_int_eq(r.objective, LM_PURIFY_FOLDS_DRIFT);
    ck_assert_uint_eq(r.n_folds, K);
    ck_assert_msg(fabs(r.gain - gain * K) <= 1e-6 * scale,
                  "gain %.12g, by hand %.12g", r.gain, gain * K);
    ck_assert_msg(fabs(r.gain_se - gain_se * K) <= 1e-6 * scale,
                  "gain_se %.12g, by hand %.12g", r.gain_se, gain_se * K);
    /* 1-D tensors get no ratio. */
    double keep = 0;
    ck_assert_status(lm_plan_purify_layer_keep(p, "a.bias", &keep),
                     LM_ERR_NOT_FOUND);
    /* The merge is PAVE at each layer's own ratio: the same bytes as a
     * plan whose keep is that ratio, layer by layer. */
    lm_model *got = NULL;
    ck_assert_ok(lm_plan_execute(p, &got));
    for (size_t l = 0; l < NL; l++) {
        lm_plan *q = new_plan(&f, f.stats, CANDS[want[l]]);
        lm_model *ref = NULL;
        ck_assert_ok(lm_plan_execute(q, &ref));
        lm_tensor *a = NULL, *b = NULL;
        ck_assert_ok(lm_model_find(got, LAYERS[l], &a));
        ck_assert_ok(lm_model_find(ref, LAYERS[l], &b));
        ck_assert(memcmp(lm_tensor_data(a), lm_tensor_data(b),
                         lm_tensor_nbytes(a)) == 0);
        lm_model_destroy(ref);
        lm_plan_destroy(q);
    }
    lm_model_destroy(got);
    /* A new lm_plan_set_purify drops the ratios. */
    lm_purify_options po;
    lm_purify_options_init(&po);
    ck_assert_ok(lm_plan_set_purify(p, &po));
    ck_assert_status(lm_plan_purify_layer_keep(p, LAYERS[0], &keep),
                     LM_ERR_NOT_FOUND);
    lm_plan_destroy(p);
    teardown(&f);
}

START_TEST(se_rule_one_matches_hand_tuning)
{
    check_rule(3, 1.0, true);
}
END_TEST

START_TEST(plain_minimum_matches_hand_tuning)
{
    check_rule(3, 0.0, true);
}
END_TEST

START_TEST(other_seeds_match_hand_tuning)
{
    for (uint64_t seed = 20; seed < 23; seed++) {
        check_rule(seed, 1.0, false);
        check_rule(seed, 0.0, false);
    }
}
END_TEST

static int stop_score(double v, const lm_model *m, double *s, void *u)
{
    (void)v;
    (void)m;
    (void)u;
    *s = 0;
    return 0;
}

START_TEST(errors)
{
    struct fx f;
    setup(&f, 3);
    lm_purify_cv_options o;
    lm_purify_cv_options_init(&o);
    o.candidates = CANDS;
    o.n_candidates = NC;
    double keep = 0;
    lm_plan *p = new_plan(&f, f.stats, 0.97);
    ck_assert_status(lm_plan_tune_purify_layers(NULL, &o, NULL),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_status(lm_plan_tune_purify_layers(p, NULL, NULL),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_status(lm_plan_purify_layer_keep(NULL, LAYERS[0], &keep),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_status(lm_plan_purify_layer_keep(p, NULL, &keep),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_status(lm_plan_purify_layer_keep(p, LAYERS[0], NULL),
                     LM_ERR_INVALID_ARGUMENT);
    /* Before any tuning: no ratio. */
    ck_assert_status(lm_plan_purify_layer_keep(p, LAYERS[0], &keep),
                     LM_ERR_NOT_FOUND);
    /* A host score or a joint scale is refused, with the reason. */
    o.score = stop_score;
    ck_assert_status(lm_plan_tune_purify_layers(p, &o, NULL),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "folds only"));
    o.score = NULL;
    double scales[1] = {1.0};
    o.scale = "lambda";
    o.scales = scales;
    o.n_scales = 1;
    ck_assert_status(lm_plan_tune_purify_layers(p, &o, NULL),
                     LM_ERR_INVALID_ARGUMENT);
    o.scale = NULL;
    /* A single held-out split has no folds. */
    o.heldout = lm_stats_fold_at(f.stats, 0);
    ck_assert_status(lm_plan_tune_purify_layers(p, &o, NULL),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "K >= 2 folds"));
    o.heldout = NULL;
    /* Bad options: se_rule, no candidates, a short struct. */
    o.se_rule = -1;
    ck_assert_status(lm_plan_tune_purify_layers(p, &o, NULL),
                     LM_ERR_OUT_OF_RANGE);
    o.se_rule = 1;
    o.n_candidates = 0;
    ck_assert_status(lm_plan_tune_purify_layers(p, &o, NULL),
                     LM_ERR_INVALID_ARGUMENT);
    o.n_candidates = NC;
    o.struct_size = 4;
    ck_assert_status(lm_plan_tune_purify_layers(p, &o, NULL), LM_ERR_ABI);
    o.struct_size = sizeof(o);
    /* Nothing was set by the failures. */
    ck_assert_status(lm_plan_purify_layer_keep(p, LAYERS[0], &keep),
                     LM_ERR_NOT_FOUND);
    lm_plan_destroy(p);

    /* Statistics without folds and none given: refused. */
    lm_stats *plain = NULL;
    ck_assert_ok(lm_stats_create(f.ctx, &plain));
    ck_assert_ok(lm_stats_observe(plain, 0, LAYERS[0], f.rows[0][0], NR,
                                  (size_t)SHAPES[0][1]));
    p = new_plan(&f, plain, 0.97);
    ck_assert_status(lm_plan_tune_purify_layers(p, &o, NULL),
                     LM_ERR_INVALID_ARGUMENT);
    lm_plan_destroy(p);
    lm_stats_destroy(plain);

    /* Without purification: a state error from both calls. */
    ck_assert_ok(lm_plan_create(f.ctx, "task_arithmetic", &p));
    ck_assert_ok(lm_plan_set_base(p, f.base));
    ck_assert_ok(lm_plan_add_model(p, f.models[0], 1.0));
    ck_assert_ok(lm_plan_set_stats(p, f.stats));
    ck_assert_status(lm_plan_tune_purify_layers(p, &o, NULL), LM_ERR_STATE);
    ck_assert_status(lm_plan_purify_layer_keep(p, LAYERS[0], &keep),
                     LM_ERR_STATE);
    lm_plan_destroy(p);
    teardown(&f);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("purify_layers");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, se_rule_one_matches_hand_tuning);
    tcase_add_test(tc, plain_minimum_matches_hand_tuning);
    tcase_add_test(tc, other_seeds_match_hand_tuning);
    tcase_add_test(tc, errors);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run(suite());
}
