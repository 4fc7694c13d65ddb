/* The safetensors reader: hand-made files byte by byte (independent of the
 * writer), every validation rule, sharded checkpoints, and round trips
 * through the streaming writer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

static char dir[64];

static const char *file_path(const char *name)
{
    static char buf[256];
    snprintf(buf, sizeof(buf), "%s/%s", dir, name);
    return buf;
}

/* u64 LE header length, header, then `data_len` bytes of data. */
static const char *make_file(const char *name, const char *header,
                             const void *data, size_t data_len)
{
    const char *path = file_path(name);
    FILE *f = fopen(path, "wb");
    /* Pad with spaces (allowed) so the data starts 8-byte aligned. */
    uint64_t n = (strlen(header) + 7) / 8 * 8;
    unsigned char len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)(n >> (8 * i));
    fwrite(len, 1, 8, f);
    fwrite(header, 1, strlen(header), f);
    for (size_t i = strlen(header); i < n; i++)
        fputc(' ', f);
    if (data_len)
        fwrite(data, 1, data_len, f);
    fclose(f);
    return path;
}

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/lm_st_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}

START_TEST(hand_made_file)
{
    lm_context *ctx = tu_context(1, 0);
    /* a: F32 [2] = {1.5, -2}; b: BF16 [1,2] = {1.0, 3.0}; c: F16 [] = 0.5;
     * d: F64 [1] = 0.25 (at offset 14: misaligned, gets copied). */
    unsigned char data[22];
    float a[2] = {1.5f, -2.0f};
    uint16_t b[2] = {0x3f80, 0x4040}, c = 0x3800;
    double d = 0.25;
    memcpy(data, a, 8);
    memcpy(data + 8, b, 4);
    memcpy(data + 12, &c, 2);
    memcpy(data + 14, &d, 8);
    const char *path = make_file(
        "ok.safetensors",
        "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"hi\"},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"b\":{\"dtype\":\"BF16\",\"shape\":[1,2],\"data_offsets\":[8,12]},"
        "\"c\":{\"dtype\":\"F16\",\"shape\":[],\"data_offsets\":[12,14]},"
        "\"d\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[14,22]}}"
        "",
        data, sizeof(data));
    lm_model *m = NULL;
    ck_assert_ok(lm_safetensors_read(ctx, path, &m));
    ck_assert_uint_eq(lm_model_count(m), 4);
    ck_assert_str_eq(lm_model_name_at(m, 0), "a");
    ck_assert(tu_get(lm_model_at(m, 0), 1) == -2.0);
    ck_assert_int_eq(lm_tensor_is_wrapped(lm_model_at(m, 0)), 1);
    ck_assert(tu_get(lm_model_at(m, 1), 1) == 3.0);
    ck_assert_int_eq(lm_tensor_ndim(lm_model_at(m, 2)), 0);
    ck_assert(tu_get(lm_model_at(m, 2), 0) == 0.5);
    ck_assert(tu_get(lm_model_at(m, 3), 0) == 0.25);
    ck_assert_int_eq(lm_tensor_is_wrapped(lm_model_at(m, 3)), 0);
    const char *v;
    ck_assert_ok(lm_model_metadata_find(m, "note", &v));
    ck_assert_str_eq(v, "hi");
    ck_assert_uint_eq(lm_model_metadata_count(m), 2);
    ck_assert_status(lm_model_metadata_find(m, "nope", &v), LM_ERR_NOT_FOUND);
    lm_model_destroy(m);
    /* Through lm_model_open too. */
    ck_assert_ok(lm_model_open(ctx, path, &m));
    ck_assert_uint_eq(lm_model_count(m), 4);
    lm_model_destroy(m);
    lm_context_destroy(ctx);
}
END_TEST

