/* `lmerge run CONFIG.yaml -o OUT_DIR`: a mergekit-style merge from files
 * to safetensors, streamed tensor by tensor. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "ties.h"
#include "config.h"
#include "tokenizer.h"

struct run_opts {
    const char *config;
    const char *out_dir;
    int threads;
    uint64_t shard_bytes;
    const char *dtype;
    bool json, quiet, copy_files, overwrite;
};

static void run_usage(FILE *f)
{
    fprintf(f,
            "usage: lmerge run CONFIG.yaml -o OUT_DIR [--threads N]\n"
            "                  [--shard-size SIZE] [--dtype f32|f16|bf16]\n"
            "                  [--json] [--quiet] [--no-copy-files] [--overwrite]\n"
            "\n"
            "CONFIG follows mergekit: merge_method, base_model, models: [{model,\n"
            "parameters: {weight, ...}}], parameters, dtype/out_dtype.\n"
            "SIZE accepts K/M/G/T suffixes (bytes, powers of 1000; KiB/MiB/GiB\n"
            "for powers of 1024); default 5G. The output is OUT_DIR/model.safetensors,\n"
            "or shards plus model.safetensors.index.json when larger than SIZE.\n"
            "OUT_DIR appears complete or not at all; it must not exist, be empty,\n"
            "or (--overwrite) is replaced as a whole. It may not be, contain or\n"
            "lie inside an input's directory.\n");
}

/* "5G", "500MB", "2GiB", "123" -> bytes; 0 on error. */
static uint64_t parse_size(const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || !(v > 0))
        return 0;
    double mult = 1;
    bool binary = strstr(end, "i") != NULL;
    switch (*end) {
    case '\0': break;
    case 'k': case 'K': mult = binary ? 1024.0 : 1e3; break;
    case 'm': case 'M': mult = binary ? 1048576.0 : 1e6; break;
    case 'g': case 'G': mult = binary ? 1073741824.0 : 1e9; break;
    case 't': case 'T': mult = binary ? 1099511627776.0 : 1e12; break;
    case 'b': case 'B': break;
    default: return 0;
    }
    double bytes = v * mult;
    return bytes >= 1 && bytes < 1.8e19 ? (uint64_t)bytes : 0;
}

static int parse_args(int argc, char **argv, struct run_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->shard_bytes = 5000000000ULL;
    o->copy_files = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        if ((!strcmp(a, "-o") || !strcmp(a, "--output")) && next) {
            o->out_dir = next;
            i++;
        } else if (!strcmp(a, "--threads") && next) {
            char *end;
            long n = strtol(next, &end, 10);
            if (*end || n < 0 || n > 1024) {
                fprintf(stderr, "lmerge run: --threads takes 0..1024\n");
                return -1;
            }
            o->threads = (int)n;
            i++;
        } else if (!strcmp(a, "--shard-size") && next) {
            if (!(o->shard_bytes = parse_size(next))) {
                fprintf(stderr, "lmerge run: bad --shard-size '%s'\n", next);
                return -1;
            }
            i++;
        } else if (!strcmp(a, "--dtype") && next) {
            o->dtype = next;
            i++;
        } else if (!strcmp(a, "--json")) {
            o->json = true;
        } else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
            o->quiet = true;
        } else if (!strcmp(a, "--no-copy-files")) {
            o->copy_files = false;
        } else if (!strcmp(a, "--overwrite")) {
            o->overwrite = true;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            run_usage(stdout);
            exit(0);
        } else if (a[0] == '-' || o->config) {
            fprintf(stderr, "lmerge run: unexpected argument '%s'\n", a);
            run_usage(stderr);
            return -1;
        } else {
            o->config = a;
        }
    }
    if (!o->config || !o->out_dir) {
        run_usage(stderr);
        return -1;
    }
    return 0;
}

struct progress_state {
    bool tty;
    time_t last;
};

static int show_progress(size_t done, size_t total, uint64_t bytes,
                         uint64_t bytes_total, void *user)
{
    struct progress_state *p = user;
    if (lmerge_interrupted())
        return 1; /* cancels the merge: the output is discarded */
    time_t now = time(NULL);
    if (!p->tty || (done != total && now == p->last))
        return 0;
    p->last = now;
    int width = 30, filled = total ? (int)(width * done / total) : width;
    fprintf(stderr, "\r[%.*s%*s] %zu/%zu tensors, %.1f/%.1f MB", filled,
            "##############################", width - filled, "", done, total,
            bytes / 1e6, bytes_total / 1e6);
    if (done == total)
        fputc('\n', stderr);
    return 0;
}

