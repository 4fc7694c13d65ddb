/* Tied tensors (lm_plan_tie and storage shared in memory): a tied
 * lm_head is merged once, as the embedding it is tied to, so the two
 * outputs are byte-identical even under DARE, whose masks are drawn per
 * tensor name; untied copies keep their own merges. */
#include <stdbool.h>
#include <string.h>

#include "testutil.h"

#define V 12
#define D 5

struct fixture {
    lm_context *ctx;
    lm_model *base, *ft[2];
    lm_tensor *shared[3]; /* the embedding storage of base, ft0, ft1 */
};

/* A model holding "embed" and "lm_head" (sharing storage when `tied`,
 * else an equal copy) and "norm". */
static lm_model *lm_model_with(struct fixture *f, size_t which, bool tied,
                               uint64_t seed)
{
    int64_t shape[2] = {V, D}, nshape[1] = {D};
    lm_model *m;
    ck_assert_ok(lm_model_create(f->ctx, &m));
    lm_tensor *e = tu_random_tensor(f->ctx, LM_F32, 2, shape, seed);
    f->shared[which] = e;
    lm_tensor *head;
    if (tied)
        ck_assert_ok(lm_tensor_wrap(f->ctx, LM_F32, 2, shape,
                                    lm_tensor_data(e), lm_tensor_nbytes(e),
                                    &head));
    else
        ck_assert_ok(lm_tensor_clone(f->ctx, e, &head));
    ck_assert_ok(lm_model_add(m, "embed", e));
    ck_assert_ok(lm_model_add(m, "norm",
                              tu_random_tensor(f->ctx, LM_F32, 1, nshape,
                                               seed + 7)));
    ck_assert_ok(lm_model_add(m, "lm_head", head));
    return m;
}

static void fixture_init(struct fixture *f, bool tied0, bool tied1,
                         bool tied2)
{
    f->ctx = tu_context(2, 9);
    f->base = lm_model_with(f, 0, tied0, 1);
    f->ft[0] = lm_model_with(f, 1, tied1, 2);
    f->ft[1] = lm_model_with(f, 2, tied2, 3);
}

static void fixture_fini(struct fixture *f)
{
    lm_model_destroy(f->ft[0]);
    lm_model_destroy(f->ft[1]);
    lm_model_destroy(f->base);
    lm_context_destroy(f->ctx);
}

static lm_plan *dare_plan(struct fixture *f)
{
    lm_plan *p;
    ck_assert_ok(lm_plan_create(f->ctx, "dare_linear", &p));
    ck_assert_ok(lm_plan_set_float(p, "density", 0.5));
    ck_assert_ok(lm_plan_set_base(p, f->base));
    ck_assert_ok(lm_plan_add_model(p, f->ft[0], 1.0));
    ck_assert_ok(lm_plan_add_model(p, f->ft[1], 0.5));
    return p;
}

static bool same_bytes(const lm_model *m, const char *a, const char *b)
{
    lm_tensor *ta, *tb;
    ck_assert_ok(lm_model_find(m, a, &ta));
    ck_assert_ok(lm_model_find(m, b, &tb));
    return lm_tensor_nbytes(ta) == lm_tensor_nbytes(tb) &&
           memcmp(lm_tensor_cdata(ta), lm_tensor_cdata(tb),
                  lm_tensor_nbytes(ta)) == 0;
}

START_TEST(shared_storage_is_tied)
{
    struct fixture f;
    fixture_init(&f, true, true, true);
    lm_plan *p = dare_plan(&f);
    lm_model *out;
    ck_assert_ok(lm_plan_execute(p, &out));
    ck_assert(same_bytes(out, "embed", "lm_head"));
    /* The load-time merger agrees, lm_head included. */
    lm_merger *m;
    ck_assert_ok(lm_merger_create(p, &m));
    tu_assert_merger_matches(f.ctx, m, f.base, out);
    lm_merger_destroy(m);
    lm_model_destroy(out);
    lm_plan_destroy(p);
    fixture_fini(&f);
}
END_TEST

