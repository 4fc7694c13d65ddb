/* The streaming safetensors sink: layout, contents, sharding, and no
 * output after failures. Files are checked with cJSON and raw reads, not
 * with the library's own reader. */
#include <cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

#define N_TENSORS 10

static lm_model *make_model(lm_context *ctx, uint64_t seed, lm_dtype dtype)
{
    lm_model *m = NULL;
    ck_assert_ok(lm_model_create(ctx, &m));
    char name[32];
    for (int i = 0; i < N_TENSORS; i++) {
        snprintf(name, sizeof(name), "layers.%d.\"w\"", i); /* needs escaping */
        int64_t shape[2] = {16 + i, 8};
        tu_add_random(ctx, m, name, dtype, 2, shape, seed * 100 + (uint64_t)i);
    }
    tu_add_random(ctx, m, "scalar", dtype, 0, NULL, seed);
    return m;
}

static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)n + 1);
    ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* Check one safetensors file against the in-memory result; returns the
 * number of tensors found. */
static int check_file(const char *path, const lm_model *want,
                      const char *meta_key, const char *meta_value)
{
    size_t len;
    unsigned char *buf = slurp(path, &len);
    uint64_t hlen = 0;
    for (int b = 0; b < 8; b++)
        hlen |= (uint64_t)buf[b] << (8 * b);
    ck_assert_uint_eq(hlen % 8, 0);
    ck_assert_uint_le(8 + hlen, len);
    cJSON *h = cJSON_ParseWithLength((const char *)buf + 8, hlen);
    ck_assert_ptr_nonnull(h);
    if (meta_key) {
        cJSON *meta = cJSON_GetObjectItemCaseSensitive(h, "__metadata__");
        ck_assert_str_eq(cJSON_GetObjectItem(meta, meta_key)->valuestring,
                         meta_value);
    }
    int found = 0;
    uint64_t covered = 0;
    for (cJSON *t = h->child; t; t = t->next) {
        if (strcmp(t->string, "__metadata__") == 0)
            continue;
        lm_tensor *w;
        ck_assert_ok(lm_model_find(want, t->string, &w));
        cJSON *off = cJSON_GetObjectItem(t, "data_offsets");
        uint64_t a = (uint64_t)cJSON_GetArrayItem(off, 0)->valuedouble;
        uint64_t e = (uint64_t)cJSON_GetArrayItem(off, 1)->valuedouble;
        ck_assert_uint_eq(e - a, lm_tensor_nbytes(w));
        cJSON *shape = cJSON_GetObjectItem(t, "shape");
        ck_assert_int_eq(cJSON_GetArraySize(shape), lm_tensor_ndim(w));
        const char *dt = cJSON_GetObjectItem(t, "dtype")->valuestring;
        ck_assert_str_eq(dt, lm_tensor_dtype(w) == LM_BF16 ? "BF16" : "F32");
        ck_assert_int_eq(memcmp(buf + 8 + hlen + a, lm_tensor_cdata(w),
                                lm_tensor_nbytes(w)), 0);
        covered += e - a;
        found++;
    }
    ck_assert_uint_eq(8 + hlen + covered, len); /* no holes, no tail */
    cJSON_Delete(h);
    free(buf);
    return found;
}

