/* The format table (lib/io/formats.c): which format a path is, by name,
 * by first bytes and by what a directory holds; clear errors for unknown
 * and ambiguous paths; and the functions that dispatch through it
 * (lm_model_open, lm_lora_open, lm_input_open, lm_model_save,
 * lm_file_sink_create_for). */
#define _XOPEN_SOURCE 700 /* nftw */
#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/formats.h"
#include "testutil.h"

static char dir[64];
static lm_context *ctx;

static const char *at(const char *name)
{
    static char buf[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof(buf[k]), "%s/%s", dir, name);
    return buf[k];
}

static void mkdir_at(const char *name)
{
    ck_assert_int_eq(mkdir(at(name), 0700), 0);
}

static lm_model *small_model(void)
{
    lm_model *m = NULL;
    ck_assert_ok(lm_model_create(ctx, &m));
    tu_add_random(ctx, m, "a.weight", LM_F32, 2, (int64_t[]){3, 4}, 1);
    tu_add_random(ctx, m, "b.weight", LM_F32, 1, (int64_t[]){5}, 2);
    return m;
}

/* A llama.cpp LoRA adapter GGUF for target "a.weight" [3, 4], rank 2. */
static void write_gguf_adapter(const char *path)
{
    lm_model *m = NULL;
    ck_assert_ok(lm_model_create(ctx, &m));
    tu_add_random(ctx, m, "a.weight.lora_a", LM_F32, 2, (int64_t[]){2, 4}, 3);
    tu_add_random(ctx, m, "a.weight.lora_b", LM_F32, 2, (int64_t[]){3, 2}, 4);
    const char *keys[] = {"general.type", "adapter.type"};
    const char *values[] = {"adapter", "lora"};
    lm_gguf_options o = LM_GGUF_OPTIONS_INIT;
    o.metadata_keys = keys;
    o.metadata_values = values;
    o.n_metadata = 2;
    ck_assert_ok(lm_gguf_write(ctx, m, path, &o));
    lm_model_destroy(m);
}

static void copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    ck_assert_ptr_nonnull(in);
    ck_assert_ptr_nonnull(out);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
        ck_assert_uint_eq(fwrite(buf, 1, n, out), n);
    fclose(in);
    ck_assert_int_eq(fclose(out), 0);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    ck_assert_int_eq(fclose(f), 0);
}

static int rm_entry(const char *p, const struct stat *s, int t,
                    struct FTW *f)
{
    (void)s;
    (void)t;
    (void)f;
    return remove(p);
}

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/lm_formats_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ctx = tu_context(1, 0);
    lm_model *m = small_model();
    ck_assert_ok(lm_safetensors_write(ctx, m, at("m.safetensors"), NULL));
    ck_assert_ok(lm_gguf_write(ctx, m, at("m.gguf"), NULL));
    ck_assert_ok(lm_npz_write(ctx, m, at("m.npz"), NULL));
    lm_safetensors_sink_options o = LM_SAFETENSORS_SINK_OPTIONS_INIT;
    o.max_shard_bytes = 16;
    ck_assert_ok(lm_safetensors_write(ctx, m, at("sharded"), &o));
    lm_model_destroy(m);
}

