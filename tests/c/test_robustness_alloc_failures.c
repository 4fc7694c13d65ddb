/* Allocation-failure injection: fail the Nth allocation, for every N along
 * a full merge (models, plan, execution on 2 threads, file sink, stats,
 * adapters). Each run must end in LM_OK or LM_ERR_OUT_OF_MEMORY (or a
 * status the failed step reports) without crashing, and every allocation
 * must be freed (counted here; LeakSanitizer checks it again in CI).
 *
 * The same sweep runs over the allocations that do not go through the
 * context: cJSON's (hooks installed in this test binary only; libcjson is
 * shared, so they apply to the library's calls) while reading and writing
 * every JSON-bearing format, and the LAPACK workspaces of the SVD-family
 * and ESM merges (which the library takes from the context allocator). */
#define _XOPEN_SOURCE 700 /* nftw */
#include <cJSON.h>
#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/json_oom.h"
#include "linalg/linalg.h"
#include "libmerge/experimental/purify_tune.h"
#include "testutil.h"

/* A full pipeline; returns the first failing status. */
static int flat_score(double value, const lm_model *merged, double *score,
                      void *user)
{
    (void)value;
    (void)merged;
    (void)user;
    *score = 0;
    return 0;
}

static lm_status pipeline(lm_context *ctx, const char *dir)
{
    lm_status st;
    lm_model *base = NULL, *a = NULL, *b = NULL, *out = NULL;
    lm_plan *p = NULL;
    lm_lora *l = NULL;
    lm_stats *stats = NULL;
    lm_file_sink *sink = NULL;
    lm_tensor *t = NULL, *la = NULL, *lb = NULL;
    float rows[6 * 4] = {0};
    char path[256];
    snprintf(path, sizeof(path), "%s/out.safetensors", dir);

#define STEP(expr) if ((st = (expr)) != LM_OK) goto done
    STEP(lm_model_create(ctx, &base));
    STEP(lm_model_create(ctx, &a));
    STEP(lm_model_create(ctx, &b));
    const char *names[] = {"w0", "w1", "w2", "w3", "w4"};
    for (int i = 0; i < 5; i++) {
        lm_model *ms[3] = {base, a, b};
        for (int m = 0; m < 3; m++) {
            STEP(lm_tensor_create(ctx, LM_F32, 2, (int64_t[]){6, 4}, &t));
            STEP(lm_model_add(ms[m], names[i], t));
            t = NULL;
        }
    }
    STEP(lm_lora_create(ctx, &l));
    STEP(lm_tensor_create(ctx, LM_F32, 2, (int64_t[]){2, 4}, &la));
    STEP(lm_tensor_create(ctx, LM_F32, 2, (int64_t[]){6, 2}, &lb));
    STEP(lm_lora_add(l, "w1", la, lb, 1.0));
    la = lb = NULL;
    STEP(lm_stats_create(ctx, &stats));
    STEP(lm_stats_observe(stats, 0, "w0", rows, 6, 4));
    STEP(lm_plan_create(ctx, "task_arithmetic", &p));
    STEP(lm_plan_set_string(p, "lambda", "0.5"));
    STEP(lm_plan_set_base(p, base));
    STEP(lm_plan_add_model(p, a, 1.0));
    STEP(lm_plan_add_model(p, b, 1.0));
    STEP(lm_plan_add_lora(p, l, 1.0));
    STEP(lm_plan_set_stats(p, stats));
    STEP(lm_plan_execute(p, &out));
    STEP(lm_safetensors_sink_create(ctx, path, NULL, &sink));
    STEP(lm_plan_execute_to(p, lm_file_sink_vtable(sink)));
    lm_purify_options po = LM_PURIFY_OPTIONS_INIT;
    double keeps[] = {1.0, 0.5};
    STEP(lm_plan_set_purify(p, &po));
    STEP(lm_plan_tune_purify(p, stats, keeps, 2, NULL, NULL));
    /* a search keeps the purified task vectors for its evaluations */
    STEP(lm_plan_search(p, "lambda", 0.0, 1.0, 0.1, 3, flat_score, NULL, NULL,
                        NULL));
#undef STEP
done:
    lm_file_sink_destroy(sink);
    unlink(path);
    lm_tensor_destroy(t);
    lm_tensor_destroy(la);
    lm_tensor_destroy(lb);
    lm_model_destroy(out);
    lm_plan_destroy(p);
    lm_stats_destroy(stats);
    lm_lora_destroy(l);
    lm_model_destroy(base);
    lm_model_destroy(a);
    lm_model_destroy(b);
    return st;
}