/* Per-model parameters other than `weight` become plan parameters when
 * every model gives the same value; different values need per-model
 * parameters, which no strategy takes yet. */
static int apply_params(lm_context *ctx, lm_plan *plan,
                        const struct lmerge_config *c, double *weights)
{
    for (size_t i = 0; i < c->n_params; i++) {
        if (lm_plan_set_string(plan, c->params[i].key, c->params[i].value)) {
            fprintf(stderr, "lmerge run: %s:%d: %s\n", "parameters",
                    c->params[i].line, lm_context_error(ctx));
            return -1;
        }
    }
    for (size_t m = 0; m < c->n_models; m++) {
        weights[m] = 1.0;
        for (size_t j = 0; j < c->models[m].n_params; j++) {
            const struct lmerge_param *p = &c->models[m].params[j];
            if (strcmp(p->key, "weight") == 0) {
                char *end;
                weights[m] = strtod(p->value, &end);
                if (*end || !isfinite(weights[m])) {
                    fprintf(stderr, "lmerge run: line %d: weight '%s' is not "
                            "a number\n", p->line, p->value);
                    return -1;
                }
                continue;
            }
            for (size_t o = 0; o < c->n_models; o++) {
                bool same = false;
                for (size_t q = 0; q < c->models[o].n_params; q++)
                    if (!strcmp(c->models[o].params[q].key, p->key) &&
                        !strcmp(c->models[o].params[q].value, p->value))
                        same = true;
                if (!same) {
                    fprintf(stderr, "lmerge run: line %d: per-model '%s' "
                            "differs between models; libmerge takes one "
                            "value for all models: put it under the "
                            "top-level 'parameters'\n", p->line, p->key);
                    return -1;
                }
            }
            if (m == 0 && lm_plan_set_string(plan, p->key, p->value)) {
                fprintf(stderr, "lmerge run: line %d: %s\n", p->line,
                        lm_context_error(ctx));
                return -1;
            }
        }
    }
    return 0;
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf) {
        size_t got = fread(buf, 1, (size_t)n, f);
        buf[got] = '\0';
    }
    fclose(f);
    return buf;
}

/* The output directory, guarded against every input of the config. */
static int begin_output(lm_context *ctx, const struct run_opts *o,
                        const struct lmerge_config *c, lm_output_dir **out)
{
    const char **inputs = calloc(c->n_models + 1, sizeof(*inputs));
    if (!inputs) {
        fprintf(stderr, "lmerge run: out of memory\n");
        return -1;
    }
    inputs[0] = c->base_model;
    for (size_t m = 0; m < c->n_models; m++)
        inputs[m + 1] = c->models[m].path;
    lm_output_dir_options opts;
    lm_output_dir_options_init(&opts);
    opts.overwrite = o->overwrite;
    opts.inputs = inputs;
    opts.n_inputs = c->n_models + 1;
    lm_status st = lm_output_dir_begin(ctx, o->out_dir, &opts, out);
    free(inputs);
    if (st != LM_OK)
        fprintf(stderr, "lmerge run: %s%s\n", lm_context_error(ctx),
                st == LM_ERR_EXISTS && !o->overwrite
                    ? " (lmerge run --overwrite)"
                    : "");
    return st != LM_OK;
}

/* The config's inputs for tokenizer merging: the base, then the models
 * (NULL for a LoRA adapter). */
static int prepare_tokenizer(lm_context *ctx, const struct lmerge_config *c,
                             lm_model *base, lm_model *const *models,
                             lmerge_tok_plan **tok, lm_model ***remapped)
{
    size_t n = c->n_models + 1;
    const char **paths = calloc(n, sizeof(*paths));
    lm_model **in = calloc(n, sizeof(*in));
    int rc = -1;
    if (paths && in) {
        paths[0] = c->base_model;
        in[0] = base;
        for (size_t m = 0; m < c->n_models; m++) {
            paths[m + 1] = c->models[m].path;
            in[m + 1] = models[m];
        }
        rc = lmerge_tokenizer_prepare(ctx, &c->tokenizer, paths, in, n, tok,
                                      remapped);
    } else {
        fprintf(stderr, "lmerge run: out of memory\n");
    }
    free(paths);
    free(in);
    return rc;
}

/* Rank and rank count under MPI; 0 and 1 otherwise. */
static int my_rank(void)
{
#ifdef LMERGE_MPI
    return lmerge_mpi_rank();
#else
    return 0;
#endif
}

static int rank_count(void)
{
#ifdef LMERGE_MPI
    return lmerge_mpi_size();
#else
    return 1;
#endif
}

