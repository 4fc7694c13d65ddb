/* The file readers against hostile input (issue 19): paths that are not
 * regular files, name tables that would make loading quadratic, declared
 * sizes that would make the reader allocate far more than the file, and
 * inputs that used to be accepted silently or reported misleadingly.
 * Every file is built byte by byte here, independent of the writers. */
#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "libmerge/gguf.h"
#include "libmerge/npz.h"
#include "libmerge/peft.h"
#include "libmerge/safetensors.h"
#include "libmerge/stats.h"
#include "testutil.h"

static char dir[64];

static const char *in_dir(const char *name)
{
    static char buf[4][256];
    static int next;
    char *p = buf[next++ % 4];
    snprintf(p, 256, "%s/%s", dir, name);
    return p;
}

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/lm_hostile_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* A growable byte buffer for building files. */
struct buf {
    unsigned char *p;
    size_t n, cap;
};

static void put(struct buf *b, const void *data, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2;
        b->p = realloc(b->p, b->cap);
        ck_assert_ptr_nonnull(b->p);
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
}

static void put_le(struct buf *b, uint64_t v, int bytes)
{
    unsigned char le[8];
    for (int i = 0; i < bytes; i++)
        le[i] = (unsigned char)(v >> (8 * i));
    put(b, le, (size_t)bytes);
}

static void put_str(struct buf *b, const char *s)
{
    put(b, s, strlen(s));
}

static void save(const char *path, const struct buf *b)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(b->p, 1, b->n, f), b->n);
    ck_assert_int_eq(fclose(f), 0);
}

/* A safetensors file: `header` JSON (taken as is, padded with spaces)
 * and `data_len` zero bytes of data. */
static const char *safetensors_file(const char *name, const char *header,
                                    size_t header_len, size_t data_len)
{
    struct buf b = {0};
    size_t padded = (header_len + 7) / 8 * 8;
    put_le(&b, padded, 8);
    put(&b, header, header_len);
    for (size_t i = header_len; i < padded; i++)
        put(&b, " ", 1);
    for (size_t i = 0; i < data_len; i++)
        put(&b, "", 1);
    const char *path = in_dir(name);
    save(path, &b);
    free(b.p);
    return path;
}

static const char *small_safetensors(const char *name)
{
    const char *h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],"
                    "\"data_offsets\":[0,4]}}";
    return safetensors_file(name, h, strlen(h), 4);
}

/* GGUF v3 key/value pieces. */
static void gguf_key(struct buf *b, const char *key, uint32_t type)
{
    put_le(b, strlen(key), 8);
    put_str(b, key);
    put_le(b, type, 4);
}

/* Header with n_kv key/values (the caller appends them), then, after
 * gguf_finish, one F32 tensor "w" of 4 elements (or none). */
static void gguf_begin(struct buf *b, uint64_t n_tensors, uint64_t n_kv)
{
    put_le(b, 0x46554747u, 4);
    put_le(b, 3, 4);
    put_le(b, n_tensors, 8);
    put_le(b, n_kv, 8);
}

static void gguf_finish(struct buf *b, bool tensor)
{
    if (tensor) {
        put_le(b, 1, 8);
        put_str(b, "w");
        put_le(b, 1, 4); /* ndim */
        put_le(b, 4, 8); /* ne[0] */
        put_le(b, 0, 4); /* F32 */
        put_le(b, 0, 8); /* offset */
    }
    while (b->n % 32)
        put(b, "", 1);
    if (tensor)
        for (int i = 0; i < 16; i++)
            put(b, "", 1);
}

static void expect_error(lm_context *ctx, lm_status got, lm_status want,
                         const char *fragment, const char *what)
{
    ck_assert_msg(got == want, "%s: status %d (%s), wanted %d", what,
                  (int)got, lm_context_error(ctx), (int)want);
    ck_assert_msg(strstr(lm_context_error(ctx), fragment) != NULL,
                  "%s: message '%s' lacks '%s'", what,
                  lm_context_error(ctx), fragment);
}

/* ---- 1. Regular-file checks before any blocking open ---------------- */