START_TEST(every_allocation_may_fail)
{
    char dir[] = "/tmp/lm_oom_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    long n = 1, failures = 0;
    for (;; n++) {
        struct tu_failing_alloc f;
        tu_failing_alloc_init(&f, n);
        lm_context_options o = LM_CONTEXT_OPTIONS_INIT;
        o.allocator = &f.alloc;
        o.n_threads = 2;
        lm_context *ctx = NULL;
        lm_status st = lm_context_create(&o, &ctx);
        if (st == LM_OK) {
            st = pipeline(ctx, dir);
            lm_context_destroy(ctx);
        }
        ck_assert_msg(atomic_load(&f.live) == 0,
                      "failing allocation %ld: %ld blocks leaked", n,
                      atomic_load(&f.live));
        if (atomic_load(&f.count) < n) {
            ck_assert_msg(st == LM_OK, "no failure injected but status %d",
                          (int)st);
            break; /* the whole pipeline ran with fewer allocations */
        }
        ck_assert_msg(st != LM_OK, "allocation %ld failed silently", n);
        failures++;
    }
    printf("alloc_failures: %ld injected failures, all clean\n", failures);
    ck_assert_int_gt(failures, 50);
    rmdir(dir);
}
END_TEST

/* ---- cJSON ----------------------------------------------------------- */

/* cJSON keeps its hooks in libcjson's globals: one sweep state for the
 * test process (the library itself must not install hooks). */
static struct {
    atomic_long count, fail_at, live;
} cj;

static void *cj_malloc(size_t n)
{
    long k = atomic_fetch_add(&cj.count, 1) + 1;
    if (k == atomic_load(&cj.fail_at))
        return NULL;
    void *p = malloc(n);
    if (p)
        atomic_fetch_add(&cj.live, 1);
    return p;
}

static void cj_free(void *p)
{
    if (p)
        atomic_fetch_sub(&cj.live, 1);
    free(p);
}

static void cj_arm(long fail_at)
{
    atomic_store(&cj.count, 0);
    atomic_store(&cj.live, 0);
    atomic_store(&cj.fail_at, fail_at);
}

/* A GGUF model with an i64 and a string-array key/value (whose text the
 * reader builds with cJSON): tests/fuzz/corpus/gguf/model.gguf. */
static const unsigned char gguf_model[] = {
     0x47, 0x47, 0x55, 0x46, 0x03, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
     0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
     0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x67, 0x65, 0x6e, 0x65,
     0x72, 0x61, 0x6c, 0x2e, 0x61, 0x72, 0x63, 0x68, 0x69, 0x74, 0x65, 0x63,
     0x74, 0x75, 0x72, 0x65, 0x08, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00,
     0x00, 0x00, 0x00, 0x00, 0x6c, 0x6c, 0x61, 0x6d, 0x61, 0x05, 0x00, 0x00,
     0x00, 0x00, 0x00, 0x00, 0x00, 0x74, 0x2e, 0x61, 0x72, 0x72, 0x09, 0x00,
     0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
     0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x61, 0x01,
     0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x62, 0x03, 0x00, 0x00, 0x00,
     0x00, 0x00, 0x00, 0x00, 0x74, 0x2e, 0x6e, 0x0a, 0x00, 0x00, 0x00, 0x07,
     0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
     0x00, 0x00, 0x00, 0x77, 0x02, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00,
     0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
     0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
     0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x68, 0x01, 0x00, 0x00,
     0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
     0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
     0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x3f,
     0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x80, 0x3f,
     0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x00,
     0x00, 0x00, 0x00, 0x00, 0x00, 0x3c, 0x00, 0x3c, 0x00, 0x3c, 0x00, 0x3c,
     0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
     0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00
};

struct json_fixture {
    char dir[64];       /* inputs */
    char single[128];   /* model.safetensors (with __metadata__) */
    char sharded[128];  /* directory: shards + model.safetensors.index.json */
    char peft[128];     /* PEFT adapter directory */
    char stats[128];    /* .lmstats file */
    char gguf[128];     /* GGUF with key/values */
    char out[128];      /* where the write cases write; empty between runs */
};

static const char *meta_keys[] = {"format", "note"};
static const char *meta_values[] = {"pt", "written under a failing cJSON"};

/* Three tensors (12 data bytes each): shards of 16 bytes hold one each. */
static lm_model *json_model(lm_context *ctx, const char *prefix)
{
    lm_model *m = NULL;
    ck_assert_ok(lm_model_create(ctx, &m));
    const char *names[] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++) {
        char name[128];
        snprintf(name, sizeof(name), "%s%s.weight", prefix, names[i]);
        tu_add_random(ctx, m, name, LM_F32, 1, (int64_t[]){3}, (uint64_t)i);
    }
    return m;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fputs(text, f) >= 0, 1);
    ck_assert_int_eq(fclose(f), 0);
}

