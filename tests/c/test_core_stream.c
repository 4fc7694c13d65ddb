/* Sinks, lazy (host-callback) sources, progress, cancellation and the
 * output dtype override. */
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define N_TENSORS 24

static lm_model *make_model(lm_context *ctx, uint64_t seed)
{
    lm_model *m = NULL;
    ck_assert_ok(lm_model_create(ctx, &m));
    char name[32];
    for (int i = 0; i < N_TENSORS; i++) {
        snprintf(name, sizeof(name), "t%02d", i);
        int64_t shape[2] = {5 + i % 4, 3 + i % 7};
        tu_add_random(ctx, m, name, LM_F32, 2, shape, seed * 100 + (uint64_t)i);
    }
    return m;
}

/* A sink that copies each tensor into its own malloc'd buffer. */
struct collect {
    lm_sink_vtable vt;
    size_t n;
    lm_tensor_desc desc[N_TENSORS];
    void *data[N_TENSORS];
    int writes[N_TENSORS];
    int begins, ends, last_commit;
    int fail_at; /* -1: never */
    bool use_buffer;
    pthread_mutex_t lock;
};

static lm_status c_begin(const lm_tensor_desc *const *o, size_t n,
                         void *user)
{
    struct collect *c = user;
    c->begins++;
    c->n = n;
    for (size_t i = 0; i < n; i++) {
        /* Descriptors are versioned: this test's header describes them. */
        ck_assert_uint_eq(o[i]->struct_size, sizeof(lm_tensor_desc));
        c->desc[i] = *o[i];
        c->data[i] = calloc(1, o[i]->nbytes ? o[i]->nbytes : 1);
    }
    return LM_OK;
}

static void *c_buffer(size_t index, void *user)
{
    struct collect *c = user;
    return c->use_buffer ? c->data[index] : NULL;
}

static lm_status c_write(size_t index, const void *data, size_t nbytes,
                         void *user)
{
    struct collect *c = user;
    if ((int)index == c->fail_at)
        return LM_ERR_IO;
    pthread_mutex_lock(&c->lock);
    c->writes[index]++;
    pthread_mutex_unlock(&c->lock);
    ck_assert_uint_eq(nbytes, c->desc[index].nbytes);
    if (data != c->data[index])
        memcpy(c->data[index], data, nbytes);
    return LM_OK;
}

static lm_status c_end(int commit, void *user)
{
    struct collect *c = user;
    c->ends++;
    c->last_commit = commit;
    return LM_OK;
}

static void collect_init(struct collect *c, bool use_buffer)
{
    memset(c, 0, sizeof(*c));
    c->vt.struct_size = sizeof(c->vt);
    c->vt.begin = c_begin;
    c->vt.buffer = c_buffer;
    c->vt.write = c_write;
    c->vt.end = c_end;
    c->vt.user = c;
    c->fail_at = -1;
    c->use_buffer = use_buffer;
    pthread_mutex_init(&c->lock, NULL);
}

static void collect_free(struct collect *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->data[i]);
    pthread_mutex_destroy(&c->lock);
}

static lm_plan *ta_plan(lm_context *ctx, lm_model *base, lm_model *a,
                        lm_model *b)
{
    lm_plan *p = NULL;
    ck_assert_ok(lm_plan_create(ctx, "task_arithmetic", &p));
    lm_plan_set_float(p, "lambda", 0.7);
    lm_plan_set_base(p, base);
    lm_plan_add_model(p, a, 1.0);
    lm_plan_add_model(p, b, 0.5);
    return p;
}

/* The sink sees the same bytes as the in-memory result, both with its own
 * buffers and with library scratch buffers, on 3 threads. */