static lm_plan *ta_plan(lm_context *ctx, lm_model *base, lm_model *a)
{
    lm_plan *p = NULL;
    lm_plan_create(ctx, "task_arithmetic", &p);
    lm_plan_set_float(p, "lambda", 0.5);
    lm_plan_set_base(p, base);
    lm_plan_add_model(p, a, 1.0);
    return p;
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.' || strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

START_TEST(single_file)
{
    lm_dtype types[] = {LM_F32, LM_BF16};
    for (int k = 0; k < 2; k++) {
        lm_context *ctx = tu_context(2, 0);
        char dir[] = "/tmp/lm_sink_XXXXXX";
        ck_assert_ptr_nonnull(mkdtemp(dir));
        char path[256];
        snprintf(path, sizeof(path), "%s/out.safetensors", dir);
        lm_model *base = make_model(ctx, 1, types[k]);
        lm_model *a = make_model(ctx, 2, types[k]), *mem = NULL;
        lm_plan *p = ta_plan(ctx, base, a);
        ck_assert_ok(lm_plan_execute(p, &mem));
        const char *keys[] = {"format", "merge_method"};
        const char *values[] = {"pt", "task_arithmetic"};
        lm_safetensors_sink_options o = LM_SAFETENSORS_SINK_OPTIONS_INIT;
        o.metadata_keys = keys;
        o.metadata_values = values;
        o.n_metadata = 2;
        lm_file_sink *sink = NULL;
        ck_assert_ok(lm_safetensors_sink_create(ctx, path, &o, &sink));
        ck_assert_ok(lm_plan_execute_to(p, lm_file_sink_vtable(sink)));
        ck_assert_uint_eq(lm_file_sink_file_count(sink), 1);
        ck_assert_str_eq(lm_file_sink_file_at(sink, 0), path);
        ck_assert_int_eq(check_file(path, mem, "merge_method",
                                    "task_arithmetic"), N_TENSORS + 1);
        ck_assert_int_eq(count_entries(dir), 1); /* no temporaries left */
        lm_file_sink_destroy(sink);
        unlink(path);
        rmdir(dir);
        lm_model_destroy(mem);
        lm_plan_destroy(p);
        lm_model_destroy(base);
        lm_model_destroy(a);
        lm_context_destroy(ctx);
    }
}
END_TEST

START_TEST(sharded_with_index)
{
    lm_context *ctx = tu_context(3, 0);
    char dir[] = "/tmp/lm_sink_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char out[256];
    snprintf(out, sizeof(out), "%s/merged", dir);
    lm_model *base = make_model(ctx, 1, LM_F32);
    lm_model *a = make_model(ctx, 2, LM_F32), *mem = NULL;
    lm_plan *p = ta_plan(ctx, base, a);
    ck_assert_ok(lm_plan_execute(p, &mem));
    lm_safetensors_sink_options o = LM_SAFETENSORS_SINK_OPTIONS_INIT;
    o.max_shard_bytes = 2000; /* tensors are 512..800 bytes */
    lm_file_sink *sink = NULL;
    ck_assert_ok(lm_safetensors_sink_create(ctx, out, &o, &sink));
    ck_assert_ok(lm_plan_execute_to(p, lm_file_sink_vtable(sink)));
    size_t n = lm_file_sink_file_count(sink);
    ck_assert_uint_gt(n, 2);
    int total = 0;
    for (size_t i = 0; i < n; i++) {
        char want[64];
        snprintf(want, sizeof(want), "model-%05zu-of-%05zu.safetensors",
                 i + 1, n);
        ck_assert_ptr_nonnull(strstr(lm_file_sink_file_at(sink, i), want));
        total += check_file(lm_file_sink_file_at(sink, i), mem, NULL, NULL);
    }
    ck_assert_int_eq(total, N_TENSORS + 1);
    char idx[300];
    snprintf(idx, sizeof(idx), "%s/model.safetensors.index.json", out);
    size_t len;
    unsigned char *buf = slurp(idx, &len);
    cJSON *j = cJSON_ParseWithLength((const char *)buf, len);
    ck_assert_ptr_nonnull(j);
    cJSON *map = cJSON_GetObjectItem(j, "weight_map");
    ck_assert_int_eq(cJSON_GetArraySize(map), N_TENSORS + 1);
    double size = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "metadata"),
                                      "total_size")->valuedouble;
    uint64_t want_size = 0;
    for (size_t i = 0; i < lm_model_count(mem); i++)
        want_size += lm_tensor_nbytes(lm_model_at(mem, i));
    ck_assert_uint_eq((uint64_t)size, want_size);
    cJSON_Delete(j);
    free(buf);
    ck_assert_int_eq(count_entries(out), (int)n + 1);
    for (size_t i = 0; i < n; i++)
        unlink(lm_file_sink_file_at(sink, i));
    unlink(idx);
    rmdir(out);
    rmdir(dir);
    lm_file_sink_destroy(sink);
    lm_model_destroy(mem);
    lm_plan_destroy(p);
    lm_model_destroy(base);
    lm_model_destroy(a);
    lm_context_destroy(ctx);
}
END_TEST

