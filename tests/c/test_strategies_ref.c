/* Every built-in strategy against the numpy references, from C: each case
 * of tests/fixtures/strategies (written once by
 * tests/fixtures/gen_strategy_fixtures.py from tests/python/reference.py
 * and tests/python/mergekit_reference.py)
 * is merged through the public API exactly as a C host would (wrapped
 * tensors, lm_plan_set_string, observed statistics) with 1 and with 4
 * threads; the two results must be bit-identical and match the reference
 * merged task vector within the method's bound below.
 *
 * Set LM_FIXTURE_REPORT=1 to print the fraction of its bound each tensor
 * of each case uses (how the margins below were checked). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixture.h"
#include "testutil.h"

/* |got_i - ref_i| <= rel * max_j |ref_j| + 2^-24 (|base_i| + |ref_i|).
 * The second term is the last rounding, of base + delta to the f32
 * output (half an ulp); rel bounds the method's own arithmetic. */
static const struct {
    const char *method;
    double rel;
} bounds[] = {
    /* Elementwise, f32 task vectors summed in f64: besides the output
     * rounding only the f32 rounding of the merged delta (2^-24 relative)
     * and DARE's f32 rescaling remain (measured: the worst tensor uses 18%
     * of its bound). */
    {"average", 1e-6},
    {"task_arithmetic", 1e-6},
    {"ties", 1e-6},
    {"dare_linear", 1e-6},
    {"dare_ties", 1e-6},
    /* mergekit's sparsification family: elementwise too; the L1 rescale
     * adds one f32 rounding of a scale computed in f64, SCE's weights and
     * RAM+'s factors are f64/f32 scalars (measured: at most 23% of the
     * bound). */
    {"breadcrumbs", 1e-6},
    {"breadcrumbs_ties", 1e-6},
    {"della", 1e-6},
    {"della_linear", 1e-6},
    {"sce", 1e-6},
    {"ram", 1e-6},
    {"ramplus_tl", 1e-6},
    /* SVD methods and ESM: f64 LAPACK on both sides but by different
     * routes (numpy's SVD against dgesdd with canonical signs; polar
     * factors from the Gram matrix's eigendecomposition, error ~ eps *
     * cond^2; ESM's eigenvectors of dW X^T X dW^T against the released
     * SVD of X dW^T, which squares the condition number too), so their
     * f64 results differ by rounding amplified by the conditioning of the
     * kept subspaces. The fixtures' SVD inputs have spectra decaying by
     * 0.55-0.7 per direction (gaps >= 1.4x at every truncation), ESM's
     * are rank 3 plus small noise: measured, the route differences stay
     * below f32 rounding (the worst tensor uses 12.5% of its bound); 2e-6
     * is twice the elementwise bound. */
    {"tsv", 2e-6},
    {"iso_c", 2e-6},
    {"iso_cts", 2e-6},
    {"knots", 2e-6},
    {"esm", 2e-6},
    /* mergekit's geometric family: f64 sums and trigonometry on both
     * sides (the references run mergekit's formulas in f64), so only the
     * f32 rounding of the inputs' differences and of the merged delta
     * remain, as for the elementwise methods. */
    {"linear", 1e-6},
    {"slerp", 1e-6},
    {"nuslerp", 1e-6},
    {"multislerp", 1e-6},
    {"karcher", 1e-6},
    {"model_stock", 1e-6},
    {"nearswap", 1e-6},
    {"arcee_fusion", 1e-6},
    {"passthrough", 1e-6},
};

static char **case_names;
static size_t n_cases;

static double bound_for(const char *method)
{
    for (size_t i = 0; i < sizeof(bounds) / sizeof(bounds[0]); i++)
        if (strcmp(bounds[i].method, method) == 0)
            return bounds[i].rel;
    ck_abort_msg("no tolerance stated for method '%s'", method);
    return 0;
}

/* The base (model 0) or task model m, wrapping the fixture's memory. */
static lm_model *wrap_model(lm_context *ctx, const fx_inputs *in, size_t m)
{
    lm_model *model = NULL;
    ck_assert_ok(lm_model_create(ctx, &model));
    for (size_t k = 0; k < in->n_tensors; k++) {
        const fx_tensor *t = &in->tensors[k];
        lm_tensor *w = NULL;
        ck_assert_ok(lm_tensor_wrap(ctx, LM_F32, t->ndim, t->shape,
                                    t->values + m * t->numel,
                                    t->numel * sizeof(float), &w));
        ck_assert_ok(lm_model_add(model, t->name, w));
    }
    return model;
}

