/* LoRA adapters as factored task vectors in plans. */
#include <math.h>
#include <string.h>

#include "testutil.h"

static lm_model *base_model(lm_context *ctx)
{
    lm_model *m = NULL;
    lm_model_create(ctx, &m);
    tu_add_random(ctx, m, "q.weight", LM_F32, 2, (int64_t[]){12, 10}, 1);
    tu_add_random(ctx, m, "q.bias", LM_F32, 1, (int64_t[]){12}, 2);
    tu_add_random(ctx, m, "v.weight", LM_BF16, 2, (int64_t[]){8, 10}, 3);
    return m;
}

static lm_lora *adapter(lm_context *ctx, uint64_t seed, int rank, double scale)
{
    lm_lora *l = NULL;
    ck_assert_ok(lm_lora_create(ctx, &l));
    ck_assert_ok(lm_lora_add(
        l, "q.weight",
        tu_random_tensor(ctx, LM_F32, 2, (int64_t[]){rank, 10}, seed),
        tu_random_tensor(ctx, LM_F16, 2, (int64_t[]){12, rank}, seed + 1),
        scale));
    ck_assert_ok(lm_lora_add(
        l, "v.weight",
        tu_random_tensor(ctx, LM_BF16, 2, (int64_t[]){rank, 10}, seed + 2),
        tu_random_tensor(ctx, LM_F32, 2, (int64_t[]){8, rank}, seed + 3),
        scale));
    return l;
}

/* scale * (B A)[i][j] in f64 from the stored factors. */
static double ba(const lm_lora *l, const char *name, size_t i, size_t j)
{
    const lm_tensor *a, *b;
    double scale, acc = 0;
    if (lm_lora_find(l, name, &a, &b, &scale) != LM_OK)
        return 0;
    int64_t r = lm_tensor_dim(a, 0), in = lm_tensor_dim(a, 1);
    for (int64_t k = 0; k < r; k++)
        acc += tu_get(b, i * (size_t)r + (size_t)k) *
               tu_get(a, (size_t)k * (size_t)in + j);
    return scale * acc;
}

START_TEST(adapters_merge_like_dense_deltas)
{
    lm_context *ctx = tu_context(2, 0);
    lm_model *base = base_model(ctx);
    lm_lora *l1 = adapter(ctx, 10, 4, 2.0), *l2 = adapter(ctx, 20, 2, 0.5);
    lm_plan *p = NULL;
    lm_plan_create(ctx, "task_arithmetic", &p);
    lm_plan_set_float(p, "lambda", 0.7);
    lm_plan_set_base(p, base);
    ck_assert_ok(lm_plan_add_lora(p, l1, 1.0));
    ck_assert_ok(lm_plan_add_lora(p, l2, 0.5));
    lm_model *out = NULL;
    ck_assert_ok(lm_plan_execute(p, &out));
    for (size_t k = 0; k < 3; k++) {
        const char *name = lm_model_name_at(base, k);
        const lm_tensor *b = lm_model_at(base, k);
        const lm_tensor *o = lm_model_at(out, k);
        int64_t cols = lm_tensor_ndim(b) == 2 ? lm_tensor_dim(b, 1) : 1;
        for (size_t i = 0; i < lm_tensor_numel(b); i++) {
            size_t r = i / (size_t)cols, c = i % (size_t)cols;
            double want = tu_get(b, i) + 0.7 * (ba(l1, name, r, c) +
                                                0.5 * ba(l2, name, r, c));
            double tol = lm_tensor_dtype(b) == LM_BF16
                             ? 0x1p-8 * fabs(want) + 1e-6
                             : 1e-5 * (1 + fabs(want));
            ck_assert_msg(fabs(tu_get(o, i) - want) <= tol,
                          "%s[%zu]: %g vs %g", name, i, tu_get(o, i), want);
        }
    }
    /* q.bias is untouched by adapters. */
    ck_assert_int_eq(memcmp(lm_tensor_cdata(lm_model_at(out, 1)),
                            lm_tensor_cdata(lm_model_at(base, 1)), 48), 0);
    lm_model_destroy(out);
    lm_plan_destroy(p);
    lm_lora_destroy(l1);
    lm_lora_destroy(l2);
    lm_model_destroy(base);
    lm_context_destroy(ctx);
}
END_TEST

/* base + scale B A as a dense model (in the base's dtypes). */
static lm_model *dense_model(lm_context *ctx, const lm_model *base,
                             const lm_lora *l)
{
    lm_model *m = NULL;
    ck_assert_ok(lm_model_create(ctx, &m));
    for (size_t k = 0; k < lm_model_count(base); k++) {
        const lm_tensor *b = lm_model_at(base, k);
        const char *name = lm_model_name_at(base, k);
        int64_t shape[2] = {lm_tensor_dim(b, 0),
                            lm_tensor_ndim(b) == 2 ? lm_tensor_dim(b, 1) : 1};
        lm_tensor *t = NULL;
        ck_assert_ok(lm_tensor_create(ctx, lm_tensor_dtype(b),
                                      lm_tensor_ndim(b), shape, &t));
        for (size_t i = 0; i < lm_tensor_numel(b); i++)
            ck_assert_ok(lm_tensor_set(
                t, i, tu_get(b, i) + ba(l, name, i / (size_t)shape[1],
                                        i % (size_t)shape[1])));
        ck_assert_ok(lm_model_add(m, name, t));
    }
    return m;
}

/* SVD-family strategies see an adapter's delta exactly as they see a
 * dense model's: the f32 q.weight results agree to rounding. Every rank
 * is at least tsv's k = 10 / 3 triplets per task: below it the extra
 * singular vectors span a null space, are arbitrary, and the polar factor
 * depends on them. */