static int cancel_at_4(size_t done, size_t total, uint64_t b, uint64_t bt,
                       void *user)
{
    (void)total;
    (void)b;
    (void)bt;
    (void)user;
    return done >= 4;
}

/* A cancelled or failed merge leaves the directory as it was, and an
 * existing file at the destination is untouched. */
START_TEST(failures_leave_nothing)
{
    lm_context *ctx = tu_context(2, 0);
    char dir[] = "/tmp/lm_sink_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof(path), "%s/out.safetensors", dir);
    FILE *f = fopen(path, "w");
    fputs("previous", f);
    fclose(f);
    lm_model *base = make_model(ctx, 1, LM_F32), *a = make_model(ctx, 2, LM_F32);
    lm_plan *p = ta_plan(ctx, base, a);
    lm_plan_set_progress(p, cancel_at_4, NULL);
    lm_file_sink *sink = NULL;
    ck_assert_ok(lm_safetensors_sink_create(ctx, path, NULL, &sink));
    ck_assert_status(lm_plan_execute_to(p, lm_file_sink_vtable(sink)),
                     LM_ERR_CANCELLED);
    ck_assert_uint_eq(lm_file_sink_file_count(sink), 0);
    lm_file_sink_destroy(sink);
    ck_assert_int_eq(count_entries(dir), 1);
    size_t len;
    unsigned char *buf = slurp(path, &len);
    ck_assert_int_eq(memcmp(buf, "previous", 8), 0);
    free(buf);

    /* Unwritable destination: a clear I/O error naming the place. */
    lm_plan_set_progress(p, NULL, NULL);
    ck_assert_ok(lm_safetensors_sink_create(
        ctx, "/proc/definitely/not/here.safetensors", NULL, &sink));
    ck_assert_status(lm_plan_execute_to(p, lm_file_sink_vtable(sink)),
                     LM_ERR_IO);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "/proc/definitely"));
    lm_file_sink_destroy(sink);
    lm_file_sink_destroy(NULL);
    unlink(path);
    rmdir(dir);
    lm_plan_destroy(p);
    lm_model_destroy(base);
    lm_model_destroy(a);
    lm_context_destroy(ctx);
}
END_TEST

/* Descriptors are versioned: a sink driven directly (as lmerge's MPI
 * driver does) refuses one smaller than the first versioned layout,
 * naming the output, and writes nothing. */
START_TEST(short_descriptor_refused)
{
    lm_context *ctx = tu_context(1, 0);
    char dir[] = "/tmp/lm_sink_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof(path), "%s/out.safetensors", dir);
    lm_file_sink *sink = NULL;
    ck_assert_ok(lm_safetensors_sink_create(ctx, path, NULL, &sink));
    const lm_sink_vtable *vt = lm_file_sink_vtable(sink);
    lm_tensor_desc d[2];
    memset(d, 0, sizeof(d));
    const lm_tensor_desc *list[2] = {&d[0], &d[1]};
    for (int i = 0; i < 2; i++) {
        d[i].struct_size = sizeof(d[i]);
        d[i].name = i ? "b" : "a";
        d[i].dtype = LM_F32;
        d[i].ndim = 1;
        d[i].shape[0] = 2;
        d[i].nbytes = 8;
    }
    d[1].struct_size = 4;
    ck_assert_status(vt->begin(list, 2, vt->user), LM_ERR_ABI);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "output 1"));
    lm_file_sink_destroy(sink);
    ck_assert_int_eq(count_entries(dir), 0);
    rmdir(dir);
    lm_context_destroy(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("file_sink");
    TCase *tc = tcase_create("io");
    tcase_add_test(tc, single_file);
    tcase_add_test(tc, sharded_with_index);
    tcase_add_test(tc, failures_leave_nothing);
    tcase_add_test(tc, short_descriptor_refused);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