/* Merge the case with n_threads threads. */
static lm_model *merge(const fx_case *c, const fx_inputs *in, int n_threads,
                       lm_context **ctx_out)
{
    lm_context *ctx = tu_context(n_threads, c->seed);
    size_t n_tasks = in->n_models - 1;
    ck_assert_uint_eq(c->n_weights, n_tasks);
    lm_model *base = wrap_model(ctx, in, 0);
    lm_model **models = calloc(n_tasks, sizeof(*models));
    ck_assert_ptr_nonnull(models);
    lm_plan *plan = NULL;
    ck_assert_ok(lm_plan_create(ctx, c->method, &plan));
    for (size_t i = 0; i < c->n_params; i++)
        if (c->params[i].model == FX_ALL_MODELS)
            ck_assert_msg(lm_plan_set_string(plan, c->params[i].name,
                                             c->params[i].value) == LM_OK,
                          "%s=%s: %s", c->params[i].name, c->params[i].value,
                          lm_context_error(ctx));
    ck_assert_ok(lm_plan_set_base(plan, base));
    for (size_t m = 0; m < n_tasks; m++) {
        models[m] = wrap_model(ctx, in, m + 1);
        ck_assert_ok(lm_plan_add_model(plan, models[m], c->weights[m]));
    }
    /* Per-model values (mergekit's per-model density, gamma, epsilon), as
     * a C host sets them. */
    for (size_t i = 0; i < c->n_params; i++)
        if (c->params[i].model != FX_ALL_MODELS)
            ck_assert_msg(lm_plan_set_float_for(plan, c->params[i].name,
                                                atof(c->params[i].value),
                                                NULL, c->params[i].model) ==
                              LM_OK,
                          "%s[%zu]=%s: %s", c->params[i].name,
                          c->params[i].model, c->params[i].value,
                          lm_context_error(ctx));
    lm_stats *stats = NULL;
    if (in->n_rows) {
        ck_assert_ok(lm_stats_create(ctx, &stats));
        for (size_t r = 0; r < in->n_rows; r++) {
            const fx_rows *x = &in->rows[r];
            ck_assert_ok(lm_stats_observe(stats, x->task, x->name, x->values,
                                          x->n_rows, x->d_in));
        }
        ck_assert_ok(lm_plan_set_stats(plan, stats));
    }
    lm_model *out = NULL;
    ck_assert_msg(lm_plan_execute(plan, &out) == LM_OK, "%s: %s", c->method,
                  lm_context_error(ctx));
    lm_plan_destroy(plan);
    lm_stats_destroy(stats);
    for (size_t m = 0; m < n_tasks; m++)
        lm_model_destroy(models[m]);
    free(models);
    lm_model_destroy(base);
    *ctx_out = ctx;
    return out;
}

static const fx_expect *find_expect(const fx_case *c, const char *name)
{
    for (size_t i = 0; i < c->n_expect; i++)
        if (strcmp(c->expect[i].name, name) == 0)
            return &c->expect[i];
    ck_abort_msg("fixture has no reference for tensor %s", name);
    return NULL;
}

/* Compare one merged tensor with the reference. */
static void check_tensor(const char *case_name, const fx_tensor *t,
                           const lm_tensor *got, const fx_expect *e,
                           double rel)
{
    ck_assert_uint_eq(e->numel, t->numel);
    ck_assert_int_eq(lm_tensor_dtype(got), LM_F32);
    ck_assert_uint_eq(lm_tensor_numel(got), t->numel);
    const float *out = lm_tensor_cdata(got);
    double max_ref = 0, worst = 0;
    for (size_t i = 0; i < e->numel; i++)
        max_ref = fmax(max_ref, fabs(e->values[i]));
    ck_assert_msg(max_ref > 0, "%s/%s: the reference is all zero", case_name,
                  t->name);
    for (size_t i = 0; i < t->numel; i++) {
        double base = t->values[i], want = e->values[i];
        double delta = (double)out[i] - base;
        double err = fabs(delta - want);
        double tol = rel * max_ref + 0x1p-24 * (fabs(base) + fabs(want));
        tu_check(err <= tol,
                      "%s/%s[%zu]: merged - base = %.9g, reference %.9g "
                      "(|diff| %.3g > bound %.3g)",
                      case_name, t->name, i, delta, want, err, tol);
        worst = fmax(worst, err / tol);
    }
    if (getenv("LM_FIXTURE_REPORT"))
        fprintf(stderr, "%-28s %-22s uses %4.1f%% of its bound\n", case_name,
                t->name, 100 * worst);
}