/* Opening a FIFO with no writer blocks forever: the alarm turns a
 * regression into a failed test instead of a hang. */
START_TEST(fifo_and_devices_refused_by_name)
{
    alarm(20);
    lm_context *ctx = tu_context(1, 0);
    const char *fifo = in_dir("pipe.safetensors");
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    ck_assert_int_eq(mkfifo(in_dir("pipe.gguf"), 0600), 0);
    ck_assert_int_eq(mkfifo(in_dir("pipe.npz"), 0600), 0);
    ck_assert_int_eq(mkfifo(in_dir("pipe.stats"), 0600), 0);
    lm_model *m = NULL;
    lm_stats *s = NULL;
    lm_lora *l = NULL;
    const char *is_fifo = "is a FIFO, not a regular file";
    expect_error(ctx, lm_safetensors_read(ctx, fifo, &m), LM_ERR_IO, is_fifo,
                 "safetensors");
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), fifo));
    expect_error(ctx, lm_model_open(ctx, fifo, &m), LM_ERR_IO, is_fifo,
                 "model_open");
    expect_error(ctx, lm_gguf_read(ctx, in_dir("pipe.gguf"), &m), LM_ERR_IO,
                 is_fifo, "gguf");
    expect_error(ctx, lm_model_open(ctx, in_dir("pipe.gguf"), &m),
                 LM_ERR_IO, is_fifo, "model_open gguf");
    expect_error(ctx, lm_npz_read(ctx, in_dir("pipe.npz"), &m), LM_ERR_IO,
                 is_fifo, "npz");
    expect_error(ctx, lm_stats_load(ctx, in_dir("pipe.stats"), &s),
                 LM_ERR_IO, is_fifo, "stats");

    /* An index that is a FIFO, named directly or found in a directory,
     * and a regular index naming a shard that is a FIFO. */
    char sub[256];
    snprintf(sub, sizeof(sub), "%s/idx", dir);
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    const char *index = in_dir("idx/model.safetensors.index.json");
    ck_assert_int_eq(mkfifo(index, 0600), 0);
    expect_error(ctx, lm_model_open(ctx, index, &m), LM_ERR_IO, is_fifo,
                 "index");
    expect_error(ctx, lm_model_open(ctx, sub, &m), LM_ERR_IO, is_fifo,
                 "index in a directory");
    const char *index2 = in_dir("model.safetensors.index.json");
    FILE *f = fopen(index2, "w");
    fputs("{\"weight_map\":{\"w\":\"pipe.safetensors\"}}", f);
    fclose(f);
    expect_error(ctx, lm_model_open(ctx, index2, &m), LM_ERR_IO, is_fifo,
                 "shard");

    /* PEFT: the config, then the weights, as FIFOs. */
    snprintf(sub, sizeof(sub), "%s/peft", dir);
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    ck_assert_int_eq(mkfifo(in_dir("peft/adapter_config.json"), 0600), 0);
    small_safetensors("peft/adapter_model.safetensors");
    expect_error(ctx, lm_peft_read(ctx, sub, &l), LM_ERR_IO, is_fifo,
                 "adapter_config.json");
    snprintf(sub, sizeof(sub), "%s/peft2", dir);
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    f = fopen(in_dir("peft2/adapter_config.json"), "w");
    fputs("{\"r\": 1}", f);
    fclose(f);
    ck_assert_int_eq(mkfifo(in_dir("peft2/adapter_model.safetensors"), 0600),
                     0);
    expect_error(ctx, lm_peft_read(ctx, sub, &l), LM_ERR_IO, is_fifo,
                 "adapter_model.safetensors");

    /* A character device and a directory where a file is expected. */
    expect_error(ctx, lm_safetensors_read(ctx, "/dev/null", &m), LM_ERR_IO,
                 "'/dev/null' is a character device, not a regular file",
                 "device");
    expect_error(ctx, lm_gguf_read(ctx, dir, &m), LM_ERR_IO,
                 "is a directory, not a regular file", "directory");
    alarm(0);
    lm_context_destroy(ctx);
}
END_TEST

