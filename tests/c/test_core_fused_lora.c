/* The fused path with LoRA adapters (lib/core/fused.c, row blocks formed
 * by lm__lora_rows) against the plain path (forced with
 * LIBMERGE_FUSED=0, which materialises each adapter's whole update with
 * lm__lora_delta): task_arithmetic, average and linear over adapters
 * alone and adapters mixed with full models, adapters that skip some
 * tensors, a transposed (fan_in_fan_out) target, rank 1, shapes around
 * the row blocks (one row wider than a fused block, several row blocks,
 * a tensor split into parallel chunks), bf16/f16/f32 bases, 1 and 2
 * threads, through lm_plan_execute and through lm_merger (in place and
 * into another dtype). Outputs must be bit-identical (0 ulps, compared
 * as bytes) where models and adapters mix; where every task is an
 * adapter (core/fused_lora.c) they must agree within a tolerance
 * (assert_close); the plain path's adapter updates are checked against numpy
 * in tests/python (test_lora*.py). Also: a non-finite adapter leaves the
 * error to the plain path, and a merger's failed in-place apply leaves
 * the tensor unchanged. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/context_private.h"
#include "testutil.h"

/* [rows, cols]: one row block; several (32768 / 1500 = 21 rows each);
 * one row wider than the 2048-element fused block; 540 K elements, split
 * into two parallel chunks (36-row blocks, 16 per chunk); tiny. */
static const int64_t shapes[][2] = {
    {37, 61}, {40, 1500}, {3, 2101}, {600, 900}, {1, 1},
};
#define N_SHAPES (sizeof(shapes) / sizeof(shapes[0]))

static void name_of(size_t i, char *buf, size_t n)
{
    snprintf(buf, n, "w%zu", i);
}

static void add_random(lm_context *ctx, lm_model *m, const char *name,
                       lm_dtype dt, int ndim, const int64_t *shape,
                       uint64_t seed)
{
    ck_assert_ok(lm_model_add(
        m, name, tu_random_tensor_quiet(ctx, dt, ndim, shape, seed, 0.0, 1.0)));
}

static lm_model *random_model(lm_context *ctx, lm_dtype dt, uint64_t seed)
{
    lm_model *m;
    ck_assert_ok(lm_model_create(ctx, &m));
    for (size_t i = 0; i < N_SHAPES; i++) {
        char name[16];
        name_of(i, name, sizeof(name));
        add_random(ctx, m, name, dt, 2, shapes[i], seed * 31 + i);
    }
    /* a 1-D tensor no adapter targets */
    add_random(ctx, m, "norm", dt, 1, (int64_t[]){77}, seed * 31 + 99);
    return m;
}

/* Adapter `which` targets every shape but one (which % N_SHAPES), with
 * rank 1 + which * 3; adapter 1 stores w0 transposed. */
static lm_lora *random_lora(lm_context *ctx, int which)
{
    lm_lora *l;
    ck_assert_ok(lm_lora_create(ctx, &l));
    int64_t r = 1 + which * 3;
    for (size_t i = 0; i < N_SHAPES; i++) {
        if (i == (size_t)which % N_SHAPES)
            continue;
        char name[16];
        name_of(i, name, sizeof(name));
        bool transposed = which == 1 && i == 0;
        int64_t out = transposed ? shapes[i][1] : shapes[i][0];
        int64_t in = transposed ? shapes[i][0] : shapes[i][1];
        lm_tensor *a = tu_random_tensor_quiet(
            ctx, which == 2 ? LM_BF16 : LM_F32, 2, (int64_t[]){r, in},
            (uint64_t)(which * 1000 + i), 0.0, 1.0);
        lm_tensor *b = tu_random_tensor_quiet(
            ctx, LM_F32, 2, (int64_t[]){out, r},
            (uint64_t)(which * 1000 + i + 500), 0.0, 1.0);
        ck_assert_ok(lm_lora_add(l, name, a, b, 0.25 + which));
        if (transposed)
            ck_assert_ok(lm_lora_set_transposed(l, name, 1));
    }
    return l;
}

struct setup {
    const char *method;
    int n_models;   /* full models first */
    int n_adapters; /* then adapters */
};

static const struct setup setups[] = {
    {"task_arithmetic", 0, 3},
    {"task_arithmetic", 2, 2},
    {"average", 0, 2},
    {"linear", 1, 3},
};
#define N_SETUPS (sizeof(setups) / sizeof(setups[0]))

static const lm_dtype base_dtypes[] = {LM_BF16, LM_F16, LM_F32};
#define N_DTYPES (sizeof(base_dtypes) / sizeof(base_dtypes[0]))

struct inputs {
    lm_model *base, *models[2];
    lm_lora *loras[3];
};