/* One broken file per rule: expected status and a message fragment. */
START_TEST(every_rule_is_checked)
{
    static const struct {
        const char *header;
        size_t data_len;
        lm_status status;
        const char *fragment;
    } cases[] = {
        {"[1,2]", 0, LM_ERR_FORMAT, "not a well-formed JSON object"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", 4,
         LM_ERR_FORMAT, "well-formed"},
        {"{\"a\":5}", 0, LM_ERR_FORMAT, "entry 'a' is not an object"},
        {"{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, LM_ERR_FORMAT,
         "'a': \"dtype\""},
        {"{\"a\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
         LM_ERR_DTYPE, "dtype I8"},
        {"{\"a\":{\"dtype\":\"Q9\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
         LM_ERR_FORMAT, "unknown dtype 'Q9'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
         LM_ERR_FORMAT, "shape[0]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4,
         LM_ERR_FORMAT, "shape[0]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[0,4]}}", 4,
         LM_ERR_FORMAT, "\"shape\""},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}", 4,
         LM_ERR_FORMAT, "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4,
         LM_ERR_FORMAT, "begin 4 > end 0"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
         LM_ERR_FORMAT, "shape and dtype"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
         LM_ERR_FORMAT, "ends at byte 8"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}", 6,
         LM_ERR_FORMAT, "overlaps"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
         LM_ERR_FORMAT, "unused bytes"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8,
         LM_ERR_FORMAT, "trailing bytes"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
         LM_ERR_FORMAT, "duplicate tensor name 'a'"},
        {"{\"__metadata__\":{\"k\":1}}", 0, LM_ERR_FORMAT, "not a string"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],"
         "\"extra\":1}}", 4, LM_ERR_FORMAT, "unknown field 'extra'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
         "\"data_offsets\":[0,4]}}", 4, LM_ERR_FORMAT, "9 dimensions"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],"
         "\"data_offsets\":[0,4]}}", 4, LM_ERR_FORMAT, "more than 2^64"},
        {"{} x", 0, LM_ERR_FORMAT, "unexpected bytes"},
    };
    lm_context *ctx = tu_context(1, 0);
    unsigned char zeros[16] = {0};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *path = make_file("bad.safetensors", cases[i].header, zeros,
                                     cases[i].data_len);
        lm_model *m = NULL;
        lm_status st = lm_safetensors_read(ctx, path, &m);
        ck_assert_msg(st == cases[i].status, "case %zu: status %d, want %d "
                      "(%s)", i, (int)st, (int)cases[i].status,
                      lm_context_error(ctx));
        ck_assert_msg(strstr(lm_context_error(ctx), cases[i].fragment) != NULL,
                      "case %zu: '%s' lacks '%s'", i, lm_context_error(ctx),
                      cases[i].fragment);
        ck_assert_msg(strstr(lm_context_error(ctx), "bad.safetensors") != NULL,
                      "case %zu: message does not name the file", i);
        ck_assert_ptr_null(m);
    }
    /* Length prefix problems. */
    const char *p = file_path("short.safetensors");
    FILE *f = fopen(p, "wb");
    fwrite("abc", 1, 3, f);
    fclose(f);
    lm_model *m = NULL;
    ck_assert_status(lm_safetensors_read(ctx, p, &m), LM_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "too short"));
    f = fopen(p, "wb");
    fwrite("\xff\xff\xff\xff\x00\x00\x00\x00{}", 1, 10, f);
    fclose(f);
    ck_assert_status(lm_safetensors_read(ctx, p, &m), LM_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "header length"));
    ck_assert_status(lm_safetensors_read(ctx, file_path("missing"), &m),
                     LM_ERR_IO);
    ck_assert_status(lm_safetensors_read(ctx, dir, &m), LM_ERR_IO);
    lm_context_destroy(ctx);
}
END_TEST