START_TEST(matches_reference)
{
    const char *name = case_names[_i];
    char file[256];
    snprintf(file, sizeof(file), "%s.txt", name);
    char *path = fx_path(LM_FIXTURE_DIR, file);
    fx_case c;
    fx_load_case(path, &c);
    free(path);
    snprintf(file, sizeof(file), "inputs_%s.txt", c.inputs);
    path = fx_path(LM_FIXTURE_DIR, file);
    fx_inputs in;
    fx_load_inputs(path, &in);
    free(path);
    ck_assert_uint_eq(c.n_expect, in.n_tensors);

    double rel = bound_for(c.method);
    lm_context *ctx1, *ctx4;
    lm_model *one = merge(&c, &in, 1, &ctx1);
    lm_model *four = merge(&c, &in, 4, &ctx4);
    ck_assert_uint_eq(lm_model_count(one), in.n_tensors);
    for (size_t k = 0; k < in.n_tensors; k++) {
        const fx_tensor *t = &in.tensors[k];
        lm_tensor *a = NULL, *b = NULL;
        ck_assert_ok(lm_model_find(one, t->name, &a));
        ck_assert_ok(lm_model_find(four, t->name, &b));
        check_tensor(name, t, a, find_expect(&c, t->name), rel);
        /* Thread-count determinism, to the bit. */
        ck_assert_msg(memcmp(lm_tensor_cdata(a), lm_tensor_cdata(b),
                             t->numel * sizeof(float)) == 0,
                      "%s/%s: 1 and 4 threads differ", name, t->name);
    }
    lm_model_destroy(one);
    lm_model_destroy(four);
    lm_context_destroy(ctx1);
    lm_context_destroy(ctx4);
    fx_free_inputs(&in);
    fx_free_case(&c);
}
END_TEST

/* Every registered built-in has a fixture case with its default
 * parameters and one with non-default ones (where it has defaults and
 * parameters), so a new strategy cannot be registered without a reference
 * test. */
START_TEST(every_builtin_has_cases)
{
    lm_context *ctx = tu_context(1, 0);
    size_t n = lm_strategy_count(ctx);
    ck_assert_uint_ge(n, 10);
    for (size_t s = 0; s < n; s++) {
        const char *method = lm_strategy_at(ctx, s)->name;
        /* nsc merges LoRA adapters with a coefficient table, which these
         * dense-model fixtures cannot express: test_strategies_nsc.c and
         * tests/python/test_nsc_strategy.py check it against references. */
        if (strcmp(method, "nsc") == 0)
            continue;
        int with_defaults = 0, with_params = 0;
        for (size_t i = 0; i < n_cases; i++) {
            char file[256];
            snprintf(file, sizeof(file), "%s.txt", case_names[i]);
            char *path = fx_path(LM_FIXTURE_DIR, file);
            fx_case c;
            fx_load_case(path, &c);
            free(path);
            if (strcmp(c.method, method) == 0) {
                with_defaults += c.n_params == 0;
                with_params += c.n_params > 0;
            }
            fx_free_case(&c);
        }
        /* slerp's and nearswap's `t` has no default (mergekit requires
         * it); arcee_fusion has no parameters. */
        if (strcmp(method, "slerp") == 0 || strcmp(method, "nearswap") == 0)
            with_defaults = 1;
        if (lm_strategy_at(ctx, s)->n_params == 0)
            with_params = 1;
        ck_assert_msg(with_defaults && with_params,
                      "strategy %s: %d fixture cases with default parameters, "
                      "%d with others (want >= 1 each)",
                      method, with_defaults, with_params);
    }
    lm_context_destroy(ctx);
}
END_TEST

int main(void)
{
    char *index = fx_path(LM_FIXTURE_DIR, "cases.txt");
    case_names = fx_load_names(index, &n_cases);
    if (!index || !case_names || n_cases == 0) {
        fprintf(stderr, "cannot read the fixture index %s\n",
                index ? index : "(out of memory)");
        return EXIT_FAILURE;
    }
    free(index);
    Suite *s = suite_create("strategies_ref");
    TCase *tc = tcase_create("fixtures");
    tcase_add_loop_test(tc, matches_reference, 0, (int)n_cases);
    tcase_add_test(tc, every_builtin_has_cases);
    suite_add_tcase(s, tc);
    int rc = tu_run(s);
    fx_free_names(case_names, n_cases);
    return rc;
}