static void inputs_make(lm_context *ctx, lm_dtype dt, struct inputs *in)
{
    in->base = random_model(ctx, dt, 1);
    for (int m = 0; m < 2; m++)
        in->models[m] = random_model(ctx, dt, (uint64_t)(10 + m));
    for (int a = 0; a < 3; a++)
        in->loras[a] = random_lora(ctx, a);
}

static void inputs_free(struct inputs *in)
{
    lm_model_destroy(in->base);
    for (int m = 0; m < 2; m++)
        lm_model_destroy(in->models[m]);
    for (int a = 0; a < 3; a++)
        lm_lora_destroy(in->loras[a]);
}

static lm_plan *make_plan(lm_context *ctx, const struct setup *s,
                          const struct inputs *in, bool with_base)
{
    static const double w[5] = {0.7, -0.4, 1.1, 0.9, 0.35};
    lm_plan *p;
    ck_assert_ok(lm_plan_create(ctx, s->method, &p));
    if (with_base)
        ck_assert_ok(lm_plan_set_base(p, in->base));
    int t = 0;
    for (int m = 0; m < s->n_models; m++, t++)
        ck_assert_ok(lm_plan_add_model(p, in->models[m], w[t]));
    for (int a = 0; a < s->n_adapters; a++, t++)
        ck_assert_ok(lm_plan_add_lora(p, in->loras[a], w[t]));
    if (strcmp(s->method, "task_arithmetic") == 0)
        ck_assert_ok(lm_plan_set_float(p, "lambda", 0.6));
    return p;
}

static void set_fused(bool on)
{
    if (on)
        unsetenv("LIBMERGE_FUSED");
    else
        setenv("LIBMERGE_FUSED", "0", 1);
}

static lm_model *execute(lm_context *ctx, const struct setup *s,
                         const struct inputs *in, bool fused, size_t *n_fused)
{
    set_fused(fused);
    lm_plan *p = make_plan(ctx, s, in, true);
    size_t before = atomic_load(&ctx->fused_tensors);
    lm_model *out;
    ck_assert_ok(lm_plan_execute(p, &out));
    *n_fused = atomic_load(&ctx->fused_tensors) - before;
    lm_plan_destroy(p);
    unsetenv("LIBMERGE_FUSED");
    return out;
}


/* One unit in the last place of |v| in dtype dt. */
static double ulp_of(double v, lm_dtype dt)
{
    int mant = dt == LM_F32 ? 23 : dt == LM_F16 ? 10 : 7;
    int e;
    frexp(fabs(v), &e); /* |v| = f * 2^e, f in [0.5, 1) */
    return ldexp(1.0, e - 1 - mant);
}

/* Tasks that are all adapters go core/fused_lora.c's way (one sgemm of
 * the packed factors, f32 accumulation), which is not bit-identical to
 * the plain path: within 2 output ulps plus 2^-18 (values here are O(1);
 * tests/python/test_fused_lora.py bounds both paths against a float64
 * reference, this only checks they agree). */
static void assert_close(const lm_model *a, const lm_model *b,
                         const char *what)
{
    ck_assert_uint_eq(lm_model_count(a), lm_model_count(b));
    for (size_t i = 0; i < lm_model_count(a); i++) {
        const lm_tensor *x = lm_model_at(a, i), *y = lm_model_at(b, i);
        ck_assert_int_eq(lm_tensor_dtype(x), lm_tensor_dtype(y));
        ck_assert_uint_eq(lm_tensor_numel(x), lm_tensor_numel(y));
        size_t n = lm_tensor_numel(x);
        double *xs = malloc(2 * (n ? n : 1) * sizeof(double)), *ys = xs + n;
        ck_assert_ptr_nonnull(xs);
        /* Converted whole: tu_get asserts (a write(2)) per element. */
        lm_convert(lm_tensor_cdata(x), lm_tensor_dtype(x), xs, LM_F64, n);
        lm_convert(lm_tensor_cdata(y), lm_tensor_dtype(y), ys, LM_F64, n);
        for (size_t j = 0; j < n; j++) {
            double u = xs[j], v = ys[j];
            double big = fabs(u) > fabs(v) ? fabs(u) : fabs(v);
            double tol = 2.0 * ulp_of(big, lm_tensor_dtype(x)) +
                         ldexp(1.0, -18);
            if (!(fabs(u - v) <= tol))
                ck_abort_msg("%s: tensor %s[%zu]: fused %.9g, plain %.9g",
                             what, lm_model_name_at(a, i), j, u, v);
        }
        free(xs);
    }
}