START_TEST(sink_matches_memory_result)
{
    lm_context *ctx = tu_context(3, 0);
    lm_model *base = make_model(ctx, 1), *a = make_model(ctx, 2),
             *b = make_model(ctx, 3);
    lm_plan *p = ta_plan(ctx, base, a, b);
    lm_model *mem = NULL;
    ck_assert_ok(lm_plan_execute(p, &mem));
    for (int use_buffer = 0; use_buffer < 2; use_buffer++) {
        struct collect c;
        collect_init(&c, use_buffer);
        ck_assert_ok(lm_plan_execute_to(p, &c.vt));
        ck_assert_int_eq(c.begins, 1);
        ck_assert_int_eq(c.ends, 1);
        ck_assert_int_eq(c.last_commit, 1);
        ck_assert_uint_eq(c.n, N_TENSORS);
        for (size_t i = 0; i < N_TENSORS; i++) {
            ck_assert_int_eq(c.writes[i], 1);
            ck_assert_str_eq(c.desc[i].name, lm_model_name_at(base, i));
            const lm_tensor *t = lm_model_at(mem, i);
            ck_assert_int_eq(memcmp(c.data[i], lm_tensor_cdata(t),
                                    lm_tensor_nbytes(t)), 0);
        }
        collect_free(&c);
    }
    lm_model_destroy(mem);
    lm_plan_destroy(p);
    lm_model_destroy(base);
    lm_model_destroy(a);
    lm_model_destroy(b);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(sink_failure_rolls_back)
{
    lm_context *ctx = tu_context(2, 0);
    lm_model *base = make_model(ctx, 1), *a = make_model(ctx, 2),
             *b = make_model(ctx, 3);
    lm_plan *p = ta_plan(ctx, base, a, b);
    struct collect c;
    collect_init(&c, false);
    c.fail_at = 5;
    ck_assert_status(lm_plan_execute_to(p, &c.vt), LM_ERR_IO);
    ck_assert_int_eq(c.ends, 1);
    ck_assert_int_eq(c.last_commit, 0);
    collect_free(&c);

    lm_sink_vtable bad = c.vt;
    bad.struct_size = 8;
    ck_assert_status(lm_plan_execute_to(p, &bad), LM_ERR_ABI);
    bad = c.vt;
    bad.write = NULL;
    ck_assert_status(lm_plan_execute_to(p, &bad), LM_ERR_INVALID_ARGUMENT);
    lm_plan_destroy(p);
    lm_model_destroy(base);
    lm_model_destroy(a);
    lm_model_destroy(b);
    lm_context_destroy(ctx);
}
END_TEST

struct progress_log {
    size_t calls, last_done, total;
    uint64_t last_bytes, bytes_total;
    size_t cancel_after; /* 0: never */
    bool monotone;
};

static int on_progress(size_t done, size_t total, uint64_t bytes,
                       uint64_t bytes_total, void *user)
{
    struct progress_log *l = user;
    if (done != l->last_done + 1 || bytes <= l->last_bytes)
        l->monotone = false;
    l->calls++;
    l->last_done = done;
    l->last_bytes = bytes;
    l->total = total;
    l->bytes_total = bytes_total;
    return l->cancel_after && done >= l->cancel_after;
}

START_TEST(progress_and_cancel)
{
    lm_context *ctx = tu_context(2, 0);
    lm_model *base = make_model(ctx, 1), *a = make_model(ctx, 2),
             *b = make_model(ctx, 3);
    lm_plan *p = ta_plan(ctx, base, a, b);
    struct progress_log l;
    memset(&l, 0, sizeof(l));
    l.monotone = true;
    ck_assert_ok(lm_plan_set_progress(p, on_progress, &l));
    lm_model *out = NULL;
    ck_assert_ok(lm_plan_execute(p, &out));
    ck_assert(l.monotone);
    ck_assert_uint_eq(l.calls, N_TENSORS);
    ck_assert_uint_eq(l.total, N_TENSORS);
    ck_assert_uint_eq(l.last_bytes, l.bytes_total);
    uint64_t want = 0;
    for (size_t i = 0; i < N_TENSORS; i++)
        want += lm_tensor_nbytes(lm_model_at(out, i));
    ck_assert_uint_eq(l.bytes_total, want);
    lm_model_destroy(out);

    memset(&l, 0, sizeof(l));
    l.monotone = true;
    l.cancel_after = 3;
    struct collect c;
    collect_init(&c, true);
    ck_assert_status(lm_plan_execute_to(p, &c.vt), LM_ERR_CANCELLED);
    ck_assert_int_eq(c.last_commit, 0);
    ck_assert_uint_lt(l.calls, N_TENSORS);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "cancelled"));
    collect_free(&c);
    out = NULL;
    ck_assert_status(lm_plan_execute(p, &out), LM_ERR_CANCELLED);
    ck_assert_ptr_null(out);
    lm_plan_destroy(p);
    lm_model_destroy(base);
    lm_model_destroy(a);
    lm_model_destroy(b);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(output_dtype_override)
{
    lm_context *ctx = tu_context(2, 0);
    lm_model *base = make_model(ctx, 1), *a = make_model(ctx, 2),
             *b = make_model(ctx, 3);
    lm_plan *p = ta_plan(ctx, base, a, b);
    lm_model *f32 = NULL, *bf16 = NULL;
    ck_assert_ok(lm_plan_execute(p, &f32));
    ck_assert_status(lm_plan_set_output_dtype(p, (lm_dtype)42), LM_ERR_DTYPE);
    ck_assert_ok(lm_plan_set_output_dtype(p, LM_BF16));
    ck_assert_ok(lm_plan_execute(p, &bf16));
    for (size_t i = 0; i < N_TENSORS; i++) {
        const lm_tensor *x = lm_model_at(f32, i), *y = lm_model_at(bf16, i);
        ck_assert_int_eq(lm_tensor_dtype(y), LM_BF16);
        const float *xf = lm_tensor_cdata(x);
        const uint16_t *yb = lm_tensor_cdata(y);
        for (size_t j = 0; j < lm_tensor_numel(x); j++)
            ck_assert_uint_eq(yb[j], lm_f32_to_bf16(xf[j]));
    }
    lm_model_destroy(f32);
    lm_model_destroy(bf16);
    lm_plan_destroy(p);
    lm_model_destroy(base);
    lm_model_destroy(a);
    lm_model_destroy(b);
    lm_context_destroy(ctx);
}
END_TEST