static void json_fixture_setup(struct json_fixture *fx)
{
    snprintf(fx->dir, sizeof(fx->dir), "/tmp/lm_oom_json_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(fx->dir));
    snprintf(fx->single, sizeof(fx->single), "%s/model.safetensors", fx->dir);
    snprintf(fx->sharded, sizeof(fx->sharded), "%s/sharded", fx->dir);
    snprintf(fx->peft, sizeof(fx->peft), "%s/peft", fx->dir);
    snprintf(fx->stats, sizeof(fx->stats), "%s/x.lmstats", fx->dir);
    snprintf(fx->gguf, sizeof(fx->gguf), "%s/model.gguf", fx->dir);
    snprintf(fx->out, sizeof(fx->out), "%s/out", fx->dir);
    ck_assert_int_eq(mkdir(fx->out, 0755), 0);
    ck_assert_int_eq(mkdir(fx->peft, 0755), 0);

    lm_context *ctx = tu_context(1, 1);
    lm_model *m = json_model(ctx, "");
    lm_safetensors_sink_options o = LM_SAFETENSORS_SINK_OPTIONS_INIT;
    o.metadata_keys = meta_keys;
    o.metadata_values = meta_values;
    o.n_metadata = 2;
    ck_assert_ok(lm_safetensors_write(ctx, m, fx->single, &o));
    o.max_shard_bytes = 16;
    ck_assert_ok(lm_safetensors_write(ctx, m, fx->sharded, &o));
    lm_model_destroy(m);

    /* PEFT: lora_A [r=2, in=3], lora_B [out=4, r=2] for two modules, one
     * of them matched by rank_pattern / alpha_pattern. */
    lm_model *ad = NULL;
    ck_assert_ok(lm_model_create(ctx, &ad));
    const char *mods[] = {"layers.0.q", "layers.1.q"};
    for (int i = 0; i < 2; i++) {
        char name[128];
        snprintf(name, sizeof(name), "base_model.model.%s.lora_A.weight",
                 mods[i]);
        tu_add_random(ctx, ad, name, LM_F32, 2, (int64_t[]){2, 3}, 10u + i);
        snprintf(name, sizeof(name), "base_model.model.%s.lora_B.weight",
                 mods[i]);
        tu_add_random(ctx, ad, name, LM_F32, 2, (int64_t[]){4, 2}, 20u + i);
    }
    char path[192];
    snprintf(path, sizeof(path), "%s/adapter_model.safetensors", fx->peft);
    ck_assert_ok(lm_safetensors_write(ctx, ad, path, NULL));
    lm_model_destroy(ad);
    snprintf(path, sizeof(path), "%s/adapter_config.json", fx->peft);
    write_text(path, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4,"
                     " \"use_rslora\": false, \"target_modules\": [\"q\"],"
                     " \"rank_pattern\": {\"layers.1.q\": 2},"
                     " \"alpha_pattern\": {\"layers.1.q\": 8.0}}");

    lm_stats *st = NULL;
    float rows[2 * 3] = {1, 2, 3, 4, 5, 6};
    ck_assert_ok(lm_stats_create(ctx, &st));
    ck_assert_ok(lm_stats_observe(st, 0, "a.weight", rows, 2, 3));
    ck_assert_ok(lm_stats_save(st, fx->stats));
    lm_stats_destroy(st);

    FILE *f = fopen(fx->gguf, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(gguf_model, 1, sizeof(gguf_model), f),
                      sizeof(gguf_model));
    ck_assert_int_eq(fclose(f), 0);
    lm_context_destroy(ctx);
}

static int remove_entry(const char *path, const struct stat *sb, int type,
                        struct FTW *ftw)
{
    (void)sb;
    (void)type;
    (void)ftw;
    return remove(path);
}

static void remove_tree(const char *path)
{
    nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Files (not directories) under the output directory. */
static long out_files;
static int count_file(const char *path, const struct stat *sb, int type,
                      struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    if (type != FTW_D && type != FTW_DP) {
        fprintf(stderr, "left behind: %s\n", path);
        out_files++;
    }
    return 0;
}

static long files_under(const char *dir)
{
    out_files = 0;
    nftw(dir, count_file, 16, FTW_PHYS);
    return out_files;
}

static lm_status read_single(lm_context *ctx, const struct json_fixture *fx)
{
    lm_model *m = NULL;
    lm_status st = lm_safetensors_read(ctx, fx->single, &m);
    lm_model_destroy(m);
    return st;
}

static lm_status read_sharded(lm_context *ctx, const struct json_fixture *fx)
{
    lm_model *m = NULL;
    lm_status st = lm_model_open(ctx, fx->sharded, &m);
    lm_model_destroy(m);
    return st;
}

static lm_status read_peft(lm_context *ctx, const struct json_fixture *fx)
{
    lm_lora *l = NULL;
    lm_status st = lm_peft_read(ctx, fx->peft, &l);
    lm_lora_destroy(l);
    return st;
}

static lm_status read_stats(lm_context *ctx, const struct json_fixture *fx)
{
    lm_stats *s = NULL;
    lm_status st = lm_stats_load(ctx, fx->stats, &s);
    lm_stats_destroy(s);
    return st;
}

static lm_status read_gguf(lm_context *ctx, const struct json_fixture *fx)
{
    lm_model *m = NULL;
    lm_status st = lm_gguf_read(ctx, fx->gguf, &m);
    lm_model_destroy(m);
    return st;
}

static lm_status write_st(lm_context *ctx, const struct json_fixture *fx,
                          uint64_t shard)
{
    char path[192];
    snprintf(path, sizeof(path), "%s/%s", fx->out,
             shard ? "sharded" : "model.safetensors");
    lm_model *m = json_model(ctx, "");
    lm_safetensors_sink_options o = LM_SAFETENSORS_SINK_OPTIONS_INIT;
    o.metadata_keys = meta_keys;
    o.metadata_values = meta_values;
    o.n_metadata = 2;
    o.max_shard_bytes = shard;
    lm_status st = lm_safetensors_write(ctx, m, path, &o);
    lm_model_destroy(m);
    return st;
}

static lm_status write_single(lm_context *ctx, const struct json_fixture *fx)
{
    return write_st(ctx, fx, 0);
}

static lm_status write_sharded(lm_context *ctx, const struct json_fixture *fx)
{
    return write_st(ctx, fx, 16);
}

static lm_status write_gguf(lm_context *ctx, const struct json_fixture *fx)
{
    char path[192];
    snprintf(path, sizeof(path), "%s/model.gguf", fx->out);
    lm_model *kv = NULL, *m = NULL;
    lm_status st = lm_gguf_read(ctx, fx->gguf, &kv);
    if (st == LM_OK) {
        m = json_model(ctx, "blk.0.");
        lm_gguf_options o = LM_GGUF_OPTIONS_INIT;
        o.kv_from = kv;
        o.metadata_keys = meta_keys;
        o.metadata_values = meta_values;
        o.n_metadata = 2;
        st = lm_gguf_write(ctx, m, path, &o);
    }
    lm_model_destroy(m);
    lm_model_destroy(kv);
    return st;
}

static const struct json_case {
    const char *name;
    lm_status (*run)(lm_context *, const struct json_fixture *);
    long min_allocations; /* cJSON allocations a clean run makes, at least */
} json_cases[] = {
    {"read safetensors", read_single, 1},
    {"read sharded index", read_sharded, 1},
    {"read PEFT adapter", read_peft, 1},
    /* binary formats: no JSON (the sweep checks that none is built) */
    {"read stats file", read_stats, 0},
    {"read GGUF", read_gguf, 0},
    {"write GGUF", write_gguf, 0},
    /* Found by this sweep: a failed cJSON_AddItemToObject in the
     * safetensors header and index builders leaked the item and dropped
     * "shape" / "data_offsets" from a header that was then committed. */
    {"write safetensors", write_single, 1},
    {"write sharded safetensors", write_sharded, 1},
};

/* Fail the k-th cJSON allocation for k = 1, 2, ... until a run makes
 * fewer than k: every failed run must report out of memory, free every
 * cJSON and context allocation, and leave no file behind. */
START_TEST(every_cjson_allocation_may_fail)
{
    const struct json_case *c = &json_cases[_i];
    struct json_fixture fx;
    cJSON_Hooks hooks = {cj_malloc, cj_free};
    cJSON_InitHooks(&hooks);
    json_fixture_setup(&fx);
    long k = 1, failures = 0;
    for (;; k++) {
        ck_assert_msg(k < 100000, "%s: no run succeeded", c->name);
        struct tu_failing_alloc f;
        tu_failing_alloc_init(&f, 0);
        lm_context_options o = LM_CONTEXT_OPTIONS_INIT;
        o.allocator = &f.alloc;
        o.n_threads = 2;
        lm_context *ctx = NULL;
        ck_assert_ok(lm_context_create(&o, &ctx));
        cj_arm(k);
        lm_status st = c->run(ctx, &fx);
        long made = atomic_load(&cj.count);
        atomic_store(&cj.fail_at, 0); /* keeps the counts */
        char err[512];
        snprintf(err, sizeof(err), "%s", lm_context_error(ctx));
        lm_context_destroy(ctx);
        ck_assert_msg(atomic_load(&cj.live) == 0,
                      "%s, cJSON allocation %ld failed: %ld cJSON blocks "
                      "leaked", c->name, k, atomic_load(&cj.live));
        ck_assert_msg(atomic_load(&f.live) == 0,
                      "%s, cJSON allocation %ld failed: %ld context blocks "
                      "leaked", c->name, k, atomic_load(&f.live));
        if (made < k) {
            ck_assert_msg(st == LM_OK, "%s: no failure injected but %d (%s)",
                          c->name, (int)st, err);
            ck_assert_msg(made >= c->min_allocations,
                          "%s: %ld cJSON allocations, expected >= %ld",
                          c->name, made, c->min_allocations);
            break;
        }
        ck_assert_msg(st != LM_OK, "%s: cJSON allocation %ld failed "
                      "silently", c->name, k);
        ck_assert_msg(st == LM_ERR_OUT_OF_MEMORY ||
                          strstr(err, "out of memory"),
                      "%s, cJSON allocation %ld failed: status %d (%s) is "
                      "not out of memory", c->name, k, (int)st, err);
        ck_assert_msg(files_under(fx.out) == 0,
                      "%s, cJSON allocation %ld failed: files left behind",
                      c->name, k);
        failures++;
    }
    printf("alloc_failures: %s: %ld cJSON allocation failures, all clean\n",
           c->name, failures);
    cJSON_InitHooks(NULL);
    remove_tree(fx.dir);
}
END_TEST

/* The readers tell a cJSON parse that ran out of memory from malformed
 * JSON by running cJSON's grammar again (lib/io/json_oom.c): it must accept
 * exactly what cJSON accepts, here on many mutations of JSON texts that
 * cover every branch of the grammar. */
START_TEST(json_grammar_matches_cjson)
{
    static const char *const seeds[] = {
        "{\"__metadata__\":{\"format\":\"pt\"},\"a.weight\":{\"dtype\":"
        "\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}  ",
        "{\"metadata\": {\"total_size\": 72}, \"weight_map\": {\"a\": "
        "\"model-00001-of-00002.safetensors\"}}\n",
        "[1, -2.5e+3, 0.5E-2, 1e, -, 01, true, false, null, \"\\u00e9\\/\"]",
        "\xEF\xBB\xBF {\"k\" : [ [], {}, [[[\"x\"]]], \"\\ud83d\\ude00\" ] }",
        "\"\\b\\f\\n\\r\\t\\\"\\\\\\uZZZZ\\udc00\"",
        "{\"r\": 8, \"lora_alpha\": 16.0, \"use_rslora\": false, "
        "\"rank_pattern\": {\"q\": 4}}",
        /* numbers of 63 and 64 bytes: cJSON up to 1.7.18 reads 63 */
        "[123456789012345678901234567890123456789012345678901234567890123, "
        "-1.2345678901234567890123456789012345678901234567890123456789e+1,"
        "1.e5, -.5e-, 2E+x]",
    };
    static const char alphabet[] = "{}[]:,\"\\ u0123456789abcdefABCDEF.+-eE"
                                   "ntrlsx\t\n\xEF\xBB\xBF";
    cJSON_InitHooks(NULL);
    char buf[512];
    uint64_t rng = 0x9E3779B97F4A7C15u;
    long agree = 0, accepted = 0, unsure = 0;
    for (long iter = 0; iter < 200000; iter++) {
        const char *seed = seeds[iter % (long)(sizeof(seeds) / sizeof(*seeds))];
        size_t len = strlen(seed);
        memcpy(buf, seed, len);
        int edits = (int)(iter % 4);
        for (int e = 0; e < edits; e++) {
            rng = rng * 6364136223846793005u + 1442695040888963407u;
            size_t pos = len ? (size_t)(rng >> 33) % len : 0;
            char c = alphabet[(rng >> 20) % (sizeof(alphabet) - 1)];
            switch ((rng >> 10) % 4) {
            case 0: buf[pos] = c; break;                      /* replace */
            case 1:                                           /* insert */
                if (len + 1 < sizeof(buf)) {
                    memmove(buf + pos + 1, buf + pos, len - pos);
                    buf[pos] = c;
                    len++;
                }
                break;
            case 2:                                           /* delete */
                if (len) {
                    memmove(buf + pos, buf + pos + 1, len - pos - 1);
                    len--;
                }
                break;
            default: len = pos; break;                        /* truncate */
            }
        }
        cJSON *j = cJSON_ParseWithLength(buf, len);
        enum lm__json_grammar ours = lm__json_cjson_grammar(buf, len);
        tu_check(ours == LM__JSON_UNSURE ||
                     (j != NULL) == (ours == LM__JSON_ACCEPTED),
                 "cJSON %s but json_oom %s: \"%.*s\"",
                 j ? "accepts" : "refuses",
                 ours == LM__JSON_ACCEPTED ? "accepts" : "refuses", (int)len,
                 buf);
        accepted += j != NULL;
        unsure += ours == LM__JSON_UNSURE;
        cJSON_Delete(j);
        agree++;
    }
    /* nesting: cJSON stops at CJSON_NESTING_LIMIT */
    for (int depth = CJSON_NESTING_LIMIT - 1; depth <= CJSON_NESTING_LIMIT + 1;
         depth++) {
        char *deep = malloc(2 * (size_t)depth + 1);
        ck_assert_ptr_nonnull(deep);
        memset(deep, '[', (size_t)depth);
        memset(deep + depth, ']', (size_t)depth);
        cJSON *j = cJSON_ParseWithLength(deep, 2 * (size_t)depth);
        ck_assert_int_eq(j != NULL,
                         lm__json_cjson_grammar(deep, 2 * (size_t)depth) ==
                             LM__JSON_ACCEPTED);
        cJSON_Delete(j);
        free(deep);
    }
    printf("alloc_failures: json grammar: %ld texts (%ld accepted, %ld with "
           "numbers of 64+ bytes), cJSON agrees\n", agree, accepted, unsure);
    ck_assert_int_gt(accepted, 1000);
    ck_assert_int_gt(agree - accepted, 1000);
}
END_TEST

/* ---- LAPACK workspaces ------------------------------------------------ */

/* tu_add_random, but failing allocations are a status, not an abort. */
static lm_status add_matrix(lm_context *ctx, lm_model *m, const char *name,
                            int64_t rows, int64_t cols, uint64_t seed)
{
    lm_tensor *t = NULL;
    lm_status st = lm_tensor_create(ctx, LM_F32, 2, (int64_t[]){rows, cols},
                                    &t);
    if (st != LM_OK)
        return st;
    float *v = lm_tensor_data(t);
    for (int64_t i = 0; i < rows * cols; i++)
        v[i] = (float)(((uint64_t)i * 2654435761u + seed * 40503u) % 1000) /
                   500.0f - 1.0f;
    st = lm_model_add(m, name, t);
    if (st != LM_OK)
        lm_tensor_destroy(t);
    return st;
}

/* One merge with `method` over a base and two fine-tunes of two matrices
 * (with activation statistics, which ESM's essential subspaces need). */
static lm_status linalg_merge(lm_context *ctx, const char *method,
                              bool exact_svd, const char *whiten)
{
    lm_status st;
    lm_model *ms[3] = {NULL, NULL, NULL}, *out = NULL;
    lm_plan *p = NULL;
    lm_stats *stats = NULL;
    float rows[8 * 6];
    for (int i = 0; i < 8 * 6; i++)
        rows[i] = (float)((i * 7) % 11) - 5.0f;
#define STEP(expr) if ((st = (expr)) != LM_OK) goto done
    for (int m = 0; m < 3; m++) {
        STEP(lm_model_create(ctx, &ms[m]));
        STEP(add_matrix(ctx, ms[m], "blk.0.weight", 5, 6, (uint64_t)m + 1));
        STEP(add_matrix(ctx, ms[m], "blk.1.weight", 7, 4, (uint64_t)m + 11));
    }
    STEP(lm_stats_create(ctx, &stats));
    for (size_t m = 0; m < 2; m++) {
        STEP(lm_stats_observe(stats, m, "blk.0.weight", rows, 8, 6));
        STEP(lm_stats_observe(stats, m, "blk.1.weight", rows, 8, 4));
    }
    STEP(lm_plan_create(ctx, method, &p));
    STEP(lm_plan_set_base(p, ms[0]));
    STEP(lm_plan_add_model(p, ms[1], 1.0));
    STEP(lm_plan_add_model(p, ms[2], 1.0));
    STEP(lm_plan_set_stats(p, stats));
    if (exact_svd)
        STEP(lm_plan_set_float(p, "svd_tolerance", 0.0));
    if (whiten)
        STEP(lm_plan_set_string(p, "whiten", whiten));
    STEP(lm_plan_execute(p, &out));
#undef STEP
done:
    lm_model_destroy(out);
    lm_plan_destroy(p);
    lm_stats_destroy(stats);
    for (int m = 0; m < 3; m++)
        lm_model_destroy(ms[m]);
    return st;
}

/* Merges whose strategies run SVDs, eigendecompositions and polar
 * factors, whose LAPACK workspaces come from the context allocator (LAPACKE
 * used to malloc them, out of the sweep's reach): the sweep must fail some
 * of them. The strategies report those failures as "out of memory merging
 * '<tensor>'", but every error set is also logged, so the log shows which
 * workspace failed. */
static const struct linalg_case {
    const char *method;
    const char *routines[3]; /* whose workspace failures the sweep reaches */
    /* svd_tolerance 0: whether the precision rule takes a Gram route
     * depends on an error estimate from the data, so dgesdd is reached
     * for certain only when the exact route is forced. */
    bool exact_svd;
    /* tsv's released polar factor takes the Gram route (dsyevd) even at
     * svd_tolerance 0; the rank-aware default's does not. */
    const char *whiten;
} linalg_cases[] = {
    {"tsv", {"SVD (dgesdd)", "eigendecomposition (dsyevd)"}, true,
     "released"},
    {"tsv", {"SVD (dgesdd)"}, true, NULL},
    /* The rank-aware polar factors' Gram route (default tolerance). */
    {"iso_c", {"eigendecomposition"}, false, NULL},
    {"iso_c", {"SVD (dgesdd)"}, true, NULL},
    {"knots", {"SVD (dgesdd)"}, false, NULL},
    {"esm", {"eigendecomposition (dsyevd)"}, false, NULL},
};

struct workspace_log {
    const struct linalg_case *c;
    atomic_int seen[3];
};

static void workspace_logged(int level, const char *message, void *user)
{
    struct workspace_log *w = user;
    (void)level;
    if (!strstr(message, "out of memory for the LAPACK workspace"))
        return;
    for (int r = 0; r < 3 && w->c->routines[r]; r++)
        if (strstr(message, w->c->routines[r]))
            atomic_store(&w->seen[r], 1);
}

START_TEST(every_linalg_allocation_may_fail)
{
    const struct linalg_case *c = &linalg_cases[_i];
    const char *method = c->method;
    struct workspace_log w = {c, {0, 0, 0}};
    long failures = 0;
    for (long n = 1;; n++) {
        ck_assert_msg(n < 100000, "%s: no run succeeded", method);
        struct tu_failing_alloc f;
        tu_failing_alloc_init(&f, n);
        lm_context_options o = LM_CONTEXT_OPTIONS_INIT;
        o.allocator = &f.alloc;
        /* One thread: the n-th allocation is the same one in every run,
         * so every workspace is failed once (with two, the order varies
         * and a sweep can step over one). */
        o.n_threads = 1;
        o.log = workspace_logged;
        o.log_user = &w;
        o.log_level = LM_LOG_ERROR;
        lm_context *ctx = NULL;
        lm_status st = lm_context_create(&o, &ctx);
        char err[512] = "";
        if (st == LM_OK) {
            st = linalg_merge(ctx, method, c->exact_svd, c->whiten);
            snprintf(err, sizeof(err), "%s", lm_context_error(ctx));
            lm_context_destroy(ctx);
        }
        ck_assert_msg(atomic_load(&f.live) == 0,
                      "%s, allocation %ld failed: %ld blocks leaked",
                      method, n, atomic_load(&f.live));
        if (atomic_load(&f.count) < n) {
            ck_assert_msg(st == LM_OK, "%s: no failure injected but %d (%s)",
                          method, (int)st, err);
            break;
        }
        ck_assert_msg(st == LM_ERR_OUT_OF_MEMORY,
                      "%s, allocation %ld failed: status %d (%s)", method,
                      n, (int)st, err);
        failures++;
    }
    printf("alloc_failures: %s merge: %ld injected failures, all clean\n",
           method, failures);
    for (int r = 0; r < 3 && c->routines[r]; r++)
        ck_assert_msg(atomic_load(&w.seen[r]),
                      "%s: the sweep failed no %s workspace", method,
                      c->routines[r]);
}
END_TEST

/* The linear algebra itself, routine by routine: each must report a
 * failed LAPACK workspace allocation as out of memory, naming it. */
#define LA_M 9
#define LA_N 6
struct la_buffers {
    double a[LA_M * LA_N], g[LA_N * LA_N], u[LA_M * LA_N], s[LA_N],
        vt[LA_N * LA_N], q[LA_M * LA_N], l[LA_N * LA_N], b[LA_N * 2];
};

static void la_fill(struct la_buffers *x)
{
    for (int i = 0; i < LA_M * LA_N; i++)
        x->a[i] = (double)((i * 37) % 17) / 8.0 - 1.0;
    /* g = a^T a + I: symmetric positive definite */
    lm__gemm(true, false, LA_N, LA_N, LA_M, 1.0, x->a, x->a, 0.0, x->g);
    for (int i = 0; i < LA_N; i++)
        x->g[i * LA_N + i] += 1.0;
    for (int i = 0; i < LA_N * 2; i++)
        x->b[i] = (double)i - 5.0;
}

static lm_status la_svd(lm_context *ctx, struct la_buffers *x)
{
    return lm__svd(ctx, x->a, LA_M, LA_N, x->u, x->s, x->vt);
}

static lm_status la_svd_fallback(lm_context *ctx, struct la_buffers *x)
{
    lm__svd_force_fallback_once();
    return lm__svd(ctx, x->a, LA_M, LA_N, x->u, x->s, x->vt);
}

static lm_status la_eigh(lm_context *ctx, struct la_buffers *x)
{
    return lm__eigh(ctx, x->g, LA_N, x->s, x->vt);
}

static lm_status la_qr(lm_context *ctx, struct la_buffers *x)
{
    return lm__qr_q(ctx, x->a, LA_M, LA_N, x->q);
}

static lm_status la_cholesky(lm_context *ctx, struct la_buffers *x)
{
    lm_status st = lm__cholesky(ctx, x->g, LA_N, 0.0, x->l);
    return st == LM_OK ? lm__cholesky_solve(ctx, x->l, LA_N, x->b, 2) : st;
}

static lm_status la_randomized(lm_context *ctx, struct la_buffers *x)
{
    return lm__svd_randomized(ctx, x->a, LA_M, LA_N, 2, 1, 1, 3, x->u, x->s,
                              x->vt);
}

static lm_status la_polar(lm_context *ctx, struct la_buffers *x)
{
    return lm__polar(ctx, x->a, LA_M, LA_N, x->u);
}

static const struct linalg_call {
    const char *name;
    lm_status (*run)(lm_context *, struct la_buffers *);
    const char *const routines[3]; /* each named by a failure, at least */
} linalg_calls[] = {
    {"svd", la_svd, {"SVD (dgesdd)"}},
    {"svd fallback", la_svd_fallback, {"SVD (dgesvd)"}},
    {"eigh", la_eigh, {"eigendecomposition (dsyevd)"}},
    {"qr", la_qr, {"QR (dgeqrf/dorgqr)"}},
    {"cholesky", la_cholesky, {"Cholesky (dpotrf)", "Cholesky solve (dpotrs)"}},
    {"randomized svd", la_randomized, {"QR (dgeqrf/dorgqr)", "SVD (dgesdd)"}},
    {"polar", la_polar, {"eigendecomposition (dsyevd)"}},
};

START_TEST(every_workspace_may_fail)
{
    const struct linalg_call *c = &linalg_calls[_i];
    bool named[3] = {false, false, false};
    long failures = 0;
    for (long n = 1;; n++) {
        ck_assert_msg(n < 1000, "%s: no run succeeded", c->name);
        struct tu_failing_alloc f;
        tu_failing_alloc_init(&f, 0);
        lm_context_options o = LM_CONTEXT_OPTIONS_INIT;
        o.allocator = &f.alloc;
        o.n_threads = 1;
        lm_context *ctx = NULL;
        ck_assert_ok(lm_context_create(&o, &ctx));
        struct la_buffers x;
        la_fill(&x);
        long before = atomic_load(&f.count);
        f.fail_at = before + n; /* counted from the call on */
        lm_status st = c->run(ctx, &x);
        long made = atomic_load(&f.count) - before;
        f.fail_at = 0;
        char err[512];
        snprintf(err, sizeof(err), "%s", lm_context_error(ctx));
        lm_context_destroy(ctx);
        ck_assert_msg(atomic_load(&f.live) == 0,
                      "%s, allocation %ld failed: %ld blocks leaked", c->name,
                      n, atomic_load(&f.live));
        if (made < n) {
            ck_assert_msg(st == LM_OK, "%s: %d (%s)", c->name, (int)st, err);
            break;
        }
        ck_assert_msg(st == LM_ERR_OUT_OF_MEMORY && strstr(err, "out of memory"),
                      "%s, allocation %ld failed: status %d (%s)", c->name, n,
                      (int)st, err);
        for (int r = 0; r < 3 && c->routines[r]; r++)
            named[r] = named[r] ||
                       (strstr(err, c->routines[r]) &&
                        strstr(err, "out of memory for the LAPACK workspace"));
        failures++;
    }
    for (int r = 0; r < 3 && c->routines[r]; r++)
        ck_assert_msg(named[r], "%s: no failure of the %s workspace", c->name,
                      c->routines[r]);
    printf("alloc_failures: %s: %ld injected failures, all clean\n", c->name,
           failures);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("alloc_failures");
    TCase *tc = tcase_create("reliability");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, every_allocation_may_fail);
    tcase_add_loop_test(tc, every_linalg_allocation_may_fail, 0,
                        (int)(sizeof(linalg_cases) / sizeof(linalg_cases[0])));
    tcase_add_loop_test(tc, every_workspace_may_fail, 0,
                        (int)(sizeof(linalg_calls) / sizeof(linalg_calls[0])));
    tcase_add_test(tc, json_grammar_matches_cjson);
    tcase_add_loop_test(tc, every_cjson_allocation_may_fail, 0,
                        (int)(sizeof(json_cases) / sizeof(json_cases[0])));
    suite_add_tcase(s, tc);
    return tu_run(s);
}