/* ---- 2. Linear-time parsers ------------------------------------------ */

static const char *metadata_safetensors(const char *name, int n_keys)
{
    struct buf h = {0};
    put_str(&h, "{\"__metadata__\":{");
    for (int i = 0; i < n_keys; i++) {
        char kv[64];
        snprintf(kv, sizeof(kv), "%s\"key.%d\":\"%d\"", i ? "," : "", i, i);
        put_str(&h, kv);
    }
    put_str(&h, "},\"w\":{\"dtype\":\"F32\",\"shape\":[1],"
                "\"data_offsets\":[0,4]}}");
    const char *path = safetensors_file(name, (const char *)h.p, h.n, 4);
    free(h.p);
    return path;
}

static const char *many_kv_gguf(const char *name, int n_keys)
{
    struct buf b = {0};
    gguf_begin(&b, 1, (uint64_t)n_keys);
    for (int i = 0; i < n_keys; i++) {
        char key[32];
        snprintf(key, sizeof(key), "key.%d", i);
        gguf_key(&b, key, 4); /* u32 */
        put_le(&b, (uint64_t)i, 4);
    }
    gguf_finish(&b, true);
    const char *path = in_dir(name);
    save(path, &b);
    free(b.p);
    return path;
}

/* CPU time of this process: a load preempted by other processes on the
 * machine (CI runs suites in parallel) is not charged for the wait. */
static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The fastest of a few loads, so other processes on the machine do not
 * decide the ratio. */
static double load_seconds(lm_context *ctx, const char *path, size_t n_meta)
{
    double best = 1e30;
    for (int rep = 0; rep < 7; rep++) {
        lm_model *m = NULL;
        double t0 = now();
        ck_assert_ok(lm_model_open(ctx, path, &m));
        double t = now() - t0;
        ck_assert_uint_eq(lm_model_metadata_count(m), n_meta);
        lm_model_destroy(m);
        best = t < best ? t : best;
    }
    return best;
}

START_TEST(loading_is_linear_in_the_number_of_keys)
{
#ifdef __GLIBC__
    /* glibc reuses freed memory for the 10k loads but hands the 40k
     * loads' larger blocks back to the kernel, so each 40k repetition
     * page-faults afresh (~30 us a page on a virtual machine): keep freed
     * memory so the ratio measures the parsers, not the allocator. */
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
    lm_context *ctx = tu_context(1, 0);
    const char *st10 = metadata_safetensors("m10.safetensors", 10000);
    const char *st40 = metadata_safetensors("m40.safetensors", 40000);
    const char *gg10 = many_kv_gguf("k10.gguf", 10000);
    const char *gg40 = many_kv_gguf("k40.gguf", 40000);
    double s10 = load_seconds(ctx, st10, 10000);
    double s40 = load_seconds(ctx, st40, 40000);
    double g10 = load_seconds(ctx, gg10, 10000);
    double g40 = load_seconds(ctx, gg40, 40000);
    printf("hostile_input: safetensors metadata 10k %.2f ms, 40k %.2f ms "
           "(ratio %.1f); GGUF key/values 10k %.2f ms, 40k %.2f ms (ratio "
           "%.1f); linear ~4, quadratic ~16\n", s10 * 1e3, s40 * 1e3,
           s40 / s10, g10 * 1e3, g40 * 1e3, g40 / g10);
    ck_assert_msg(s40 / s10 < 8, "safetensors metadata: 40k/10k = %.1f",
                  s40 / s10);
    ck_assert_msg(g40 / g10 < 8, "GGUF key/values: 40k/10k = %.1f",
                  g40 / g10);
    lm_context_destroy(ctx);
}
END_TEST

/* ---- 3. Declared sizes checked before allocating --------------------- */

/* An .npy member: version 1 header for `shape_text` ("(4,)") as <f4,
 * padded to 64 bytes, then data_len zero bytes. */