/* Every setup and base dtype, on 1 and 2 threads. */
START_TEST(fused_adapters_match_plain)
{
    int threads = 1 + _i % 2;
    lm_dtype dt = base_dtypes[(size_t)(_i / 2) % N_DTYPES];
    lm_context *ctx = tu_context(threads, 7);
    struct inputs in;
    inputs_make(ctx, dt, &in);
    for (size_t s = 0; s < N_SETUPS; s++) {
        size_t n_fused, n_plain;
        lm_model *plain = execute(ctx, &setups[s], &in, false, &n_plain);
        lm_model *fused = execute(ctx, &setups[s], &in, true, &n_fused);
        ck_assert_uint_eq(n_plain, 0);
        ck_assert_uint_eq(n_fused, N_SHAPES + 1);
        char what[96];
        snprintf(what, sizeof(what), "%s, %d models + %d adapters, %s, %d "
                 "threads", setups[s].method, setups[s].n_models,
                 setups[s].n_adapters, lm_dtype_name(dt), threads);
        if (setups[s].n_models)
            tu_assert_same_bytes(fused, plain, what);
        else
            assert_close(fused, plain, what);
        lm_model_destroy(plain);
        lm_model_destroy(fused);
    }
    inputs_free(&in);
    lm_context_destroy(ctx);
}
END_TEST

/* A merger (no plan base) applies every tensor as the plain execution
 * merges it: in place, and into f32 from a bf16 base. */
START_TEST(merger_matches_plain)
{
    lm_context *ctx = tu_context(2, 7);
    struct inputs in;
    inputs_make(ctx, LM_BF16, &in);
    const struct setup *s = &setups[1];
    size_t n;
    lm_model *plain = execute(ctx, s, &in, false, &n);
    lm_plan *p = make_plan(ctx, s, &in, false);
    lm_merger *mg;
    ck_assert_ok(lm_merger_create(p, &mg));
    size_t before = atomic_load(&ctx->fused_tensors);
    tu_assert_merger_matches(ctx, mg, in.base, plain);
    ck_assert_uint_eq(atomic_load(&ctx->fused_tensors) - before,
                      N_SHAPES + 1);
    for (size_t i = 0; i < N_SHAPES; i++) {
        const lm_tensor *b = lm_model_at(in.base, i);
        lm_tensor *out;
        ck_assert_ok(lm_tensor_create(ctx, LM_F32, 2, shapes[i], &out));
        ck_assert_ok(lm_merger_apply_to(mg, lm_model_name_at(in.base, i), b,
                                        out));
        const lm_tensor *want = lm_model_at(plain, i);
        for (size_t j = 0; j < lm_tensor_numel(out); j++)
            tu_check(tu_get(out, j) ==
                              (double)(float)tu_get(want, j) ||
                              fabs(tu_get(out, j) - tu_get(want, j)) <=
                                  fabs(tu_get(want, j)) / 128.0,
                          "apply_to f32: %s[%zu]",
                          lm_model_name_at(in.base, i), j);
        lm_tensor_destroy(out);
    }
    lm_merger_destroy(mg);
    lm_plan_destroy(p);
    lm_model_destroy(plain);
    inputs_free(&in);
    lm_context_destroy(ctx);
}
END_TEST

/* A NaN in an adapter: the fused path declines, the plain path reports
 * it (same status as with the plain path alone), and a merger's in-place
 * apply leaves the tensor as it was. */
START_TEST(nonfinite_adapter)
{
    lm_context *ctx = tu_context(1, 7);
    struct inputs in;
    inputs_make(ctx, LM_F32, &in);
    const lm_tensor *a;
    ck_assert_ok(lm_lora_find(in.loras[0], "w1", &a, NULL, NULL));
    ck_assert_ok(lm_tensor_set((lm_tensor *)a, 3, NAN));
    const struct setup *s = &setups[0];
    lm_status want = LM_OK;
    for (int fused = 0; fused < 2; fused++) {
        set_fused(fused);
        lm_plan *p = make_plan(ctx, s, &in, true);
        lm_model *out = NULL;
        lm_status st = lm_plan_execute(p, &out);
        ck_assert_int_ne(st, LM_OK);
        if (!fused)
            want = st;
        ck_assert_int_eq(st, want);
        lm_plan_destroy(p);
        unsetenv("LIBMERGE_FUSED");
    }
    lm_plan *p = make_plan(ctx, s, &in, false);
    lm_merger *mg;
    ck_assert_ok(lm_merger_create(p, &mg));
    lm_tensor *w1, *t;
    ck_assert_ok(lm_model_find(in.base, "w1", &w1));
    ck_assert_ok(lm_tensor_clone(ctx, w1, &t));
    ck_assert_int_eq(lm_merger_apply(mg, "w1", t), want);
    ck_assert_mem_eq(lm_tensor_cdata(t), lm_tensor_cdata(w1),
                     lm_tensor_nbytes(t));
    lm_tensor_destroy(t);
    lm_merger_destroy(mg);
    lm_plan_destroy(p);
    inputs_free(&in);
    lm_context_destroy(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("fused_lora");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, fused_adapters_match_plain, 0,
                        2 * (int)N_DTYPES);
    tcase_add_test(tc, merger_matches_plain);
    tcase_add_test(tc, nonfinite_adapter);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
