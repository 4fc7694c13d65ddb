/* Context creation, options ABI, errors, allocator and logging. */
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "core/scratch.h"
#include "testutil.h"

START_TEST(defaults)
{
    lm_context *ctx = NULL;
    ck_assert_ok(lm_context_create(NULL, &ctx));
    ck_assert_int_ge(lm_context_threads(ctx), 1);
    ck_assert_uint_eq(lm_context_seed(ctx), 0);
    ck_assert_str_eq(lm_context_error(ctx), "");
    ck_assert_int_eq(lm_context_error_status(ctx), LM_OK);
    lm_context_destroy(ctx);
    lm_context_destroy(NULL);
}
END_TEST

START_TEST(options_are_read)
{
    lm_context_options o = LM_CONTEXT_OPTIONS_INIT;
    o.n_threads = 3;
    o.seed = 42;
    lm_context *ctx = NULL;
    ck_assert_ok(lm_context_create(&o, &ctx));
    ck_assert_int_eq(lm_context_threads(ctx), 3);
    ck_assert_uint_eq(lm_context_seed(ctx), 42);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(bad_options)
{
    lm_context *ctx = NULL;
    ck_assert_status(lm_context_create(NULL, NULL), LM_ERR_INVALID_ARGUMENT);
    lm_context_options o = LM_CONTEXT_OPTIONS_INIT;
    o.n_threads = -1;
    ck_assert_status(lm_context_create(&o, &ctx), LM_ERR_INVALID_ARGUMENT);
    o = (lm_context_options)LM_CONTEXT_OPTIONS_INIT;
    o.struct_size = 4;
    ck_assert_status(lm_context_create(&o, &ctx), LM_ERR_ABI);
    ck_assert_ptr_null(ctx);
}
END_TEST

/* A caller built against a newer header with extra zero fields works;
 * non-zero unknown fields are refused. */
START_TEST(newer_options_struct)
{
    struct {
        lm_context_options base;
        uint64_t future;
    } big;
    memset(&big, 0, sizeof(big));
    big.base = (lm_context_options)LM_CONTEXT_OPTIONS_INIT;
    big.base.struct_size = sizeof(big);
    big.base.n_threads = 2;
    lm_context *ctx = NULL;
    ck_assert_ok(lm_context_create(&big.base, &ctx));
    ck_assert_int_eq(lm_context_threads(ctx), 2);
    lm_context_destroy(ctx);
    big.future = 1;
    ck_assert_status(lm_context_create(&big.base, &ctx), LM_ERR_ABI);
}
END_TEST

START_TEST(error_message_set_copy_clear)
{
    lm_context *ctx = tu_context(1, 0);
    ck_assert_int_eq(lm_context_set_error(ctx, LM_ERR_FORMAT, "bad %s %d",
                                          "thing", 7),
                     LM_ERR_FORMAT);
    ck_assert_str_eq(lm_context_error(ctx), "bad thing 7");
    ck_assert_int_eq(lm_context_error_status(ctx), LM_ERR_FORMAT);
    char buf[5];
    ck_assert_uint_eq(lm_context_copy_error(ctx, buf, sizeof(buf)), 11);
    ck_assert_str_eq(buf, "bad ");
    lm_context_clear_error(ctx);
    ck_assert_str_eq(lm_context_error(ctx), "");
    ck_assert_int_eq(lm_context_error_status(ctx), LM_OK);
    lm_context_destroy(ctx);
}
END_TEST

struct counting_alloc {
    int allocs, frees;
};

static void *count_alloc(size_t n, void *user)
{
    ((struct counting_alloc *)user)->allocs++;
    return malloc(n);
}

static void count_free(void *p, void *user)
{
    if (p)
        ((struct counting_alloc *)user)->frees++;
    free(p);
}

/* A context whose allocations are counted in *c (which must outlive it;
 * the allocator itself is copied at create). */
static lm_context *counting_context(struct counting_alloc *c)
{
    *c = (struct counting_alloc){0, 0};
    lm_allocator a = {sizeof(a), count_alloc, count_free, c};
    lm_context_options o = LM_CONTEXT_OPTIONS_INIT;
    o.allocator = &a;
    lm_context *ctx = NULL;
    ck_assert_ok(lm_context_create(&o, &ctx));
    return ctx;
}

START_TEST(custom_allocator_used_and_balanced)
{
    struct counting_alloc c;
    lm_context *ctx = counting_context(&c);
    int64_t shape[2] = {3, 4};
    lm_tensor *t = NULL;
    ck_assert_ok(lm_tensor_create(ctx, LM_F32, 2, shape, &t));
    lm_tensor_destroy(t);
    lm_context_destroy(ctx);
    ck_assert_int_gt(c.allocs, 2);
    ck_assert_int_eq(c.allocs, c.frees);
}
END_TEST

/* Work buffers kept by the context (core/scratch.h): a kept buffer
 * large enough is handed out again without an allocation, at most
 * LM__SCRATCH_SLOTS are kept, a very large one is freed at once, and
 * destroying the context frees what is kept. */
START_TEST(scratch_buffers_reused_and_bounded)
{
    struct counting_alloc c;
    lm_context *ctx = counting_context(&c);
    int base = c.allocs, freed = c.frees;
    size_t got, got2;
    char *p = lm__scratch_take(ctx, 1000, &got);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_ge(got, 1000);
    memset(p, 1, got);
    lm__scratch_give(ctx, p, got);
    ck_assert_ptr_eq(lm__scratch_take(ctx, 800, &got2), p); /* kept */
    ck_assert_uint_eq(got2, got);
    ck_assert_int_eq(c.allocs, base + 1);
    char *q = lm__scratch_take(ctx, 5000, &got2); /* none kept fits */
    ck_assert_ptr_ne(q, p);
    ck_assert_int_eq(c.allocs, base + 2);
    lm__scratch_give(ctx, p, got);
    lm__scratch_give(ctx, q, got2);
    ck_assert_int_eq(c.frees, freed);
    /* A request the kept ones both fit takes the smaller. */
    ck_assert_ptr_eq(lm__scratch_take(ctx, 10, &got), p);
    lm__scratch_give(ctx, p, got);
    /* Two statements: within one call, g could be read before the take
     * sets it (the order of evaluating arguments is unspecified). */
    size_t huge = (size_t)64 << 20, g;
    void *h = lm__scratch_take(ctx, huge, &g);
    lm__scratch_give(ctx, h, g);
    ck_assert_int_eq(c.frees, freed + 1); /* not kept */
    void *many[LM__SCRATCH_SLOTS + 1];
    size_t sizes[LM__SCRATCH_SLOTS + 1];
    for (size_t i = 0; i < LM__SCRATCH_SLOTS + 1; i++)
        many[i] = lm__scratch_take(ctx, 100, &sizes[i]);
    for (size_t i = 0; i < LM__SCRATCH_SLOTS + 1; i++)
        lm__scratch_give(ctx, many[i], sizes[i]);
    ck_assert_int_eq((c.allocs - base) - (c.frees - freed),
                     LM__SCRATCH_SLOTS);
    lm_context_destroy(ctx);
    ck_assert_int_eq(c.allocs, c.frees);
}
END_TEST

/* lm__workspace_alloc (core/workspace.c): outside a run a freed block goes
 * back to the allocator at once; during one, a block of 1 MiB or more
 * waits and serves a later request it holds (the same pointer, not a
 * request of less than half its size), at most 8 wait, and the run's end
 * frees them: the allocator's counts balance. */
START_TEST(workspace_reused_during_a_run_and_released)
{
    struct counting_alloc c;
    lm_context *ctx = counting_context(&c);
    const size_t mib = (size_t)1 << 20;
    int outstanding = c.allocs - c.frees; /* the context's own */
    int frees = c.frees;
    char *p = lm__workspace_alloc(ctx, 2 * mib);
    memset(p, 1, 2 * mib);
    lm__workspace_free(ctx, p);
    ck_assert_int_eq(c.frees, frees + 1); /* no run: freed */

    lm__workspace_begin(ctx);
    p = lm__workspace_alloc(ctx, 2 * mib);
    memset(p, 1, 2 * mib);
    int allocs = c.allocs;
    frees = c.frees;
    lm__workspace_free(ctx, p);
    ck_assert_int_eq(c.frees, frees); /* kept */
    char *small = lm__workspace_alloc(ctx, mib - 1); /* below 1 MiB: fresh */
    ck_assert_ptr_ne(small, p);
    char *q = lm__workspace_alloc(ctx, 3 * mib / 2); /* fits: reused */
    ck_assert_ptr_eq(q, p);
    ck_assert_int_eq(c.allocs, allocs + 1);
    memset(q, 2, 3 * mib / 2);
    lm__workspace_free(ctx, q);
    char *big = lm__workspace_alloc(ctx, 4 * mib); /* too small: fresh */
    ck_assert_ptr_ne(big, p);
    char *half = lm__workspace_alloc(ctx, mib / 2 + mib / 4); /* < half */
    ck_assert_ptr_ne(half, p);
    lm__workspace_free(ctx, small);
    lm__workspace_free(ctx, big);
    lm__workspace_free(ctx, half);
    char *many[10];
    for (int i = 0; i < 10; i++)
        many[i] = lm__workspace_alloc(ctx, mib + (size_t)i);
    frees = c.frees;
    for (int i = 0; i < 10; i++)
        lm__workspace_free(ctx, many[i]);
    /* many[0] took p's 2 MiB block (1 MiB is half of it), so only big
     * waits when the 10 return: 7 of them join it, 3 are freed. */
    ck_assert_ptr_eq(many[0], p);
    ck_assert_int_eq(c.frees, frees + 3);
    lm__workspace_end(ctx); /* the 8 waiting blocks freed */
    ck_assert_int_eq(c.allocs - c.frees, outstanding);
    lm_context_destroy(ctx);
    ck_assert_int_eq(c.allocs, c.frees);
}
END_TEST

static void *fail_alloc(size_t n, void *user)
{
    (void)n;
    (void)user;
    return NULL;
}

START_TEST(failing_allocator)
{
    lm_allocator a = {sizeof(a), fail_alloc, count_free, NULL};
    lm_context_options o = LM_CONTEXT_OPTIONS_INIT;
    o.allocator = &a;
    lm_context *ctx = NULL;
    ck_assert_status(lm_context_create(&o, &ctx), LM_ERR_OUT_OF_MEMORY);
    lm_allocator incomplete = {sizeof(a), NULL, count_free, NULL};
    o.allocator = &incomplete;
    ck_assert_status(lm_context_create(&o, &ctx), LM_ERR_INVALID_ARGUMENT);
}
END_TEST

struct log_record {
    int calls;
    int level;
    char last[256];
};

static void record_log(int level, const char *msg, void *user)
{
    struct log_record *r = user;
    r->calls++;
    r->level = level;
    strncpy(r->last, msg, sizeof(r->last) - 1);
}

START_TEST(log_callback_and_level)
{
    struct log_record r;
    memset(&r, 0, sizeof(r));
    lm_context_options o = LM_CONTEXT_OPTIONS_INIT;
    o.log = record_log;
    o.log_user = &r;
    o.log_level = LM_LOG_INFO;
    lm_context *ctx = NULL;
    ck_assert_ok(lm_context_create(&o, &ctx));
    lm_log(ctx, LM_LOG_INFO, "hello %d", 1);
    ck_assert_int_eq(r.calls, 1);
    ck_assert_str_eq(r.last, "hello 1");
    lm_log(ctx, LM_LOG_DEBUG, "dropped");
    ck_assert_int_eq(r.calls, 1);
    /* Errors are logged too. */
    lm_context_set_error(ctx, LM_ERR_IO, "disk on fire");
    ck_assert_int_eq(r.calls, 2);
    ck_assert_int_eq(r.level, LM_LOG_ERROR);
    ck_assert_str_eq(r.last, "disk on fire");
    lm_context_destroy(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("context");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, defaults);
    tcase_add_test(tc, options_are_read);
    tcase_add_test(tc, bad_options);
    tcase_add_test(tc, newer_options_struct);
    tcase_add_test(tc, error_message_set_copy_clear);
    tcase_add_test(tc, custom_allocator_used_and_balanced);
    tcase_add_test(tc, failing_allocator);
    tcase_add_test(tc, scratch_buffers_reused_and_bounded);
    tcase_add_test(tc, workspace_reused_during_a_run_and_released);
    tcase_add_test(tc, log_callback_and_level);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