/* Host-provided tensors: bytes produced by a callback on demand. */
struct host_source {
    const lm_model *backing; /* where the callback gets its bytes */
    int reads;
    pthread_mutex_t lock;
    const char *fail_name;
    lm_context *explain; /* set: a failure says why on this context */
};

static lm_status host_read(const char *name, void *dst, size_t nbytes,
                           void *user)
{
    struct host_source *h = user;
    if (h->fail_name && strcmp(name, h->fail_name) == 0)
        return h->explain ? lm_context_set_error(h->explain, LM_ERR_IO,
                                                 "shard 3 vanished at "
                                                 "offset %d", 4096)
                          : LM_ERR_IO;
    lm_tensor *t;
    if (lm_model_find(h->backing, name, &t) != LM_OK ||
        lm_tensor_nbytes(t) != nbytes)
        return LM_ERR_INTERNAL;
    memcpy(dst, lm_tensor_cdata(t), nbytes);
    pthread_mutex_lock(&h->lock);
    h->reads++;
    pthread_mutex_unlock(&h->lock);
    return LM_OK;
}

static lm_model *lazy_copy(lm_context *ctx, const lm_model *m,
                           struct host_source *h)
{
    lm_model *lazy = NULL;
    ck_assert_ok(lm_model_create(ctx, &lazy));
    for (size_t i = 0; i < lm_model_count(m); i++) {
        const lm_tensor *t = lm_model_at(m, i);
        ck_assert_ok(lm_model_add_lazy(lazy, lm_model_name_at(m, i),
                                       lm_tensor_dtype(t), lm_tensor_ndim(t),
                                       lm_tensor_shape(t), host_read, h));
    }
    return lazy;
}