static void npy_member(struct buf *b, const char *shape_text,
                       size_t data_len)
{
    char dict[256];
    int n = snprintf(dict, sizeof(dict),
                     "{'descr': '<f4', 'fortran_order': False, 'shape': %s, "
                     "}", shape_text);
    size_t hlen = (10 + (size_t)n + 1 + 63) / 64 * 64 - 10;
    put(b, "\x93NUMPY\x01\x00", 8);
    put_le(b, hlen, 2);
    put(b, dict, (size_t)n);
    for (size_t i = (size_t)n; i < hlen - 1; i++)
        put(b, " ", 1);
    put(b, "\n", 1);
    static const unsigned char zeros[4096];
    while (data_len) {
        size_t k = data_len < sizeof(zeros) ? data_len : sizeof(zeros);
        put(b, zeros, k);
        data_len -= k;
    }
}

static void raw_deflate(const struct buf *in, struct buf *out)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    ck_assert_int_eq(deflateInit2(&z, 9, Z_DEFLATED, -15, 9,
                                  Z_DEFAULT_STRATEGY), Z_OK);
    size_t bound = deflateBound(&z, in->n);
    out->p = malloc(bound);
    out->cap = bound;
    z.next_in = in->p;
    z.avail_in = (uInt)in->n;
    z.next_out = out->p;
    z.avail_out = (uInt)bound;
    ck_assert_int_eq(deflate(&z, Z_FINISH), Z_STREAM_END);
    out->n = bound - z.avail_out;
    deflateEnd(&z);
}

struct zip_entry {
    const char *name;
    uint32_t method, crc;
    uint64_t csize, usize, local;
};

static void local_header(struct buf *b, const struct zip_entry *e)
{
    put_le(b, 0x04034b50u, 4);
    put_le(b, 20, 2);
    put_le(b, 0, 2);
    put_le(b, e->method, 2);
    put_le(b, 0, 4); /* time, date */
    put_le(b, e->crc, 4);
    put_le(b, e->csize, 4);
    put_le(b, e->usize, 4);
    put_le(b, strlen(e->name), 2);
    put_le(b, 0, 2);
    put_str(b, e->name);
}

static void central_directory(struct buf *b, const struct zip_entry *e,
                              int n)
{
    uint64_t start = b->n;
    for (int i = 0; i < n; i++) {
        put_le(b, 0x02014b50u, 4);
        put_le(b, 20, 2);
        put_le(b, 20, 2);
        put_le(b, 0, 2);
        put_le(b, e[i].method, 2);
        put_le(b, 0, 4);
        put_le(b, e[i].crc, 4);
        put_le(b, e[i].csize, 4);
        put_le(b, e[i].usize, 4);
        put_le(b, strlen(e[i].name), 2);
        put_le(b, 0, 2);  /* extra */
        put_le(b, 0, 2);  /* comment */
        put_le(b, 0, 2);  /* disk */
        put_le(b, 0, 2);  /* internal attributes */
        put_le(b, 0, 4);  /* external attributes */
        put_le(b, e[i].local, 4);
        put_str(b, e[i].name);
    }
    uint64_t size = b->n - start;
    put_le(b, 0x06054b50u, 4);
    put_le(b, 0, 4);
    put_le(b, (uint64_t)n, 2);
    put_le(b, (uint64_t)n, 2);
    put_le(b, size, 4);
    put_le(b, start, 4);
    put_le(b, 0, 2);
}

/* Ten directory entries sharing one deflated 16 MB stream: the old
 * reader inflated it ten times (160 MB from a 16 KB file). */