START_TEST(svd_strategies_take_adapters)
{
    const char *methods[] = {"knots", "tsv", "iso_c"};
    for (size_t mi = 0; mi < 3; mi++) {
        lm_context *ctx = tu_context(2, 0);
        lm_model *base = base_model(ctx);
        lm_lora *l[3] = {adapter(ctx, 10, 4, 2.0), adapter(ctx, 20, 5, 0.5),
                         adapter(ctx, 30, 3, 1.0)};
        lm_model *dense[3], *out_l = NULL, *out_d = NULL;
        lm_plan *pl = NULL, *pd = NULL;
        ck_assert_ok(lm_plan_create(ctx, methods[mi], &pl));
        ck_assert_ok(lm_plan_create(ctx, methods[mi], &pd));
        lm_plan_set_base(pl, base);
        lm_plan_set_base(pd, base);
        for (int t = 0; t < 3; t++) {
            dense[t] = dense_model(ctx, base, l[t]);
            ck_assert_ok(lm_plan_add_lora(pl, l[t], 1.0));
            ck_assert_ok(lm_plan_add_model(pd, dense[t], 1.0));
        }
        ck_assert_ok(lm_plan_execute(pl, &out_l));
        ck_assert_ok(lm_plan_execute(pd, &out_d));
        const lm_tensor *a = lm_model_at(out_l, 0), *b = lm_model_at(out_d, 0);
        const lm_tensor *b0 = lm_model_at(base, 0);
        double worst = 0, scale = 0;
        for (size_t i = 0; i < lm_tensor_numel(a); i++) {
            worst = fmax(worst, fabs(tu_get(a, i) - tu_get(b, i)));
            scale = fmax(scale, fabs(tu_get(b, i) - tu_get(b0, i)));
        }
        ck_assert_msg(scale > 0.1 && worst <= 1e-5 * scale, "%s: %g of %g",
                      methods[mi], worst, scale);
        lm_model_destroy(out_l);
        lm_model_destroy(out_d);
        lm_plan_destroy(pl);
        lm_plan_destroy(pd);
        for (int t = 0; t < 3; t++) {
            lm_model_destroy(dense[t]);
            lm_lora_destroy(l[t]);
        }
        lm_model_destroy(base);
        lm_context_destroy(ctx);
    }
}
END_TEST

START_TEST(bad_adapters)
{
    lm_context *ctx = tu_context(1, 0);
    lm_lora *l = NULL;
    lm_lora_create(ctx, &l);
    lm_tensor *a = tu_random_tensor(ctx, LM_F32, 2, (int64_t[]){3, 10}, 1);
    lm_tensor *b = tu_random_tensor(ctx, LM_F32, 2, (int64_t[]){12, 4}, 2);
    ck_assert_status(lm_lora_add(l, "q.weight", a, b, 1.0), LM_ERR_SHAPE);
    lm_tensor_destroy(b);
    b = tu_random_tensor(ctx, LM_F32, 2, (int64_t[]){12, 3}, 2);
    ck_assert_status(lm_lora_add(l, "q.weight", a, b, NAN),
                     LM_ERR_OUT_OF_RANGE);
    ck_assert_ok(lm_lora_add(l, "q.weight", a, b, 1.0));
    lm_tensor *a2 = tu_random_tensor(ctx, LM_F32, 2, (int64_t[]){3, 10}, 1);
    lm_tensor *b2 = tu_random_tensor(ctx, LM_F32, 2, (int64_t[]){12, 3}, 2);
    ck_assert_status(lm_lora_add(l, "q.weight", a2, b2, 1.0), LM_ERR_EXISTS);
    ck_assert_uint_eq(lm_lora_count(l), 1);
    const char *target;
    double scale;
    ck_assert_ok(lm_lora_at(l, 0, &target, NULL, NULL, &scale));
    ck_assert_str_eq(target, "q.weight");
    ck_assert(scale == 1.0);
    ck_assert_status(lm_lora_at(l, 1, &target, NULL, NULL, NULL),
                     LM_ERR_OUT_OF_RANGE);
    ck_assert_status(lm_lora_find(l, "k.weight", NULL, NULL, NULL),
                     LM_ERR_NOT_FOUND);

    /* A target the base lacks, and a shape mismatch, name the tensor. */
    ck_assert_ok(lm_lora_add(l, "k.weight", a2, b2, 1.0));
    lm_model *base = base_model(ctx), *out = NULL;
    lm_plan *p = NULL;
    lm_plan_create(ctx, "task_arithmetic", &p);
    lm_plan_set_base(p, base);
    lm_plan_add_lora(p, l, 1.0);
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "'k.weight'"));
    lm_plan_destroy(p);

    lm_lora *l2 = NULL;
    lm_lora_create(ctx, &l2);
    lm_lora_add(l2, "v.weight",
                tu_random_tensor(ctx, LM_F32, 2, (int64_t[]){2, 10}, 1),
                tu_random_tensor(ctx, LM_F32, 2, (int64_t[]){9, 2}, 1), 1.0);
    lm_plan_create(ctx, "task_arithmetic", &p);
    lm_plan_set_base(p, base);
    lm_plan_add_lora(p, l2, 1.0);
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "'v.weight'"));
    ck_assert_ptr_null(out);
    lm_plan_destroy(p);
    lm_lora_destroy(l);
    lm_lora_destroy(l2);
    lm_lora_destroy(NULL);
    lm_model_destroy(base);
    lm_context_destroy(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("lora");
    TCase *tc = tcase_create("lora");
    tcase_add_test(tc, adapters_merge_like_dense_deltas);
    tcase_add_test(tc, bad_adapters);
    tcase_add_test(tc, svd_strategies_take_adapters);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
