/* ESM in a load-time merger without a base, on a tied embedding/head pair
 * whose statistics are recorded under the head's name (docs/methods/esm.md,
 * "Tied embeddings"). An execution routes the pair to the essential
 * subspace through the tie; a merger must not quietly take the TSV-M
 * route instead:
 * - a tie declared with lm_plan_tie is known without a base: the merger
 *   gives the execution's bytes;
 * - a tie found by shared storage is found among the base's tensors:
 *   without a base the merger refuses (LM_ERR_STATE naming the tensor and
 *   asking for the base), with one it gives the execution's bytes;
 * - statistics under an untied tensor need no tie: no base needed.
 * The first case checks the tie matters: without it the embedding's
 * merge differs. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "testutil.h"

#define T 3
#define V 24
#define D 6
#define ROWS 30

/* "embed" and "lm_head" [V, D] (one storage when `tied`, else an equal
 * copy), "proj" [D, D] and "norm" [D]. */
static lm_model *make_model(lm_context *ctx, bool tied, uint64_t seed)
{
    int64_t shape[2] = {V, D}, pshape[2] = {D, D}, nshape[1] = {D};
    lm_model *m;
    ck_assert_ok(lm_model_create(ctx, &m));
    lm_tensor *e = tu_random_tensor(ctx, LM_F32, 2, shape, seed);
    lm_tensor *head;
    if (tied)
        ck_assert_ok(lm_tensor_wrap(ctx, LM_F32, 2, shape, lm_tensor_data(e),
                                    lm_tensor_nbytes(e), &head));
    else
        ck_assert_ok(lm_tensor_clone(ctx, e, &head));
    ck_assert_ok(lm_model_add(m, "embed", e));
    ck_assert_ok(lm_model_add(m, "proj",
                              tu_random_tensor(ctx, LM_F32, 2, pshape,
                                               seed + 3)));
    ck_assert_ok(lm_model_add(m, "norm",
                              tu_random_tensor(ctx, LM_F32, 1, nshape,
                                               seed + 7)));
    ck_assert_ok(lm_model_add(m, "lm_head", head));
    return m;
}

struct fixture {
    lm_context *ctx;
    lm_model *base, *ft[T];
    lm_stats *stats;
};

/* Every task's inputs observed under `name` (NULL: no statistics). */
static void setup(struct fixture *f, bool tied, const char *name)
{
    f->ctx = tu_context(2, 5);
    f->base = make_model(f->ctx, tied, 1);
    for (int t = 0; t < T; t++)
        f->ft[t] = make_model(f->ctx, tied, 10 + 10 * (uint64_t)t);
    ck_assert_ok(lm_stats_create(f->ctx, &f->stats));
    float x[ROWS * D];
    for (int t = 0; name && t < T; t++) {
        for (size_t i = 0; i < ROWS * D; i++)
            x[i] = (float)((i * 2654435761u + (size_t)t * 131u) % 1000) /
                       500.0f - 1.0f;
        ck_assert_ok(lm_stats_observe(f->stats, (size_t)t, name, x, ROWS, D));
    }
}

static void teardown(struct fixture *f)
{
    for (int t = 0; t < T; t++)
        lm_model_destroy(f->ft[t]);
    lm_model_destroy(f->base);
    lm_stats_destroy(f->stats);
    lm_context_destroy(f->ctx);
}

static lm_plan *plan(struct fixture *f, bool base, bool declare)
{
    lm_plan *p = NULL;
    ck_assert_ok(lm_plan_create(f->ctx, "esm", &p));
    if (base)
        ck_assert_ok(lm_plan_set_base(p, f->base));
    for (int t = 0; t < T; t++)
        ck_assert_ok(lm_plan_add_model(p, f->ft[t], 1.0));
    ck_assert_ok(lm_plan_set_stats(p, f->stats));
    if (declare)
        ck_assert_ok(lm_plan_tie(p, "lm_head", "embed"));
    return p;
}

static lm_model *execute(struct fixture *f, bool declare)
{
    lm_plan *p = plan(f, true, declare);
    lm_model *out = NULL;
    ck_assert_ok(lm_plan_execute(p, &out));
    lm_plan_destroy(p);
    return out;
}

static bool same_tensor(const lm_model *a, const lm_model *b,
                        const char *name)
{
    lm_tensor *ta, *tb;
    ck_assert_ok(lm_model_find(a, name, &ta));
    ck_assert_ok(lm_model_find(b, name, &tb));
    return memcmp(lm_tensor_cdata(ta), lm_tensor_cdata(tb),
                  lm_tensor_nbytes(ta)) == 0;
}

START_TEST(declared_tie_needs_no_base)
{
    struct fixture f;
    setup(&f, false, "lm_head");
    lm_model *want = execute(&f, true);
    /* The tie routes the embedding through the head's statistics: without
     * it the embedding takes TSV-M and its bytes differ. */
    lm_model *untied = execute(&f, false);
    ck_assert(!same_tensor(want, untied, "embed"));
    ck_assert(same_tensor(want, untied, "proj"));
    lm_plan *p = plan(&f, false, true);
    lm_merger *m = NULL;
    ck_assert_ok(lm_merger_create(p, &m));
    tu_assert_merger_matches(f.ctx, m, f.base, want);
    lm_merger_destroy(m);
    lm_plan_destroy(p);
    lm_model_destroy(untied);
    lm_model_destroy(want);
    teardown(&f);
}
END_TEST

/* Statistics under either name of a storage-tied pair: the execution
 * merges the pair once, with them. */
static void storage_tie(const char *stats_name)
{
    struct fixture f;
    setup(&f, true, stats_name);
    lm_model *want = execute(&f, false);
    lm_plan *p = plan(&f, false, false);
    lm_merger *m = NULL;
    ck_assert_status(lm_merger_create(p, &m), LM_ERR_STATE);
    ck_assert_ptr_null(m);
    const char *msg = lm_context_error(f.ctx);
    char quoted[32];
    snprintf(quoted, sizeof(quoted), "'%s'", stats_name);
    ck_assert_msg(strstr(msg, quoted) && strstr(msg, "lm_plan_set_base"),
                  "%s", msg);
    lm_plan_destroy(p);
    p = plan(&f, true, false);
    ck_assert_ok(lm_merger_create(p, &m));
    tu_assert_merger_matches(f.ctx, m, f.base, want);
    lm_merger_destroy(m);
    lm_plan_destroy(p);
    lm_model_destroy(want);
    teardown(&f);
}

START_TEST(storage_tie_head_statistics_need_the_base)
{
    storage_tie("lm_head");
}
END_TEST

START_TEST(storage_tie_embedding_statistics_need_the_base)
{
    storage_tie("embed");
}
END_TEST

START_TEST(untied_statistics_need_no_base)
{
    struct fixture f;
    setup(&f, true, "proj");
    lm_plan *p = plan(&f, false, false);
    lm_merger *m = NULL;
    ck_assert_ok(lm_merger_create(p, &m));
    lm_merger_destroy(m);
    lm_plan_destroy(p);
    teardown(&f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("esm_tied_merger");
    TCase *tc = tcase_create("esm_tied_merger");
    tcase_add_test(tc, declared_tie_needs_no_base);
    tcase_add_test(tc, storage_tie_head_statistics_need_the_base);
    tcase_add_test(tc, storage_tie_embedding_statistics_need_the_base);
    tcase_add_test(tc, untied_statistics_need_no_base);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