START_TEST(npz_shared_stream_refused)
{
    lm_context *ctx = tu_context(1, 0);
    struct buf npy = {0}, packed = {0}, zip = {0};
    npy_member(&npy, "(4194304,)", 4194304 * 4);
    raw_deflate(&npy, &packed);
    struct zip_entry e[10];
    char names[10][16];
    for (int i = 0; i < 10; i++) {
        snprintf(names[i], sizeof(names[i]), "a%d.npy", i);
        e[i] = (struct zip_entry){names[i], 8,
                                  (uint32_t)crc32(0, npy.p, (uInt)npy.n),
                                  packed.n, npy.n, 0};
    }
    local_header(&zip, &e[0]);
    put(&zip, packed.p, packed.n);
    central_directory(&zip, e, 10);
    const char *path = in_dir("shared.npz");
    save(path, &zip);
    lm_model *m = NULL;
    expect_error(ctx, lm_npz_read(ctx, path, &m), LM_ERR_FORMAT,
                 "overlap", "shared stream");
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "a0.npy"));
    /* One entry alone is a good archive. */
    zip.n = 0;
    local_header(&zip, &e[0]);
    put(&zip, packed.p, packed.n);
    central_directory(&zip, e, 1);
    save(path, &zip);
    ck_assert_ok(lm_npz_read(ctx, path, &m));
    lm_model_destroy(m);
    free(npy.p);
    free(packed.p);
    free(zip.p);
    lm_context_destroy(ctx);
}
END_TEST

/* A declared size beyond deflate's 1032:1 is refused before allocating
 * (the old bound was 1100:1). */
START_TEST(npz_impossible_ratio_refused)
{
    lm_context *ctx = tu_context(1, 0);
    struct buf zip = {0};
    struct zip_entry e = {"w.npy", 8, 0, 100, 100 * 1032 + 1, 0};
    local_header(&zip, &e);
    for (int i = 0; i < 100; i++)
        put(&zip, "", 1);
    central_directory(&zip, &e, 1);
    const char *path = in_dir("ratio.npz");
    save(path, &zip);
    lm_model *m = NULL;
    expect_error(ctx, lm_npz_read(ctx, path, &m), LM_ERR_FORMAT,
                 "maximum ratio of 1032:1", "ratio");
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "'w.npy'"));
    free(zip.p);
    lm_context_destroy(ctx);
}
END_TEST

static const char *u8_array_gguf(const char *name, uint32_t elem,
                                 uint64_t count)
{
    struct buf b = {0};
    gguf_begin(&b, 1, 1);
    gguf_key(&b, "big", 9); /* array */
    put_le(&b, elem, 4);
    put_le(&b, count, 8);
    unsigned char chunk[4096];
    memset(chunk, 7, sizeof(chunk));
    for (uint64_t left = count; left;) {
        size_t k = left < sizeof(chunk) ? (size_t)left : sizeof(chunk);
        put(&b, chunk, k);
        left -= k;
    }
    gguf_finish(&b, true);
    const char *path = in_dir(name);
    save(path, &b);
    free(b.p);
    return path;
}

/* A 10 MB u8 array: the text is "[7,7,...]" (2 bytes per element), and
 * memory stays a small multiple of the file (the cJSON tree of the old
 * reader took 816 MB). Measured in a child so the peak is its own. */
START_TEST(gguf_array_memory_bounded)
{
    const char *path = u8_array_gguf("u8.gguf", 0, 10u << 20);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        alarm(60);
        lm_context *ctx = NULL;
        lm_model *m = NULL;
        const char *v = NULL;
        if (lm_context_create(NULL, &ctx) || lm_gguf_read(ctx, path, &m) ||
            lm_model_metadata_find(m, "big", &v) ||
            strlen(v) != 2 * (10u << 20) + 1 || strncmp(v, "[7,7,", 5))
            _exit(2);
        lm_model_destroy(m);
        lm_context_destroy(ctx);
        _exit(0);
    }
    int status;
    struct rusage ru;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    /* The largest peak among this process's waited children: only this
     * one (Check runs each test in its own process). */
    ck_assert_int_eq(getrusage(RUSAGE_CHILDREN, &ru), 0);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "child status %d", status);
    printf("hostile_input: 10 MB u8 GGUF array: peak RSS %ld MB\n",
           ru.ru_maxrss / 1024);
    ck_assert_msg(ru.ru_maxrss < 300 * 1024, "peak RSS %ld KB",
                  ru.ru_maxrss);
}
END_TEST

/* Bool arrays print as "true," (5 bytes per byte): 14 M of them exceed
 * the 64 MiB per-file budget of metadata text. */