/* One model stores an untied copy: not a tie, so DARE draws two masks
 * and the outputs differ (which is what a tie prevents). */
START_TEST(untied_copy_is_merged_on_its_own)
{
    struct fixture f;
    fixture_init(&f, true, true, false);
    lm_plan *p = dare_plan(&f);
    lm_model *out;
    ck_assert_ok(lm_plan_execute(p, &out));
    ck_assert(!same_bytes(out, "embed", "lm_head"));
    lm_model_destroy(out);
    lm_plan_destroy(p);
    fixture_fini(&f);
}
END_TEST

START_TEST(explicit_tie)
{
    struct fixture f;
    fixture_init(&f, false, false, false);
    lm_plan *p = dare_plan(&f);
    lm_model *untied;
    ck_assert_ok(lm_plan_execute(p, &untied));
    ck_assert_ok(lm_plan_tie(p, "lm_head", "embed"));
    lm_model *out;
    ck_assert_ok(lm_plan_execute(p, &out));
    ck_assert(same_bytes(out, "embed", "lm_head"));
    /* ... and the embedding itself is merged exactly as without the tie. */
    lm_tensor *a, *b;
    ck_assert_ok(lm_model_find(out, "embed", &a));
    ck_assert_ok(lm_model_find(untied, "embed", &b));
    ck_assert_mem_eq(lm_tensor_cdata(a), lm_tensor_cdata(b),
                     lm_tensor_nbytes(a));
    /* A merger without a base follows the tie by name. */
    lm_plan *q;
    ck_assert_ok(lm_plan_create(f.ctx, "dare_linear", &q));
    ck_assert_ok(lm_plan_set_float(q, "density", 0.5));
    ck_assert_ok(lm_plan_add_model(q, f.ft[0], 1.0));
    ck_assert_ok(lm_plan_add_model(q, f.ft[1], 0.5));
    ck_assert_ok(lm_plan_tie(q, "lm_head", "embed"));
    lm_merger *m;
    ck_assert_ok(lm_merger_create(q, &m));
    lm_tensor *head_in, *head_out;
    ck_assert_ok(lm_model_find(f.base, "lm_head", &head_in));
    ck_assert_ok(lm_tensor_clone(f.ctx, head_in, &head_out));
    ck_assert_ok(lm_merger_apply_to(m, "lm_head", head_in, head_out));
    ck_assert_mem_eq(lm_tensor_cdata(head_out), lm_tensor_cdata(a),
                     lm_tensor_nbytes(a));
    lm_tensor_destroy(head_out);
    lm_merger_destroy(m);
    lm_plan_destroy(q);
    lm_model_destroy(out);
    lm_model_destroy(untied);
    lm_plan_destroy(p);
    fixture_fini(&f);
}
END_TEST

START_TEST(bad_ties)
{
    struct fixture f;
    fixture_init(&f, false, false, false);
    lm_plan *p = dare_plan(&f);
    lm_model *out = NULL;
    ck_assert_status(lm_plan_tie(p, "embed", "embed"),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_ok(lm_plan_tie(p, "lm_head", "embed"));
    ck_assert_status(lm_plan_tie(p, "lm_head", "norm"), LM_ERR_EXISTS);
    ck_assert_ok(lm_plan_tie(p, "embed", "lm_head")); /* a cycle */
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "cycle"));
    lm_plan_destroy(p);

    p = dare_plan(&f);
    ck_assert_ok(lm_plan_tie(p, "lm_head", "norm"));
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "norm"));
    lm_plan_destroy(p);

    p = dare_plan(&f);
    ck_assert_ok(lm_plan_tie(p, "output.weight", "embed"));
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(lm_context_error(f.ctx), "output.weight"));
    ck_assert_ptr_null(out);
    lm_plan_destroy(p);
    fixture_fini(&f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ties");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, shared_storage_is_tied);
    tcase_add_test(tc, untied_copy_is_merged_on_its_own);
    tcase_add_test(tc, explicit_tie);
    tcase_add_test(tc, bad_ties);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