int lmerge_run(int argc, char **argv)
{
    struct run_opts o;
    if (parse_args(argc, argv, &o))
        return 2;
    if (rank_count() == 1)
        lmerge_interrupt_install();
    struct lmerge_config c;
    char err[1024];
    if (lmerge_config_load(o.config, &c, err, sizeof(err))) {
        fprintf(stderr, "lmerge run: %s\n", err);
        return 1;
    }
    int rc = 1;
    lm_context *ctx = NULL;
    lm_model *base = NULL, **models = calloc(c.n_models, sizeof(*models));
    lm_lora **adapters = calloc(c.n_models, sizeof(*adapters));
    double *weights = calloc(c.n_models, sizeof(*weights));
    lm_plan *plan = NULL;
    lm_file_sink *sink = NULL;
    lm_output_dir *out = NULL;
    lm_stats *stats = NULL;
    lmerge_tok_plan *tok = NULL;
    lm_model **remapped = NULL;
    char *config_text = read_text(o.config);
    lm_context_options co = LM_CONTEXT_OPTIONS_INIT;
    co.n_threads = o.threads;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (!models || !adapters || !weights ||
        lm_context_create(&co, &ctx) != LM_OK) {
        fprintf(stderr, "lmerge run: out of memory\n");
        goto done;
    }
    if (lm_model_open(ctx, c.base_model, &base)) {
        fprintf(stderr, "lmerge run: base_model: %s\n", lm_context_error(ctx));
        goto done;
    }
    for (size_t m = 0; m < c.n_models; m++) {
        lm_status st = lm_input_open(ctx, c.models[m].path, &models[m],
                                     &adapters[m]);
        if (st != LM_OK) {
            fprintf(stderr, "lmerge run: %s:%d: %s\n", o.config,
                    c.models[m].line, lm_context_error(ctx));
            goto done;
        }
    }
    /* Tokenizer merging: the plan merges remapped copies (same tensors,
     * embedding rows on the merged vocabulary). */
    if (prepare_tokenizer(ctx, &c, base, models, &tok, &remapped))
        goto done;
    lm_model *plan_base = remapped && remapped[0] ? remapped[0] : base;
    if (lm_plan_create(ctx, c.merge_method, &plan)) {
        fprintf(stderr, "lmerge run: %s:%d: %s\n", o.config,
                c.merge_method_line, lm_context_error(ctx));
        goto done;
    }
    if (apply_params(ctx, plan, &c, weights))
        goto done;
    const char *dtype_name = o.dtype ? o.dtype : c.out_dtype ? c.out_dtype
                                                             : c.dtype;
    lm_dtype out_dtype = LM_F32;
    if (dtype_name) {
        if (lm_dtype_parse(dtype_name, &out_dtype) ||
            lm_plan_set_output_dtype(plan, out_dtype)) {
            fprintf(stderr, "lmerge run: unknown dtype '%s' (use f32, f16, "
                    "bf16 or f64)\n", dtype_name);
            goto done;
        }
    }
    lm_plan_set_base(plan, plan_base);
    for (size_t m = 0; m < c.n_models; m++) {
        if (adapters[m])
            lm_plan_add_lora(plan, adapters[m], weights[m]);
        else
            lm_plan_add_model(plan, remapped && remapped[m + 1]
                                        ? remapped[m + 1]
                                        : models[m],
                              weights[m]);
    }
    if (lmerge_tie_embeddings(ctx, plan, base, models, adapters, c.n_models,
                              o.quiet || o.json))
        goto done;
    double tuned_keep = NAN;
    if (lmerge_apply_stats(ctx, plan, &c, o.config, &stats) ||
        lmerge_apply_purify(ctx, plan, &c, o.config, &tuned_keep))
        goto done;
    if (!isnan(tuned_keep) && !o.quiet && !o.json)
        fprintf(stderr, "lmerge run: purify keep %.4g chosen on held-out "
                "rows\n", tuned_keep);

    uint64_t total = 0;
    for (size_t i = 0; i < lm_model_count(plan_base); i++) {
        const lm_tensor *t = lm_model_tensor(plan_base, i);
        total += lm_tensor_numel(t) *
                 lm_dtype_size(dtype_name ? out_dtype : lm_tensor_dtype(t));
    }
    /* Everything is written into a staging directory that becomes
     * OUT_DIR in one step at the end (rank 0 owns it under MPI). */
    if (my_rank() == 0 && begin_output(ctx, &o, &c, &out))
        goto done;
    const char *staging = out ? lm_output_dir_path(out) : o.out_dir;
    char version[64];
    snprintf(version, sizeof(version), "libmerge %s", lm_version_string());
    const char *keys[] = {"merged_by", "merge_method", "merge_config"};
    const char *values[] = {version, c.merge_method,
                            config_text ? config_text : ""};
    /* The library picks the format: the base's (a GGUF base gives a GGUF
     * output carrying its key/values), else safetensors, sharded when
     * large and the format shards. */
    lm_safetensors_sink_options so = LM_SAFETENSORS_SINK_OPTIONS_INIT;
    so.max_shard_bytes = total > o.shard_bytes ? o.shard_bytes : 0;
    so.metadata_keys = keys;
    so.metadata_values = values;
    so.n_metadata = 3;
    /* Under MPI only rank 0 owns the output files (see mpi_exec.c). */
    lm_status sink_st =
        my_rank() != 0
            ? LM_OK
            : lm_file_sink_create_for(ctx, staging, base, &so, &sink);
    if (sink_st) {
        fprintf(stderr, "lmerge run: %s\n", lm_context_error(ctx));
        goto done;
    }
    struct progress_state ps = {isatty(STDERR_FILENO) && !o.quiet && !o.json,
                                0};
    if (rank_count() > 1) {
#ifdef LMERGE_MPI
        /* Each failing rank has printed its rank, tensor and message. */
        if (lmerge_mpi_execute(ctx, plan, plan_base, dtype_name != NULL, out_dtype,
                               c.merge_method, sink))
            goto done;
#endif
    } else {
        lm_plan_set_progress(plan, show_progress, &ps);
        if (lm_plan_execute_to(plan, lm_file_sink_vtable(sink))) {
            fprintf(stderr, "lmerge run: merge failed: %s\n",
                    lm_context_error(ctx));
            goto done;
        }
    }
    if (my_rank() != 0) {
        rc = 0; /* rank 0 copies the side files and reports */
        goto done;
    }
    /* Side files go into the staging directory too, so a failed copy
     * leaves no model without its config behind. */
    if (o.copy_files && lmerge_copy_side_files(c.base_model, staging, err,
                                               sizeof(err))) {
        fprintf(stderr, "lmerge run: %s\n", err);
        goto done;
    }
    /* The merged tokenizer's files replace the base's copies. */
    if (tok && lmerge_tokenizer_write(tok, staging, err, sizeof(err))) {
        fprintf(stderr, "lmerge run: %s\n", err);
        goto done;
    }
    if (lmerge_interrupted())
        goto done;
    if (lm_output_dir_commit(out)) {
        fprintf(stderr, "lmerge run: %s\n", lm_context_error(ctx));
        goto done;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) +
                  (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    if (o.json) {
        printf("{\"status\": \"ok\", \"method\": \"%s\", \"models\": %zu, "
               "\"tensors\": %zu, \"bytes\": %llu, \"seconds\": %.3f, "
               "\"files\": [", c.merge_method, c.n_models,
               lm_model_count(plan_base), (unsigned long long)total, secs);
        for (size_t i = 0; i < lm_file_sink_file_count(sink); i++)
            printf("%s\"%s/%s\"", i ? ", " : "", o.out_dir,
                   strrchr(lm_file_sink_file(sink, i), '/') + 1);
        printf("]");
        if (!isnan(tuned_keep))
            printf(", \"purify_keep\": %.17g", tuned_keep);
        printf("}\n");
    } else if (!o.quiet) {
        bool small = total < 1000000;
        printf("merged %zu models with %s: %zu tensors, %.1f %s in %.2f s -> "
               "%s\n", c.n_models, c.merge_method, lm_model_count(plan_base),
               small ? total / 1e3 : total / 1e6, small ? "kB" : "MB", secs,
               o.out_dir);
    }
    rc = 0;
done:
    lm_file_sink_destroy(sink);
    lm_output_dir_destroy(out); /* removes the staging directory on failure */
    lm_plan_destroy(plan);
    lm_stats_destroy(stats);
    lmerge_tokenizer_release(tok, remapped, c.n_models + 1);
    for (size_t m = 0; models && adapters && m < c.n_models; m++) {
        lm_model_destroy(models[m]);
        lm_lora_destroy(adapters[m]);
    }
    free(models);
    free(adapters);
    free(weights);
    lm_model_destroy(base);
    lm_context_destroy(ctx);
    free(config_text);
    lmerge_config_free(&c);
    if (rc != 0 && lmerge_interrupted()) {
        fprintf(stderr, "lmerge run: stopped by signal %d; '%s' was not "
                "changed\n", lmerge_interrupted(), o.out_dir);
        return 128 + lmerge_interrupted();
    }
    return rc;
}