static void teardown(void)
{
    lm_context_destroy(ctx);
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* The format lm__format_detect finds for `path`, by name. */
static const char *detected(const char *path, enum lm__format_need need)
{
    const struct lm__format *f = NULL;
    char *file = NULL;
    lm_status st = lm__format_detect(ctx, path, need, &f, &file);
    ck_assert_msg(st == LM_OK, "%s: %s", path, lm_context_error(ctx));
    lm_free(ctx, file);
    return f->name;
}

/* `expr` fails with `want` and a message naming `path` and `fragment`. */
#define ck_assert_error(expr, want, path, fragment)                          \
    do {                                                                     \
        ck_assert_status(expr, want);                                        \
        const char *e_ = lm_context_error(ctx);                              \
        ck_assert_msg(strstr(e_, path) && strstr(e_, fragment),              \
                      "message '%s' should name '%s' and say '%s'", e_,      \
                      path, fragment);                                       \
    } while (0)

static void open_has_two_tensors(const char *path)
{
    lm_model *m = NULL;
    ck_assert_msg(lm_model_open(ctx, path, &m) == LM_OK, "%s: %s", path,
                  lm_context_error(ctx));
    ck_assert_uint_eq(lm_model_count(m), 2);
    lm_tensor *t = NULL;
    ck_assert_ok(lm_model_find(m, "a.weight", &t));
    ck_assert_int_eq(lm_tensor_dim(t, 0), 3);
    lm_model_destroy(m);
}

START_TEST(files_by_extension)
{
    ck_assert_str_eq(detected(at("m.safetensors"), LM_FORMAT_MODEL),
                     "safetensors");
    ck_assert_str_eq(detected(at("m.gguf"), LM_FORMAT_MODEL), "GGUF");
    ck_assert_str_eq(detected(at("m.npz"), LM_FORMAT_MODEL), "npz");
    ck_assert_str_eq(detected(at("sharded/model.safetensors.index.json"),
                              LM_FORMAT_MODEL),
                     "safetensors index");
    open_has_two_tensors(at("m.safetensors"));
    open_has_two_tensors(at("m.gguf"));
    open_has_two_tensors(at("m.npz"));
    open_has_two_tensors(at("sharded/model.safetensors.index.json"));
    /* The name decides: a GGUF named .safetensors is a bad safetensors
     * file, reported by that reader. */
    copy_file(at("m.gguf"), at("liar.safetensors"));
    lm_model *m = NULL;
    ck_assert_error(lm_model_open(ctx, at("liar.safetensors"), &m),
                    LM_ERR_FORMAT, "liar.safetensors", "");
}
END_TEST

START_TEST(files_by_magic)
{
    copy_file(at("m.safetensors"), at("st.bin"));
    copy_file(at("m.gguf"), at("gg"));
    copy_file(at("m.npz"), at("np.data"));
    ck_assert_str_eq(detected(at("st.bin"), LM_FORMAT_MODEL), "safetensors");
    ck_assert_str_eq(detected(at("gg"), LM_FORMAT_MODEL), "GGUF");
    ck_assert_str_eq(detected(at("np.data"), LM_FORMAT_MODEL), "npz");
    open_has_two_tensors(at("st.bin"));
    open_has_two_tensors(at("gg"));
    open_has_two_tensors(at("np.data"));
}
END_TEST

START_TEST(unknown_files_name_the_path)
{
    lm_model *m = NULL;
    write_text(at("notes.txt"), "hello, this is not a model at all");
    ck_assert_error(lm_model_open(ctx, at("notes.txt"), &m), LM_ERR_FORMAT,
                    at("notes.txt"), "unknown model format");
    write_text(at("empty"), "");
    ck_assert_error(lm_model_open(ctx, at("empty"), &m), LM_ERR_FORMAT,
                    at("empty"), "unknown model format");
    /* Eight bytes of huge header length then '{': not safetensors. */
    write_text(at("big"), "\xff\xff\xff\xff\xff\xff\xff\x7f{}");
    ck_assert_error(lm_model_open(ctx, at("big"), &m), LM_ERR_FORMAT,
                    at("big"), "unknown model format");
    ck_assert_error(lm_model_open(ctx, at("missing.bin"), &m), LM_ERR_IO,
                    at("missing.bin"), "cannot open");
    ck_assert_ptr_null(m);
    /* A FIFO without a known name is refused before anything reads it. */
    ck_assert_int_eq(mkfifo(at("pipe"), 0600), 0);
    ck_assert_error(lm_model_open(ctx, at("pipe"), &m), LM_ERR_IO,
                    at("pipe"), "is a FIFO");
}
END_TEST

START_TEST(directories)
{
    /* model.safetensors; an index wins over it. */
    mkdir_at("single");
    copy_file(at("m.safetensors"), at("single/model.safetensors"));
    ck_assert_str_eq(detected(at("single"), LM_FORMAT_MODEL), "safetensors");
    open_has_two_tensors(at("single"));
    ck_assert_str_eq(detected(at("sharded"), LM_FORMAT_MODEL),
                     "safetensors index");
    open_has_two_tensors(at("sharded"));
    /* Exactly one .gguf. */
    mkdir_at("gg");
    copy_file(at("m.gguf"), at("gg/weights-f32.gguf"));
    write_text(at("gg/README.md"), "a model");
    ck_assert_str_eq(detected(at("gg"), LM_FORMAT_MODEL), "GGUF");
    open_has_two_tensors(at("gg"));
    /* Two are ambiguous: the message names the directory and both. */
    copy_file(at("m.gguf"), at("gg/weights-f16.gguf"));
    lm_model *m = NULL;
    ck_assert_error(lm_model_open(ctx, at("gg"), &m), LM_ERR_FORMAT,
                    at("gg"), "2 .gguf files ('weights-f16.gguf', "
                              "'weights-f32.gguf'): name the one to open");
    /* safetensors names win over a .gguf beside them. */
    copy_file(at("m.gguf"), at("single/other.gguf"));
    ck_assert_str_eq(detected(at("single"), LM_FORMAT_MODEL), "safetensors");
    /* Nothing known. */
    mkdir_at("empty");
    ck_assert_error(lm_model_open(ctx, at("empty"), &m), LM_ERR_NOT_FOUND,
                    at("empty"), "has neither");
    ck_assert_ptr_null(m);
}
END_TEST

/* A PEFT directory from one module's factors. */
static void write_peft(const char *name, bool with_model)
{
    mkdir_at(name);
    char p[128];
    lm_model *ad = NULL;
    ck_assert_ok(lm_model_create(ctx, &ad));
    tu_add_random(ctx, ad, "base_model.model.a.lora_A.weight", LM_F32, 2,
                  (int64_t[]){2, 4}, 5);
    tu_add_random(ctx, ad, "base_model.model.a.lora_B.weight", LM_F32, 2,
                  (int64_t[]){3, 2}, 6);
    snprintf(p, sizeof(p), "%s/adapter_model.safetensors", name);
    ck_assert_ok(lm_safetensors_write(ctx, ad, at(p), NULL));
    lm_model_destroy(ad);
    snprintf(p, sizeof(p), "%s/adapter_config.json", name);
    write_text(at(p), "{\"peft_type\": \"LORA\", \"r\": 2, "
                      "\"lora_alpha\": 4}");
    if (with_model) {
        snprintf(p, sizeof(p), "%s/model.safetensors", name);
        copy_file(at("m.safetensors"), at(p));
    }
}

START_TEST(adapters)
{
    lm_model *m = NULL;
    lm_lora *l = NULL;
    write_peft("peft", false);
    ck_assert_str_eq(detected(at("peft"), LM_FORMAT_LORA), "PEFT adapter");
    ck_assert_ok(lm_lora_open(ctx, at("peft"), &l));
    ck_assert_uint_eq(lm_lora_count(l), 1);
    lm_lora_destroy(l);
    l = NULL;
    ck_assert_ok(lm_input_open(ctx, at("peft"), &m, &l));
    ck_assert_ptr_null(m);
    ck_assert_uint_eq(lm_lora_count(l), 1);
    lm_lora_destroy(l);
    l = NULL;
    ck_assert_error(lm_model_open(ctx, at("peft"), &m), LM_ERR_NOT_FOUND,
                    at("peft"), "holds a PEFT adapter, not a model");
    /* A PEFT directory that also holds a model: an adapter as an input
     * (as lmerge always read it), the model for lm_model_open. */
    write_peft("both", true);
    ck_assert_ok(lm_input_open(ctx, at("both"), &m, &l));
    ck_assert_ptr_null(m);
    ck_assert_ptr_nonnull(l);
    lm_lora_destroy(l);
    l = NULL;
    open_has_two_tensors(at("both"));
    /* A llama.cpp adapter GGUF, also as a directory's one .gguf. */
    write_gguf_adapter(at("ad.gguf"));
    ck_assert_ok(lm_input_open(ctx, at("ad.gguf"), &m, &l));
    ck_assert_ptr_null(m);
    ck_assert_uint_eq(lm_lora_count(l), 1);
    lm_lora_destroy(l);
    l = NULL;
    mkdir_at("adgg");
    copy_file(at("ad.gguf"), at("adgg/x.gguf"));
    ck_assert_ok(lm_lora_open(ctx, at("adgg"), &l));
    ck_assert_uint_eq(lm_lora_count(l), 1);
    lm_lora_destroy(l);
    l = NULL;
    /* A model is not an adapter, and the other way round. */
    ck_assert_ok(lm_input_open(ctx, at("m.gguf"), &m, &l));
    ck_assert_ptr_null(l);
    ck_assert_uint_eq(lm_model_count(m), 2);
    lm_model_destroy(m);
    m = NULL;
    ck_assert_error(lm_lora_open(ctx, at("m.safetensors"), &l),
                    LM_ERR_FORMAT, at("m.safetensors"),
                    "holds a model, not a LoRA adapter");
    ck_assert_error(lm_lora_open(ctx, at("sharded"), &l), LM_ERR_NOT_FOUND,
                    at("sharded"), "holds a safetensors index, not a LoRA "
                                   "adapter");
}
END_TEST

START_TEST(save_by_extension)
{
    lm_model *m = small_model();
    ck_assert_ok(lm_model_save(ctx, m, at("o.safetensors"), 0));
    ck_assert_ok(lm_model_save(ctx, m, at("o.gguf"), 0));
    ck_assert_ok(lm_model_save(ctx, m, at("o.npz"), 0));
    ck_assert_ok(lm_model_save(ctx, m, at("z.npz"), LM_SAVE_COMPRESS));
    ck_assert_str_eq(detected(at("o.gguf"), LM_FORMAT_MODEL), "GGUF");
    open_has_two_tensors(at("o.safetensors"));
    open_has_two_tensors(at("o.gguf"));
    open_has_two_tensors(at("o.npz"));
    open_has_two_tensors(at("z.npz"));
    struct stat a, b;
    ck_assert_int_eq(stat(at("o.npz"), &a), 0);
    ck_assert_int_eq(stat(at("z.npz"), &b), 0);
    ck_assert_int_ne(a.st_size, b.st_size);
    ck_assert_error(lm_model_save(ctx, m, at("o.pt"), 0),
                    LM_ERR_INVALID_ARGUMENT, at("o.pt"),
                    "unknown extension");
    ck_assert_int_ne(access(at("o.pt"), F_OK), 0);
    /* Reading-only formats are not written. */
    ck_assert_status(lm_model_save(ctx, m, at("o.index.json"), 0),
                     LM_ERR_INVALID_ARGUMENT);
    lm_model_destroy(m);
}
END_TEST

/* Streams `m` through a sink made for `like` into dir `name`. */
static void sink_for(const char *name, const lm_model *like, uint64_t shard,
                     const lm_model *m)
{
    mkdir_at(name);
    const char *keys[] = {"merged_by"}, *values[] = {"test"};
    lm_safetensors_sink_options o = LM_SAFETENSORS_SINK_OPTIONS_INIT;
    o.max_shard_bytes = shard;
    o.metadata_keys = keys;
    o.metadata_values = values;
    o.n_metadata = 1;
    lm_file_sink *sink = NULL;
    ck_assert_ok(lm_file_sink_create_for(ctx, at(name), like, &o, &sink));
    lm_plan *p = NULL;
    ck_assert_ok(lm_plan_create(ctx, "average", &p));
    ck_assert_ok(lm_plan_set_base(p, m));
    ck_assert_ok(lm_plan_add_model(p, m, 1.0));
    ck_assert_ok(lm_plan_add_model(p, m, 1.0));
    lm_status st = lm_plan_execute_to(p, lm_file_sink_vtable(sink));
    ck_assert_msg(st == LM_OK, "%s: %s", name, lm_context_error(ctx));
    lm_plan_destroy(p);
    lm_file_sink_destroy(sink);
}

START_TEST(sink_in_the_base_format)
{
    lm_model *m = small_model(), *gg = NULL, *back = NULL;
    const char *v = NULL;
    ck_assert_ok(lm_model_open(ctx, at("m.gguf"), &gg));
    /* A GGUF base: model.gguf with the base's key/values. */
    sink_for("out_gguf", gg, 1 << 20, m);
    ck_assert_ok(lm_model_open(ctx, at("out_gguf/model.gguf"), &back));
    ck_assert_ok(lm_model_metadata_find(back, "general.alignment", &v));
    ck_assert_ok(lm_model_metadata_find(back, "merged_by", &v));
    ck_assert_str_eq(v, "test");
    ck_assert_status(lm_model_metadata_find(back, "format", &v), LM_ERR_NOT_FOUND);
    lm_model_destroy(back);
    /* Anything else: safetensors, "format": "pt" first. */
    sink_for("out_st", NULL, 0, m);
    ck_assert_ok(lm_model_open(ctx, at("out_st/model.safetensors"), &back));
    ck_assert_ok(lm_model_metadata_find(back, "format", &v));
    ck_assert_str_eq(v, "pt");
    const char *k = NULL;
    ck_assert_ok(lm_model_metadata_at(back, 0, &k, &v));
    ck_assert_str_eq(k, "format");
    lm_model_destroy(back);
    sink_for("out_shards", m, 16, m);
    ck_assert_int_eq(access(at("out_shards/model.safetensors.index.json"),
                            F_OK), 0);
    open_has_two_tensors(at("out_shards"));
    lm_model_destroy(gg);
    lm_model_destroy(m);
}
END_TEST

/* An allocator failing its k-th allocation (0: never), counting what is
 * live so that leaks show. */
struct failing {
    long count, fail_at, live;
};

static void *fail_alloc(size_t n, void *user)
{
    struct failing *f = user;
    if (++f->count == f->fail_at)
        return NULL;
    void *p = malloc(n);
    f->live += p != NULL;
    return p;
}

static void fail_free(void *p, void *user)
{
    struct failing *f = user;
    f->live -= p != NULL;
    free(p);
}

/* Opens `path` as an input with the k-th allocation failing, for every k
 * until a run makes fewer: each failure is reported as out of memory
 * naming nothing half-built, and frees everything. */
static long sweep_open(const char *path)
{
    long failures = 0;
    for (long k = 1;; k++) {
        ck_assert_msg(k < 100000, "%s: no run succeeded", path);
        struct failing f = {0, 0, 0};
        lm_allocator alloc = {sizeof(alloc), fail_alloc, fail_free, &f};
        lm_context_options o = LM_CONTEXT_OPTIONS_INIT;
        o.allocator = &alloc;
        o.n_threads = 1;
        lm_context *c = NULL;
        ck_assert_ok(lm_context_create(&o, &c));
        f.count = 0;
        f.fail_at = k;
        lm_model *m = NULL;
        lm_lora *l = NULL;
        lm_status st = lm_input_open(c, path, &m, &l);
        long made = f.count;
        char err[512];
        snprintf(err, sizeof(err), "%s", lm_context_error(c));
        lm_model_destroy(m);
        lm_lora_destroy(l);
        lm_context_destroy(c);
        ck_assert_msg(f.live == 0, "%s, allocation %ld failed: %ld blocks "
                      "leaked", path, k, f.live);
        if (made < k) {
            ck_assert_msg(st == LM_OK, "%s: %s", path, err);
            return failures;
        }
        ck_assert_msg(st == LM_ERR_OUT_OF_MEMORY, "%s, allocation %ld "
                      "failed: status %d (%s)", path, k, (int)st, err);
        ck_assert_msg(m == NULL && l == NULL, "%s: half-built output", path);
        failures++;
    }
}

static size_t entries_in(const char *path)
{
    size_t n = 0;
    DIR *d = opendir(path);
    ck_assert_ptr_nonnull(d);
    for (struct dirent *e; (e = readdir(d));)
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

/* Writes a model to out/NAME (kind 0: lm_model_save; 1: a merge through
 * lm_file_sink_create_for into out, like a GGUF base when `like` is set,
 * sharded when `shard`) with the k-th allocation failing, for every k: a
 * failure is out of memory, frees everything and leaves out/ empty. */
static long sweep_write(const char *name, int kind, const char *like_path,
                        uint64_t shard)
{
    char out[256];
    snprintf(out, sizeof(out), "%s", at("out"));
    for (long k = 1;; k++) {
        ck_assert_msg(k < 100000, "%s: no run succeeded", name);
        struct failing f = {0, 0, 0};
        lm_allocator alloc = {sizeof(alloc), fail_alloc, fail_free, &f};
        lm_context_options o = LM_CONTEXT_OPTIONS_INIT;
        o.allocator = &alloc;
        o.n_threads = 1;
        lm_context *c = NULL, *keep = ctx;
        ck_assert_ok(lm_context_create(&o, &c));
        ctx = c; /* small_model and at() use it */
        lm_model *m = small_model(), *like = NULL;
        if (like_path)
            ck_assert_ok(lm_model_open(c, like_path, &like));
        ck_assert_int_eq(mkdir(out, 0700), 0);
        char path[300];
        snprintf(path, sizeof(path), "%s/%s", out, name);
        f.count = 0;
        f.fail_at = k;
        lm_status st;
        if (kind == 0) {
            st = lm_model_save(c, m, path, LM_SAVE_COMPRESS);
        } else {
            lm_safetensors_sink_options so = LM_SAFETENSORS_SINK_OPTIONS_INIT;
            const char *keys[] = {"merged_by"}, *values[] = {"test"};
            so.max_shard_bytes = shard;
            so.metadata_keys = keys;
            so.metadata_values = values;
            so.n_metadata = 1;
            lm_file_sink *sink = NULL;
            lm_plan *p = NULL;
            st = lm_file_sink_create_for(c, out, like, &so, &sink);
            if (st == LM_OK)
                st = lm_plan_create(c, "average", &p);
            if (st == LM_OK)
                st = lm_plan_set_base(p, m);
            if (st == LM_OK)
                st = lm_plan_add_model(p, m, 1.0);
            if (st == LM_OK)
                st = lm_plan_execute_to(p, lm_file_sink_vtable(sink));
            lm_plan_destroy(p);
            lm_file_sink_destroy(sink);
        }
        long made = f.count;
        f.fail_at = 0;
        char err[512];
        snprintf(err, sizeof(err), "%s", lm_context_error(c));
        size_t left = entries_in(out);
        nftw(out, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        lm_model_destroy(m);
        lm_model_destroy(like);
        ctx = keep;
        lm_context_destroy(c);
        ck_assert_msg(f.live == 0, "%s, allocation %ld failed: %ld blocks "
                      "leaked", name, k, f.live);
        if (made < k) {
            ck_assert_msg(st == LM_OK, "%s: %s", name, err);
            ck_assert_uint_gt(left, 0);
            return k - 1;
        }
        ck_assert_msg(st != LM_OK, "%s, allocation %ld failed silently",
                      name, k);
        ck_assert_msg(st == LM_ERR_OUT_OF_MEMORY || strstr(err, "memory"),
                      "%s, allocation %ld failed: status %d (%s)", name, k,
                      (int)st, err);
        ck_assert_msg(left == 0, "%s, allocation %ld failed: %zu files left "
                      "(%s)", name, k, left, err);
    }
}

START_TEST(every_allocation_of_a_write_may_fail)
{
    const char *names[] = {"o.safetensors", "o.gguf", "o.npz"};
    for (int i = 0; i < 3; i++)
        printf("formats: save %s: %ld allocation failures, all clean\n",
               names[i], sweep_write(names[i], 0, NULL, 0));
    char gguf[256];
    snprintf(gguf, sizeof(gguf), "%s", at("m.gguf"));
    printf("formats: sink for safetensors: %ld, sharded: %ld, GGUF: %ld "
           "allocation failures, all clean\n",
           sweep_write("model.safetensors", 1, NULL, 0),
           sweep_write("model.safetensors.index.json", 1, NULL, 16),
           sweep_write("model.gguf", 1, gguf, 0));
}
END_TEST

START_TEST(every_allocation_of_an_open_may_fail)
{
    mkdir_at("gg");
    copy_file(at("m.gguf"), at("gg/x.gguf"));
    write_peft("peft", true);
    write_gguf_adapter(at("ad.gguf"));
    const char *paths[] = {at("m.safetensors"), at("m.gguf"), at("m.npz"),
                           at("sharded"), at("gg"), at("peft"),
                           at("ad.gguf")};
    char copies[7][256];
    for (int i = 0; i < 7; i++)
        snprintf(copies[i], sizeof(copies[i]), "%s", paths[i]);
    for (int i = 0; i < 7; i++) {
        long n = sweep_open(copies[i]);
        ck_assert_int_gt(n, 0);
        printf("formats: %s: %ld allocation failures, all clean\n",
               strrchr(copies[i], '/') + 1, n);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("formats");
    TCase *tc = tcase_create("table");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, files_by_extension);
    tcase_add_test(tc, files_by_magic);
    tcase_add_test(tc, unknown_files_name_the_path);
    tcase_add_test(tc, directories);
    tcase_add_test(tc, adapters);
    tcase_add_test(tc, save_by_extension);
    tcase_add_test(tc, sink_in_the_base_format);
    tcase_add_test(tc, every_allocation_of_an_open_may_fail);
    tcase_add_test(tc, every_allocation_of_a_write_may_fail);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
