/* The fused linear path with file-backed inputs and ranged outputs
 * (lib/core/file_source.c, write_range in libmerge/sink.h): inputs read
 * with pread instead of through their mappings, outputs handed to the
 * sink a read at a time, and each kernel build (LIBMERGE_SIMD). Every
 * output must be bit-identical (0 ulps, compared as bytes) to the same
 * merge of the same models held in memory, which takes neither (no file,
 * no ranges) and is itself checked against the plain path (core_fused)
 * and numpy (tests/python). Also: a file replaced after it was mapped is
 * never read (the mapping's bytes are merged), sinks built before
 * write_range existed (a smaller struct_size) keep whole writes, and a
 * ranged sink gets every byte of every tensor exactly once. */
#define _DEFAULT_SOURCE /* mkdtemp */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/context_private.h"
#include "testutil.h"

/* Around the fused block (2048), a read (about 1 MiB of all inputs) and a
 * parallel chunk (2048 * 256): the last one is split across workers; in
 * every dtype mix it takes several whole reads (42 to 85 blocks each) and
 * ends in a short read whose last block is partial. (A tensor of 300007
 * elements, several reads within one chunk, crossed no boundary this one
 * does not, and made the sanitizer runs a third longer.) */
static const int64_t sizes[][2] = {
    {1, 0}, {2049, 0}, {3, 4099}, {600011, 0},
};
#define N_SIZES (sizeof(sizes) / sizeof(sizes[0]))

static lm_model *random_model(lm_context *ctx, lm_dtype dtype, uint64_t seed)
{
    lm_model *m;
    ck_assert_ok(lm_model_create(ctx, &m));
    for (size_t i = 0; i < N_SIZES; i++) {
        char name[32];
        snprintf(name, sizeof(name), "t%zu", i);
        ck_assert_ok(lm_model_add(
            m, name,
            tu_random_tensor_quiet(ctx, dtype, sizes[i][1] ? 2 : 1, sizes[i],
                                   seed * 100 + i, 0.0, 1.0)));
    }
    return m;
}

struct setup {
    char dir[64];
    char paths[3][128]; /* base, model 1, model 2 */
    lm_model *mem[3];   /* the same models in memory */
};