/* Writer -> reader round trips, single and sharded, all dtypes. */
START_TEST(round_trip_through_the_writer)
{
    lm_context *ctx = tu_context(2, 0);
    /* f64 tensors are merged in f32, so a copy through a plan is exact only
     * for the other dtypes; f64 reading is covered by hand_made_file. */
    lm_dtype types[] = {LM_F32, LM_F16, LM_BF16, LM_F32};
    lm_model *src = NULL;
    lm_model_create(ctx, &src);
    char name[32];
    for (int i = 0; i < 12; i++) {
        snprintf(name, sizeof(name), "t%d", i);
        tu_add_random(ctx, src, name, types[i % 4], 2,
                      (int64_t[]){3 + i, 5}, (uint64_t)i);
    }
    /* Copy through a plan: the average of one model with itself as base. */
    lm_plan *p = NULL;
    lm_plan_create(ctx, "average", &p);
    lm_plan_set_base(p, src);
    lm_plan_add_model(p, src, 1.0);
    for (int sharded = 0; sharded < 2; sharded++) {
        const char *out = file_path(sharded ? "sharded" : "one.safetensors");
        char path[256];
        snprintf(path, sizeof(path), "%s", out);
        lm_safetensors_sink_options o = LM_SAFETENSORS_SINK_OPTIONS_INIT;
        o.max_shard_bytes = sharded ? 400 : 0;
        lm_file_sink *sink = NULL;
        ck_assert_ok(lm_safetensors_sink_create(ctx, path, &o, &sink));
        ck_assert_ok(lm_plan_execute_to(p, lm_file_sink_vtable(sink)));
        if (sharded)
            ck_assert_uint_gt(lm_file_sink_file_count(sink), 3);
        lm_file_sink_destroy(sink);
        lm_model *back = NULL;
        ck_assert_ok(lm_model_open(ctx, path, &back));
        ck_assert_uint_eq(lm_model_count(back), 12);
        for (size_t i = 0; i < 12; i++) {
            const lm_tensor *x = lm_model_at(src, i);
            lm_tensor *y;
            ck_assert_ok(lm_model_find(back, lm_model_name_at(src, i), &y));
            ck_assert_int_eq(lm_tensor_dtype(y), lm_tensor_dtype(x));
            ck_assert_int_eq(memcmp(lm_tensor_cdata(x), lm_tensor_cdata(y),
                                    lm_tensor_nbytes(x)), 0);
        }
        /* Merging the reopened model uses (and releases) mapped pages. */
        lm_plan *q = NULL;
        lm_model *merged = NULL;
        lm_plan_create(ctx, "task_arithmetic", &q);
        lm_plan_set_base(q, back);
        lm_plan_add_model(q, back, 1.0);
        ck_assert_ok(lm_plan_execute(q, &merged));
        ck_assert_int_eq(memcmp(lm_tensor_cdata(lm_model_at(merged, 5)),
                                lm_tensor_cdata(lm_model_at(src, 5)),
                                lm_tensor_nbytes(lm_model_at(src, 5))), 0);
        lm_model_destroy(merged);
        lm_plan_destroy(q);
        lm_model_destroy(back);
    }
    lm_plan_destroy(p);
    lm_model_destroy(src);
    lm_context_destroy(ctx);
}
END_TEST

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

START_TEST(sharded_index_is_checked)
{
    lm_context *ctx = tu_context(1, 0);
    float v[2] = {1, 2};
    char sub[128];
    snprintf(sub, sizeof(sub), "%s/ck", dir);
    mkdir(sub, 0777);
    const char *hdr_a =
        "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    const char *hdr_b =
        "{\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    make_file("ck/s1.safetensors", hdr_a, v, 4);
    make_file("ck/s2.safetensors", hdr_b, v + 1, 4);
    char index[256];
    snprintf(index, sizeof(index), "%s/model.safetensors.index.json", sub);
    write_text(index, "{\"metadata\":{},\"weight_map\":{\"x\":\"s1.safetensors\","
                      "\"y\":\"s2.safetensors\"}}");
    lm_model *m = NULL;
    ck_assert_ok(lm_model_open(ctx, sub, &m));
    ck_assert_uint_eq(lm_model_count(m), 2);
    ck_assert(tu_get(lm_model_at(m, 1), 0) == 2.0);
    lm_model_destroy(m);
    ck_assert_ok(lm_model_open(ctx, index, &m));
    lm_model_destroy(m);

    static const struct {
        const char *json, *fragment;
    } bad[] = {
        {"{\"weight_map\":{\"x\":\"s2.safetensors\",\"y\":\"s2.safetensors\"}}",
         "'x' but shard 's2.safetensors' does not hold it"},
        {"{\"weight_map\":{\"x\":\"s1.safetensors\",\"y\":\"s1.safetensors\"}}",
         "'y' but shard 's1.safetensors'"},
        {"{\"weight_map\":{\"x\":\"s1.safetensors\",\"y\":\"../s2\"}}",
         "same directory"},
        {"{\"weight_map\":{\"x\":\"s1.safetensors\",\"y\":\"s3.safetensors\"}}",
         "s3.safetensors"},
        {"{\"weight\":{}}", "weight_map"},
        {"not json", "weight_map"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_text(index, bad[i].json);
        m = NULL;
        ck_assert_int_ne(lm_model_open(ctx, sub, &m), LM_OK);
        ck_assert_msg(strstr(lm_context_error(ctx), bad[i].fragment) != NULL,
                      "case %zu: '%s' lacks '%s'", i, lm_context_error(ctx),
                      bad[i].fragment);
        ck_assert_ptr_null(m);
    }
    char empty[128];
    snprintf(empty, sizeof(empty), "%s/empty", dir);
    mkdir(empty, 0777);
    ck_assert_status(lm_model_open(ctx, empty, &m), LM_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "model.safetensors"));
    lm_context_destroy(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("safetensors_read");
    TCase *tc = tcase_create("io");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, hand_made_file);
    tcase_add_test(tc, every_rule_is_checked);
    tcase_add_test(tc, round_trip_through_the_writer);
    tcase_add_test(tc, sharded_index_is_checked);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