START_TEST(lazy_sources_match_memory)
{
    lm_context *ctx = tu_context(2, 0);
    lm_model *base = make_model(ctx, 1), *a = make_model(ctx, 2),
             *b = make_model(ctx, 3);
    /* An f16 variant checks the in-place widening path too. */
    struct host_source hb = {base, 0, PTHREAD_MUTEX_INITIALIZER, NULL, NULL};
    struct host_source ha = {a, 0, PTHREAD_MUTEX_INITIALIZER, NULL, NULL};
    lm_model *lazy_base = lazy_copy(ctx, base, &hb);
    lm_model *lazy_a = lazy_copy(ctx, a, &ha);
    lm_model *want = NULL, *got = NULL;
    lm_plan *p = ta_plan(ctx, base, a, b);
    ck_assert_ok(lm_plan_execute(p, &want));
    lm_plan_destroy(p);
    p = ta_plan(ctx, lazy_base, lazy_a, b);
    ck_assert_ok(lm_plan_execute(p, &got));
    ck_assert_int_eq(hb.reads, N_TENSORS);
    ck_assert_int_eq(ha.reads, N_TENSORS);
    for (size_t i = 0; i < N_TENSORS; i++)
        ck_assert_int_eq(memcmp(lm_tensor_cdata(lm_model_at(want, i)),
                                lm_tensor_cdata(lm_model_at(got, i)),
                                lm_tensor_nbytes(lm_model_at(want, i))),
                         0);
    /* Element access on a lazy tensor is refused, not a crash. */
    double v;
    ck_assert_status(lm_tensor_get(lm_model_at(lazy_a, 0), 0, &v),
                     LM_ERR_STATE);
    ck_assert_ptr_null(lm_tensor_data(lm_model_at(lazy_a, 0)));
    /* A failing callback names the tensor. */
    ha.fail_name = "t07";
    lm_model *none = NULL;
    ck_assert_status(lm_plan_execute(p, &none), LM_ERR_IO);
    ck_assert_ptr_null(none);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "'t07'"));
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "input/output error"));
    /* The host's own message (lm_context_set_error in the callback) is
     * kept, after the tensor's name. */
    ha.explain = ctx;
    ck_assert_status(lm_plan_execute(p, &none), LM_ERR_IO);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "'t07'"));
    ck_assert_ptr_nonnull(
        strstr(lm_context_error(ctx), "shard 3 vanished at offset 4096"));
    ha.explain = NULL;
    /* Task vectors accept lazy tensors too. */
    ha.fail_name = NULL;
    lm_task_vector *tv = NULL;
    ck_assert_ok(lm_task_vector_create(ctx, lazy_base, lazy_a, &tv));
    const lm_tensor *d;
    lm_task_vector_find(tv, "t03", &d);
    lm_tensor *bt, *at;
    lm_model_find(base, "t03", &bt);
    lm_model_find(a, "t03", &at);
    ck_assert(tu_get(d, 2) == (double)(float)(tu_get(at, 2) - tu_get(bt, 2)));
    lm_task_vector_destroy(tv);
    lm_plan_destroy(p);
    lm_model_destroy(want);
    lm_model_destroy(got);
    lm_model_destroy(lazy_base);
    lm_model_destroy(lazy_a);
    lm_model_destroy(base);
    lm_model_destroy(a);
    lm_model_destroy(b);
    lm_context_destroy(ctx);
}
END_TEST

/* Lazy f16/bf16/f64 tensors are widened correctly. */
START_TEST(lazy_narrow_dtypes)
{
    lm_context *ctx = tu_context(1, 0);
    lm_dtype types[] = {LM_F16, LM_BF16, LM_F64};
    for (int k = 0; k < 3; k++) {
        lm_model *base = NULL, *ft = NULL;
        lm_model_create(ctx, &base);
        lm_model_create(ctx, &ft);
        tu_add_random(ctx, base, "w", types[k], 2, (int64_t[]){7, 9}, 1);
        tu_add_random(ctx, ft, "w", types[k], 2, (int64_t[]){7, 9}, 2);
        struct host_source h = {ft, 0, PTHREAD_MUTEX_INITIALIZER, NULL, NULL};
        lm_model *lazy = lazy_copy(ctx, ft, &h);
        lm_model *want = NULL, *got = NULL;
        lm_plan *p = NULL;
        lm_plan_create(ctx, "average", &p);
        lm_plan_set_base(p, base);
        lm_plan_add_model(p, ft, 1.0);
        ck_assert_ok(lm_plan_execute(p, &want));
        lm_plan_destroy(p);
        lm_plan_create(ctx, "average", &p);
        lm_plan_set_base(p, base);
        lm_plan_add_model(p, lazy, 1.0);
        ck_assert_ok(lm_plan_execute(p, &got));
        const lm_tensor *x = lm_model_at(want, 0);
        ck_assert_int_eq(memcmp(lm_tensor_cdata(x),
                                lm_tensor_cdata(lm_model_at(got, 0)),
                                lm_tensor_nbytes(x)), 0);
        lm_plan_destroy(p);
        lm_model_destroy(want);
        lm_model_destroy(got);
        lm_model_destroy(lazy);
        lm_model_destroy(base);
        lm_model_destroy(ft);
    }
    lm_context_destroy(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("stream");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, sink_matches_memory_result);
    tcase_add_test(tc, sink_failure_rolls_back);
    tcase_add_test(tc, progress_and_cancel);
    tcase_add_test(tc, output_dtype_override);
    tcase_add_test(tc, lazy_sources_match_memory);
    tcase_add_test(tc, lazy_narrow_dtypes);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