static void make_files(lm_context *ctx, struct setup *s, lm_dtype base_dt,
                       lm_dtype m1, lm_dtype m2)
{
    strcpy(s->dir, "/tmp/lm_fused_files_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(s->dir));
    lm_dtype dts[3] = {base_dt, m1, m2};
    for (int i = 0; i < 3; i++) {
        snprintf(s->paths[i], sizeof(s->paths[i]), "%s/m%d.safetensors",
                 s->dir, i);
        s->mem[i] = random_model(ctx, dts[i], (uint64_t)i + 1);
        ck_assert_ok(lm_model_save(ctx, s->mem[i], s->paths[i], 0));
    }
}

static void remove_files(struct setup *s)
{
    for (int i = 0; i < 3; i++) {
        unlink(s->paths[i]);
        lm_model_destroy(s->mem[i]);
    }
    rmdir(s->dir);
}

/* The method the merges of a test use: task_arithmetic, or a sparse one
 * (the fused sparse path reads its inputs the same way). */
static const char *method = "task_arithmetic";

static lm_plan *plan_of(lm_context *ctx, lm_model *const *m)
{
    lm_plan *p;
    ck_assert_ok(lm_plan_create(ctx, method, &p));
    ck_assert_ok(lm_plan_set_base(p, m[0]));
    ck_assert_ok(lm_plan_add_model(p, m[1], 0.7));
    ck_assert_ok(lm_plan_add_model(p, m[2], -1.3));
    if (!strcmp(method, "task_arithmetic"))
        ck_assert_ok(lm_plan_set_float(p, "lambda", 0.45));
    else
        ck_assert_ok(lm_plan_set_float(p, "density", 0.3));
    return p;
}

static lm_model *merge_in_memory(lm_context *ctx, lm_model *const *m)
{
    lm_plan *p = plan_of(ctx, m);
    lm_model *out;
    ck_assert_ok(lm_plan_execute(p, &out));
    lm_plan_destroy(p);
    return out;
}

/* The models opened from their files, merged into a safetensors file
 * (ranged writes), read back. */
/* Plan p's merge written by the safetensors file sink (ranged) into
 * dir/out.safetensors, read back into memory. */
static lm_model *execute_to_file(lm_context *ctx, lm_plan *p, const char *dir)
{
    char out_path[160];
    snprintf(out_path, sizeof(out_path), "%s/out.safetensors", dir);
    lm_file_sink *sink;
    ck_assert_ok(lm_safetensors_sink_create(ctx, out_path, NULL, &sink));
    ck_assert_ok(lm_plan_execute_to(p, lm_file_sink_vtable(sink)));
    lm_file_sink_destroy(sink);
    /* Copied out of the file's mapping, so the file can go. */
    lm_model *mapped, *out;
    ck_assert_ok(lm_model_open(ctx, out_path, &mapped));
    ck_assert_ok(lm_model_create(ctx, &out));
    for (size_t i = 0; i < lm_model_count(mapped); i++) {
        lm_tensor *copy;
        ck_assert_ok(lm_tensor_clone(ctx, lm_model_at(mapped, i), &copy));
        ck_assert_ok(lm_model_add(out, lm_model_name_at(mapped, i), copy));
    }
    lm_model_destroy(mapped);
    unlink(out_path);
    return out;
}

/* The models opened from their files, merged into a safetensors file
 * (ranged output), read back. */
static lm_model *merge_files(lm_context *ctx, struct setup *s)
{
    lm_model *m[3];
    for (int i = 0; i < 3; i++)
        ck_assert_ok(lm_model_open(ctx, s->paths[i], &m[i]));
    lm_plan *p = plan_of(ctx, m);
    lm_model *out = execute_to_file(ctx, p, s->dir);
    lm_plan_destroy(p);
    for (int i = 0; i < 3; i++)
        lm_model_destroy(m[i]);
    return out;
}

static const lm_dtype combos[][3] = {
    {LM_F32, LM_F32, LM_F32},
    {LM_F32, LM_BF16, LM_F16},
    {LM_BF16, LM_BF16, LM_BF16},
    {LM_F16, LM_F32, LM_BF16},
};

START_TEST(file_inputs_and_ranges_match_memory)
{
    static const char *simd[] = {"baseline", "avx2", "avx512"};
    for (int threads = 1; threads <= 2; threads++)
        for (size_t c = 0; c < sizeof(combos) / sizeof(combos[0]); c++) {
            lm_context *ctx = tu_context(threads, 0);
            struct setup s;
            make_files(ctx, &s, combos[c][0], combos[c][1], combos[c][2]);
            lm_model *want = merge_in_memory(ctx, s.mem);
            for (int k = 0; k < 3; k++) {
                setenv("LIBMERGE_SIMD", simd[k], 1);
                size_t reads = atomic_load(&ctx->file_inputs);
                size_t ranged = atomic_load(&ctx->ranged_tensors);
                lm_model *got = merge_files(ctx, &s);
                char what[96];
                snprintf(what, sizeof(what), "dtypes %zu, %d threads, %s", c,
                         threads, simd[k]);
                tu_assert_same_bytes(want, got, what);
                /* Every input of every tensor read from its file, every
                 * tensor handed over in ranges. */
                ck_assert_uint_eq(atomic_load(&ctx->file_inputs) - reads,
                                  3 * N_SIZES);
                ck_assert_uint_eq(atomic_load(&ctx->ranged_tensors) - ranged,
                                  N_SIZES);
                lm_model_destroy(got);
            }
            unsetenv("LIBMERGE_SIMD");
            /* Through the mappings (LIBMERGE_PREAD=0): the same bytes. */
            setenv("LIBMERGE_PREAD", "0", 1);
            size_t reads = atomic_load(&ctx->file_inputs);
            lm_model *got = merge_files(ctx, &s);
            unsetenv("LIBMERGE_PREAD");
            ck_assert_uint_eq(atomic_load(&ctx->file_inputs), reads);
            tu_assert_same_bytes(want, got, "through the mappings");
            lm_model_destroy(got);
            lm_model_destroy(want);
            remove_files(&s);
            lm_context_destroy(ctx);
        }
}
END_TEST

/* A user replacing an input file while a merge holds it open (a new file
 * renamed over the path): the merge goes on with the file it mapped. */
START_TEST(replaced_input_file_is_not_read)
{
    lm_context *ctx = tu_context(2, 0);
    struct setup s;
    make_files(ctx, &s, LM_F32, LM_F32, LM_BF16);
    lm_model *want = merge_in_memory(ctx, s.mem);
    lm_model *m[3];
    for (int i = 0; i < 3; i++)
        ck_assert_ok(lm_model_open(ctx, s.paths[i], &m[i]));
    /* Same size, other values: only the identity check can tell. */
    lm_model *other = random_model(ctx, LM_F32, 99);
    char tmp[160];
    snprintf(tmp, sizeof(tmp), "%s/new.safetensors", s.dir);
    ck_assert_ok(lm_model_save(ctx, other, tmp, 0));
    ck_assert_int_eq(rename(tmp, s.paths[1]), 0);
    lm_model_destroy(other);

    size_t reads = atomic_load(&ctx->file_inputs);
    lm_plan *p = plan_of(ctx, m);
    lm_model *got;
    ck_assert_ok(lm_plan_execute(p, &got));
    tu_assert_same_bytes(want, got, "model 1 replaced after it was mapped");
    /* The base and model 2 still read from their files. */
    ck_assert_uint_eq(atomic_load(&ctx->file_inputs) - reads, 2 * N_SIZES);
    lm_model_destroy(got);
    lm_plan_destroy(p);
    for (int i = 0; i < 3; i++)
        lm_model_destroy(m[i]);
    lm_model_destroy(want);
    remove_files(&s);
    lm_context_destroy(ctx);
}
END_TEST

/* A sink of the host's: whole writes, or ranges (each byte once). */
struct host_sink {
    lm_model *want;
    unsigned char *got[N_SIZES];
    unsigned char *seen[N_SIZES]; /* per byte: times written */
    size_t nbytes[N_SIZES];
    atomic_int whole_writes, range_writes;
};

static lm_status host_begin(const lm_tensor_desc *const *outputs, size_t n,
                            void *user)
{
    struct host_sink *h = user;
    ck_assert_uint_eq(n, N_SIZES);
    for (size_t i = 0; i < n; i++) {
        h->nbytes[i] = outputs[i]->nbytes;
        h->got[i] = calloc(1, outputs[i]->nbytes);
        h->seen[i] = calloc(1, outputs[i]->nbytes);
    }
    return LM_OK;
}

static lm_status host_write(size_t index, const void *data, size_t nbytes,
                            void *user)
{
    struct host_sink *h = user;
    ck_assert_uint_eq(nbytes, h->nbytes[index]);
    memcpy(h->got[index], data, nbytes);
    for (size_t b = 0; b < nbytes; b++)
        h->seen[index][b]++;
    atomic_fetch_add(&h->whole_writes, 1);
    return LM_OK;
}

/* Ranges of different tensors and of one tensor come from several
 * workers: each touches only its own bytes. */
static lm_status host_write_range(size_t index, uint64_t offset,
                                  const void *data, size_t nbytes, void *user)
{
    struct host_sink *h = user;
    ck_assert_uint_le(offset + nbytes, h->nbytes[index]);
    memcpy(h->got[index] + offset, data, nbytes);
    for (size_t b = 0; b < nbytes; b++)
        h->seen[index][offset + b]++;
    atomic_fetch_add(&h->range_writes, 1);
    return LM_OK;
}

static lm_status never_called(size_t index, uint64_t offset, const void *data,
                              size_t nbytes, void *user)
{
    ck_abort_msg("write_range read past the sink's struct_size");
    return LM_ERR_STATE;
}

static lm_status host_end(int commit, void *user)
{
    ck_assert_int_eq(commit, 1);
    return LM_OK;
}

static void check_host_sink(struct host_sink *h, const char *what)
{
    for (size_t i = 0; i < N_SIZES; i++) {
        const lm_tensor *t = lm_model_at(h->want, i);
        ck_assert_uint_eq(h->nbytes[i], lm_tensor_nbytes(t));
        ck_assert_msg(!memcmp(h->got[i], lm_tensor_cdata(t), h->nbytes[i]),
                      "%s: tensor %zu differs", what, i);
        for (size_t b = 0; b < h->nbytes[i]; b++)
            tu_check(h->seen[i][b] == 1,
                          "%s: byte %zu of tensor %zu written %d times", what,
                          b, i, h->seen[i][b]);
        free(h->got[i]);
        free(h->seen[i]);
    }
}

/* A 0.1-sized sink (write_range past its struct_size, a trap) and a
 * ranged one, on merges of the models m (file-backed, or in memory:
 * nothing read from a file, the ranges are still about 1 MiB each). */
static void check_host_sinks(lm_context *ctx, lm_model *const *m,
                             lm_model *want, bool in_memory)
{
    lm_plan *p = plan_of(ctx, m);
    for (int ranged = 0; ranged < 2; ranged++) {
        struct host_sink h = {.want = want};
        lm_sink_vtable vt = {
            .struct_size = sizeof(vt),
            .begin = host_begin,
            .write = host_write,
            .end = host_end,
            .user = &h,
            .write_range = ranged ? host_write_range : never_called,
        };
        /* Built against the headers before write_range: the library must
         * not look at the field. */
        if (!ranged)
            vt.struct_size = (uint32_t)offsetof(lm_sink_vtable, write_range);
        ck_assert_ok(lm_plan_execute_to(p, &vt));
        check_host_sink(&h, ranged ? "ranged sink" : "sink of 0.1");
        ck_assert_int_eq(h.whole_writes, ranged ? 0 : (int)N_SIZES);
        /* The largest tensor comes in several ranges. */
        ck_assert_int_ge(h.range_writes,
                         ranged ? (int)N_SIZES + (in_memory ? 1 : 2) : 0);
        /* ... but not in one per 2048-element block (600011 f32 elements
         * are 3 ranges of 1 MiB). */
        if (in_memory)
            ck_assert_int_le(h.range_writes, 2 * (int)N_SIZES + 2);
    }
    /* Smaller than 0.1's vtable: refused, naming the size needed. */
    lm_sink_vtable small = {.struct_size = 8, .begin = host_begin,
                            .write = host_write, .end = host_end};
    ck_assert_status(lm_plan_execute_to(p, &small), LM_ERR_ABI);
    lm_plan_destroy(p);
}

/* Both fused paths that take ranges: linear and sparse (ties). */
START_TEST(host_sinks_old_and_ranged)
{
    static const char *methods[] = {"task_arithmetic", "ties"};
    lm_context *ctx = tu_context(2, 0);
    struct setup s;
    make_files(ctx, &s, LM_BF16, LM_F32, LM_BF16);
    lm_model *m[3];
    for (int i = 0; i < 3; i++)
        ck_assert_ok(lm_model_open(ctx, s.paths[i], &m[i]));
    for (int mi = 0; mi < 2; mi++) {
        method = methods[mi];
        lm_model *want = merge_in_memory(ctx, s.mem);
        check_host_sinks(ctx, m, want, false);
        check_host_sinks(ctx, s.mem, want, true);
        lm_model_destroy(want);
    }
    method = "task_arithmetic";
    for (int i = 0; i < 3; i++)
        lm_model_destroy(m[i]);
    remove_files(&s);
    lm_context_destroy(ctx);
}
END_TEST

/* ties (a threshold selected from a sample, then two passes) and
 * dare_ties (the L1 pass, then the merge): the inputs read from their
 * files at every step, the sample elements included. */
START_TEST(sparse_file_inputs_match_memory)
{
    static const char *methods[] = {"ties", "dare_ties"};
    for (int mi = 0; mi < 2; mi++)
        for (int threads = 1; threads <= 2; threads++)
            for (size_t c = 0; c < 2; c++) {
                method = methods[mi];
                lm_context *ctx = tu_context(threads, 7);
                struct setup s;
                make_files(ctx, &s, combos[c][0], combos[c][1],
                           combos[c][2]);
                lm_model *want = merge_in_memory(ctx, s.mem);
                size_t reads = atomic_load(&ctx->file_inputs);
                size_t fused = atomic_load(&ctx->fused_tensors);
                size_t ranged = atomic_load(&ctx->ranged_tensors);
                lm_model *got = merge_files(ctx, &s);
                char what[96];
                snprintf(what, sizeof(what), "%s, dtypes %zu, %d threads",
                         method, c, threads);
                tu_assert_same_bytes(want, got, what);
                ck_assert_uint_eq(atomic_load(&ctx->file_inputs) - reads,
                                  3 * N_SIZES);
                ck_assert_uint_eq(atomic_load(&ctx->fused_tensors) - fused,
                                  N_SIZES);
                ck_assert_uint_eq(atomic_load(&ctx->ranged_tensors) - ranged,
                                  N_SIZES);
                lm_model_destroy(got);
                lm_model_destroy(want);
                remove_files(&s);
                lm_context_destroy(ctx);
                method = "task_arithmetic";
            }
}
END_TEST

/* A config that lists the base among its models (mergekit's linear and
 * average examples do) or a model twice: each repeated input, opened
 * from the same file, takes the earlier input's read instead of its own
 * (ctx->repeated_inputs counts them), and the merge is the same bytes as
 * the same plan over the models held in memory. Linear (the weights
 * normalised: the base with weight 0 makes it the mean of the others) and
 * ties (the sparse path reads the same way), 1 and 2 threads, every
 * dtype combination. */
static lm_model *merge_repeats(lm_context *ctx, const char *how,
                               lm_model *const *m)
{
    lm_plan *p;
    bool linear = !strcmp(how, "linear");
    ck_assert_ok(lm_plan_create(ctx, how, &p));
    ck_assert_ok(lm_plan_set_base(p, m[0]));
    /* base, model 1, base again, model 1 again (separately opened when
     * from files: m[3], m[4]), model 2 */
    ck_assert_ok(lm_plan_add_model(p, m[0], linear ? 0.0 : 0.5));
    ck_assert_ok(lm_plan_add_model(p, m[1], 0.7));
    ck_assert_ok(lm_plan_add_model(p, m[3], 0.3));
    ck_assert_ok(lm_plan_add_model(p, m[4], -1.1));
    ck_assert_ok(lm_plan_add_model(p, m[2], 1.3));
    if (!linear)
        ck_assert_ok(lm_plan_set_float(p, "density", 0.3));
    lm_model *out;
    ck_assert_ok(lm_plan_execute(p, &out));
    lm_plan_destroy(p);
    return out;
}

START_TEST(repeated_inputs_read_once)
{
    static const char *methods[] = {"linear", "ties"};
    for (int mi = 0; mi < 2; mi++)
        for (int threads = 1; threads <= 2; threads++)
            for (size_t c = 0; c < sizeof(combos) / sizeof(combos[0]); c++) {
                lm_context *ctx = tu_context(threads, 7);
                struct setup s;
                make_files(ctx, &s, combos[c][0], combos[c][1],
                           combos[c][2]);
                lm_model *mem[5] = {s.mem[0], s.mem[1], s.mem[2], s.mem[0],
                                    s.mem[1]};
                lm_model *want = merge_repeats(ctx, methods[mi], mem);
                lm_model *files[5];
                static const int from[5] = {0, 1, 2, 0, 1};
                for (int i = 0; i < 5; i++)
                    ck_assert_ok(
                        lm_model_open(ctx, s.paths[from[i]], &files[i]));
                size_t repeats = atomic_load(&ctx->repeated_inputs);
                lm_model *got = merge_repeats(ctx, methods[mi], files);
                char what[96];
                snprintf(what, sizeof(what), "%s, dtypes %zu, %d threads",
                         methods[mi], c, threads);
                tu_assert_same_bytes(want, got, what);
                /* The base listed as a model, the base's second
                 * opening and model 1's, in every tensor. */
                ck_assert_uint_eq(atomic_load(&ctx->repeated_inputs) - repeats,
                                  3 * N_SIZES);
                for (int i = 0; i < 5; i++)
                    lm_model_destroy(files[i]);
                lm_model_destroy(got);
                lm_model_destroy(want);
                remove_files(&s);
                lm_context_destroy(ctx);
            }
}
END_TEST

/* Adapters only (core/fused_lora.c: one GEMM per row block): the base
 * read from its file, row block by row block. The 2-D tensors t2
 * [3, 4099] and a wide one are targeted; the adapters are in memory. */
START_TEST(adapters_on_a_file_base)
{
    for (int threads = 1; threads <= 2; threads++)
        for (int bdt = 0; bdt < 3; bdt++) {
            static const lm_dtype dts[] = {LM_F32, LM_BF16, LM_F16};
            lm_context *ctx = tu_context(threads, 0);
            char dir[] = "/tmp/lm_fused_lora_files_XXXXXX";
            ck_assert_ptr_nonnull(mkdtemp(dir));
            char path[96];
            snprintf(path, sizeof(path), "%s/base.safetensors", dir);
            lm_model *mem;
            ck_assert_ok(lm_model_create(ctx, &mem));
            static const int64_t shapes[][2] = {{3, 4099}, {611, 1031}};
            const char *names[] = {"small", "wide"};
            lm_lora *l[2];
            for (int a = 0; a < 2; a++)
                ck_assert_ok(lm_lora_create(ctx, &l[a]));
            for (int i = 0; i < 2; i++) {
                ck_assert_ok(lm_model_add(
                    mem, names[i],
                    tu_random_tensor_quiet(ctx, dts[bdt], 2, shapes[i],
                                           (uint64_t)(40 + i), 0.0, 1.0)));
                for (int a = 0; a < 2; a++) {
                    int64_t r = 2 + 3 * a;
                    lm_tensor *fa = tu_random_tensor_quiet(
                        ctx, LM_F32, 2, (int64_t[]){r, shapes[i][1]},
                        (uint64_t)(100 * a + i), 0.0, 0.1);
                    lm_tensor *fb = tu_random_tensor_quiet(
                        ctx, LM_F32, 2, (int64_t[]){shapes[i][0], r},
                        (uint64_t)(100 * a + i + 50), 0.0, 0.1);
                    ck_assert_ok(lm_lora_add(l[a], names[i], fa, fb, 0.5));
                }
            }
            ck_assert_ok(lm_model_save(ctx, mem, path, 0));
            lm_model *file;
            ck_assert_ok(lm_model_open(ctx, path, &file));
            /* In memory; from the file; from the file into a file sink,
             * handed over block by block. */
            lm_model *out[3];
            for (int run = 0; run < 3; run++) {
                lm_plan *p;
                ck_assert_ok(lm_plan_create(ctx, "task_arithmetic", &p));
                ck_assert_ok(lm_plan_set_base(p, run ? file : mem));
                for (int a = 0; a < 2; a++)
                    ck_assert_ok(lm_plan_add_lora(p, l[a], 0.6 - a));
                size_t reads = atomic_load(&ctx->file_inputs);
                size_t ranged = atomic_load(&ctx->ranged_tensors);
                if (run < 2)
                    ck_assert_ok(lm_plan_execute(p, &out[run]));
                else
                    out[run] = execute_to_file(ctx, p, dir);
                reads = atomic_load(&ctx->file_inputs) - reads;
                ranged = atomic_load(&ctx->ranged_tensors) - ranged;
                ck_assert_uint_eq(reads, run ? 2 : 0); /* both bases */
                ck_assert_uint_eq(ranged, run == 2 ? 2 : 0);
                lm_plan_destroy(p);
            }
            for (int run = 1; run < 3; run++) {
                char what[80];
                snprintf(what, sizeof(what),
                         "adapters, base dtype %d, %d threads, run %d", bdt,
                         threads, run);
                tu_assert_same_bytes(out[0], out[run], what);
            }
            for (int i = 0; i < 3; i++)
                lm_model_destroy(out[i]);
            for (int a = 0; a < 2; a++)
                lm_lora_destroy(l[a]);
            lm_model_destroy(file);
            lm_model_destroy(mem);
            unlink(path);
            rmdir(dir);
            lm_context_destroy(ctx);
        }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("core_fused_files");
    TCase *tc = tcase_create("files");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, file_inputs_and_ranges_match_memory);
    tcase_add_test(tc, replaced_input_file_is_not_read);
    tcase_add_test(tc, host_sinks_old_and_ranged);
    tcase_add_test(tc, sparse_file_inputs_match_memory);
    tcase_add_test(tc, repeated_inputs_read_once);
    tcase_add_test(tc, adapters_on_a_file_base);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