START_TEST(gguf_metadata_budget)
{
    lm_context *ctx = tu_context(1, 0);
    const char *path = u8_array_gguf("bool.gguf", 7, 14u << 20);
    lm_model *m = NULL;
    expect_error(ctx, lm_gguf_read(ctx, path, &m), LM_ERR_FORMAT,
                 "exceed the metadata budget of 64 MiB", "budget");
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "'big'"));
    lm_context_destroy(ctx);
}
END_TEST

/* ---- 4. Strict inputs -------------------------------------------------- */

START_TEST(empty_models_refused_by_readers)
{
    lm_context *ctx = tu_context(1, 0);
    lm_model *m = NULL;
    const char *st = safetensors_file("empty.safetensors", "{}", 2, 0);
    expect_error(ctx, lm_model_open(ctx, st, &m), LM_ERR_FORMAT,
                 "no tensors", "safetensors {}");
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "empty.safetensors"));
    const char *meta_only = "{\"__metadata__\":{\"a\":\"b\"}}";
    st = safetensors_file("meta.safetensors", meta_only, strlen(meta_only),
                          0);
    expect_error(ctx, lm_safetensors_read(ctx, st, &m), LM_ERR_FORMAT,
                 "no tensors", "metadata only");

    FILE *f = fopen(in_dir("model.safetensors.index.json"), "w");
    fputs("{\"metadata\":{},\"weight_map\":{}}", f);
    fclose(f);
    expect_error(ctx, lm_model_open(ctx, dir, &m), LM_ERR_FORMAT,
                 "weight_map is empty", "index");

    struct buf b = {0};
    gguf_begin(&b, 0, 1);
    gguf_key(&b, "general.architecture", 8);
    put_le(&b, 1, 8);
    put_str(&b, "x");
    gguf_finish(&b, false);
    save(in_dir("empty.gguf"), &b);
    expect_error(ctx, lm_model_open(ctx, in_dir("empty.gguf"), &m),
                 LM_ERR_FORMAT, "no tensors", "gguf");
    ck_assert_ptr_nonnull(strstr(lm_context_error(ctx), "empty.gguf"));

    b.n = 0;
    central_directory(&b, NULL, 0);
    save(in_dir("empty.npz"), &b);
    expect_error(ctx, lm_npz_read(ctx, in_dir("empty.npz"), &m),
                 LM_ERR_FORMAT, "no arrays", "npz");
    free(b.p);

    /* In memory an empty model stays legal. */
    ck_assert_ok(lm_model_create(ctx, &m));
    ck_assert_uint_eq(lm_model_count(m), 0);
    lm_model_destroy(m);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(nul_and_control_bytes_in_headers)
{
    lm_context *ctx = tu_context(1, 0);
#define LIT(text) text, sizeof(text) - 1
    static const struct {
        const char *header;
        size_t len;
        const char *fragment;
    } cases[] = {
        /* a raw NUL between tokens used to pass as whitespace */
        {LIT("{\0\"w\":{\"dtype\":\"F32\",\"shape\":[1],"
             "\"data_offsets\":[0,4]}}"),
         "NUL byte at byte 1 of the header"},
        /* "a\u0000b" used to become tensor "a" */
        {LIT("{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],"
             "\"data_offsets\":[0,4]}}"),
         "escaped NUL (\\u0000) at byte 3 of the header, inside the string "
         "\"a\""},
        {LIT("{\"w\":{\"dtype\":\"F32\",\x01\"shape\":[1],"
             "\"data_offsets\":[0,4]}}"),
         "control byte outside a string at byte 20"},
        {LIT("{\"w\x02\":{\"dtype\":\"F32\",\"shape\":[1],"
             "\"data_offsets\":[0,4]}}"),
         "control byte inside a string at byte 3 of the header, inside "
         "the string \"w\""},
        {LIT("{\"__metadata__\":{\"k\":\"v\\u0000x\"},\"w\":{\"dtype\":"
             "\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}"),
         "escaped NUL (\\u0000) at byte 23"},
    };
#undef LIT
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        const char *path = safetensors_file("nul.safetensors",
                                            cases[i].header, cases[i].len, 4);
        lm_model *m = NULL;
        char what[32];
        snprintf(what, sizeof(what), "case %zu", i);
        expect_error(ctx, lm_safetensors_read(ctx, path, &m), LM_ERR_FORMAT,
                     cases[i].fragment, what);
    }
    /* Escaped backslash before u0000 is a plain string. */
    const char *ok = "{\"a\\\\u0000\":{\"dtype\":\"F32\",\"shape\":[1],"
                     "\"data_offsets\":[0,4]}}";
    lm_model *m = NULL;
    ck_assert_ok(lm_safetensors_read(
        ctx, safetensors_file("ok.safetensors", ok, strlen(ok), 4), &m));
    ck_assert_str_eq(lm_model_name_at(m, 0), "a\\u0000");
    lm_model_destroy(m);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(messages_say_what_is_wrong)
{
    lm_context *ctx = tu_context(1, 0);
    lm_model *m = NULL;
    /* An .npy shape whose size overflows used to read "0 data bytes for
     * shape and dtype needing 0". */
    struct buf npy = {0}, zip = {0};
    npy_member(&npy, "(4294967296, 4294967296, 4)", 16);
    struct zip_entry e = {"w.npy", 0, (uint32_t)crc32(0, npy.p, (uInt)npy.n),
                          npy.n, npy.n, 0};
    local_header(&zip, &e);
    put(&zip, npy.p, npy.n);
    central_directory(&zip, &e, 1);
    save(in_dir("overflow.npz"), &zip);
    expect_error(ctx, lm_npz_read(ctx, in_dir("overflow.npz"), &m),
                 LM_ERR_FORMAT, "member 'w.npy': the shape overflows",
                 "npy overflow");
    free(npy.p);
    free(zip.p);

    /* Arrays nested 10 deep used to "run past the end of the file". */
    struct buf b = {0};
    gguf_begin(&b, 1, 1);
    gguf_key(&b, "deep", 9);
    for (int d = 0; d < 10; d++) {
        put_le(&b, 9, 4);
        put_le(&b, 1, 8);
    }
    put_le(&b, 0, 4);
    put_le(&b, 0, 8);
    gguf_finish(&b, true);
    save(in_dir("deep.gguf"), &b);
    free(b.p);
    expect_error(ctx, lm_gguf_read(ctx, in_dir("deep.gguf"), &m),
                 LM_ERR_FORMAT, "'deep' nests arrays too deep", "nesting");

    /* A long path is not cut off (the message buffer was 1024 bytes). */
    char path[3200];
    size_t n = (size_t)snprintf(path, sizeof(path), "%s", dir);
    while (n < 3000)
        n += (size_t)snprintf(path + n, sizeof(path) - n, "/%0100d", 0);
    snprintf(path + n, sizeof(path) - n, "/model.safetensors");
    ck_assert_status(lm_safetensors_read(ctx, path, &m), LM_ERR_IO);
    const char *msg = lm_context_error(ctx);
    ck_assert_msg(strstr(msg, path) && strstr(msg, strerror(ENOENT)),
                  "message cut to %zu bytes", strlen(msg));
    char copy[8];
    ck_assert_uint_eq(lm_context_copy_error(ctx, copy, sizeof(copy)),
                      strlen(msg));
    lm_context_clear_error(ctx);
    ck_assert_str_eq(lm_context_error(ctx), "");
    lm_context_destroy(ctx);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("hostile_input");
    TCase *tc = tcase_create("readers");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, fifo_and_devices_refused_by_name);
    tcase_add_test(tc, loading_is_linear_in_the_number_of_keys);
    tcase_add_test(tc, npz_shared_stream_refused);
    tcase_add_test(tc, npz_impossible_ratio_refused);
    tcase_add_test(tc, gguf_array_memory_bounded);
    tcase_add_test(tc, gguf_metadata_budget);
    tcase_add_test(tc, empty_models_refused_by_readers);
    tcase_add_test(tc, nul_and_control_bytes_in_headers);
    tcase_add_test(tc, messages_say_what_is_wrong);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
