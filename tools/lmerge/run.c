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
#include "conv1d.h"
#include "layout.h"
#include "ties.h"
#include "config.h"
#include "inputs.h"
#include "out_files.h"
#include "resolve.h"
#include "tokenizer.h"

struct run_opts {
    const char *config;
    const char *out_dir;
    int threads;
    uint64_t shard_bytes;
    const char *dtype;
    const char *gguf_type;
    bool json, quiet, copy_files, overwrite, dry_run;
};

static void run_usage(FILE *f)
{
    fprintf(f,
            "usage: lmerge run CONFIG.yaml -o OUT_DIR [--threads N]\n"
            "                  [--shard-size SIZE] [--dtype f32|f16|bf16]\n"
            "                  [--gguf-type auto|q8_0]\n"
            "                  [--json] [--quiet] [--no-copy-files] [--overwrite]\n"
            "       lmerge run --dry-run CONFIG.yaml   (print the resolved plan,\n"
            "                  write nothing)\n"
            "\n"
            "CONFIG is a mergekit config: merge_method, base_model, models or\n"
            "slices, parameters (gradients and filters), dtype/out_dtype\n"
            "(docs/cli.md, \"Coming from mergekit\").\n"
            "lmerge's gguf_type (or --gguf-type) sets a GGUF base's output: auto\n"
            "writes tensors dequantized from a quantized base as F16, q8_0\n"
            "writes 2-D weights as Q8_0.\n"
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
        } else if (!strcmp(a, "--gguf-type") && next) {
            o->gguf_type = next;
            i++;
        } else if (!strcmp(a, "--json")) {
            o->json = true;
        } else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
            o->quiet = true;
        } else if (!strcmp(a, "--no-copy-files")) {
            o->copy_files = false;
        } else if (!strcmp(a, "--overwrite")) {
            o->overwrite = true;
        } else if (!strcmp(a, "--dry-run") || !strcmp(a, "-n")) {
            o->dry_run = true;
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
    if (!o->config || (!o->out_dir && !o->dry_run)) {
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
                        const struct lmerge_inputs *in, lm_output_dir **out)
{
    /* MODEL+LORA references guard both parts. */
    const char **inputs = calloc(2 * in->n + 1, sizeof(*inputs));
    char **parts = calloc(2 * in->n + 1, sizeof(*parts));
    size_t n = 0;
    for (size_t i = 0; inputs && parts && i < in->n; i++) {
        const char *plus = strchr(in->ref[i], '+');
        if (!plus) {
            inputs[n++] = in->ref[i];
            continue;
        }
        parts[n] = strndup(in->ref[i], (size_t)(plus - in->ref[i]));
        inputs[n] = parts[n];
        n++;
        inputs[n++] = plus + 1;
    }
    if (!inputs || !parts) {
        free(inputs);
        free(parts);
        fprintf(stderr, "lmerge run: out of memory\n");
        return -1;
    }
    lm_output_dir_options opts;
    lm_output_dir_options_init(&opts);
    opts.overwrite = o->overwrite;
    opts.inputs = inputs;
    opts.n_inputs = n;
    lm_status st = lm_output_dir_begin(ctx, o->out_dir, &opts, out);
    for (size_t i = 0; i < n; i++)
        free(parts[i]);
    free(parts);
    free(inputs);
    if (st != LM_OK)
        fprintf(stderr, "lmerge run: %s%s\n", lm_context_error(ctx),
                st == LM_ERR_EXISTS && !o->overwrite
                    ? " (lmerge run --overwrite)"
                    : "");
    return st != LM_OK;
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

/* Tokenizer merging (tokenizer.h): the inputs' paths (a MODEL+LORA
 * reference's model part) and models, the base first; the remapped models
 * (same tensors, embedding rows on the merged vocabulary) then stand in
 * for the inputs, the originals kept in *orig to destroy; *paths_out
 * (NULL-terminated) to free after the plan. */
static int prepare_tokenizer(lm_context *ctx, const struct lmerge_config *c,
                             struct lmerge_inputs *in, lmerge_tok_plan **tok,
                             lm_model ***remapped, lm_model ***orig,
                             char ***paths_out)
{
    size_t n = in->n;
    /* Without base_model the first input gives the vocabulary but is no
     * base for the fallback rows (mergekit's embed.py). */
    struct lmerge_tok_spec spec = c->tokenizer;
    spec.no_base_model = c->base_model == NULL;
    /* The plan keeps pointers to the paths: they live until the end. */
    char **paths = calloc(n + 1, sizeof(*paths));
    *paths_out = paths;
    *orig = calloc(n, sizeof(**orig));
    int rc = paths && *orig ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < n; i++)
        if (!(paths[i] = strndup(in->ref[i], strcspn(in->ref[i], "+"))))
            rc = -1;
    if (rc)
        fprintf(stderr, "lmerge run: out of memory\n");
    else
        rc = lmerge_tokenizer_prepare(ctx, &spec,
                                      (const char *const *)paths, in->model,
                                      n, tok, remapped);
    for (size_t i = 0; rc == 0 && *remapped && i < n; i++)
        if ((*remapped)[i]) {
            (*orig)[i] = in->model[i];
            in->model[i] = (*remapped)[i];
        }
    return rc;
}

/* The strategy a method runs on in this build. */
static const char *pick_strategy(lm_context *ctx, const struct lmerge_method *m,
                                 const struct lmerge_config *c,
                                 const char *path)
{
    const lm_strategy_vtable *vt;
    if (lm_strategy_find(ctx, m->strategy, &vt) == LM_OK)
        return m->strategy;
    if (m->alt_strategy && lm_strategy_find(ctx, m->alt_strategy, &vt) == LM_OK)
        return m->alt_strategy;
    if (m->mergekit)
        fprintf(stderr, "lmerge run: %s:%d: mergekit's '%s' needs libmerge "
                "strategy '%s', which this build does not have (lmerge "
                "methods)\n", path, c->merge_method_line, m->name,
                m->strategy);
    else
        fprintf(stderr, "lmerge run: %s:%d: no strategy named '%s' (lmerge "
                "methods lists them)\n", path, c->merge_method_line, m->name);
    return NULL;
}

static void print_plan(const struct lmerge_config *c,
                       const struct lmerge_layout *l,
                       const struct lmerge_inputs *in,
                       const struct lmerge_resolved *r, const char *strategy,
                       const char *dtype, const lm_model *base)
{
    const struct lmerge_method *m = l->method;
    printf("method: %s%s -> libmerge strategy %s\n", m->name,
           m->mergekit ? " (mergekit)" : "", strategy);
    const struct lmerge_out *o = &l->out[0];
    printf("base: %s%s\n", in->ref[o->base.input],
           m->role == LMERGE_BASE_MEMBER ? " (also a model of the merge)"
           : m->role == LMERGE_BASE_REFERENCE
               ? " (the reference task vectors are taken from)"
               : "");
    printf("models (%zu):\n", l->n_models);
    for (size_t j = 0; j < l->n_models; j++) {
        printf("  %zu: %s", j, in->ref[o->models[j].input]);
        for (size_t t = 1; t < l->n_out; t++)
            if (l->out[t].models[j].input != o->models[j].input) {
                printf(" (first slice; other slices read other models)");
                break;
            }
        printf("\n");
    }
    printf("parameters:\n");
    lmerge_resolved_print(stdout, l, r);
    printf("output dtype: %s\n", dtype ? dtype : "as the inputs");
    printf("output: %zu tensors", l->n_out);
    if (l->n_layers_out >= 0)
        printf(", %ld layers%s", l->n_layers_out,
               l->renumbered && l->n_layers_in >= 0 &&
                       l->n_layers_in != l->n_layers_out
                   ? " (renumbered; config.json num_hidden_layers updated)"
                   : "");
    printf(", %s\n", l->direct ? "read from the inputs as they are"
                               : "assembled from slices / LoRA-applied inputs");
    for (size_t t = 0; t < l->n_out; t++) {
        const struct lmerge_out *x = &l->out[t];
        printf("  %s  t=%.4g  <-", x->name, x->t);
        printf(" base %s", strcmp(x->base.in_name, x->name) ? x->base.in_name
                                                              : "=");
        for (size_t j = 0; j < l->n_models; j++)
            printf(", %zu %s", j,
                   strcmp(x->models[j].in_name, x->name) ? x->models[j].in_name
                                                          : "=");
        printf("\n");
    }
    (void)c;
    (void)base;
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
    struct lmerge_method scratch;
    const struct lmerge_method *method =
        lmerge_method_find(c.merge_method, &scratch);
    struct lmerge_method no_base;
    if (!c.base_model)
        method = lmerge_method_without_base(method, &no_base);
    struct lmerge_inputs in = {0};
    struct lmerge_layout layout = {0};
    struct lmerge_resolved res = {0};
    struct lmerge_views views = {0};
    lm_plan *plan = NULL;
    lm_file_sink *sink = NULL;
    lm_output_dir *out = NULL;
    lm_stats *stats = NULL;
    lmerge_tok_plan *tok = NULL;
    lm_model **remapped = NULL, **orig_models = NULL;
    char **tok_paths = NULL;
    char *config_text = read_text(o.config);
    lm_context_options co = LM_CONTEXT_OPTIONS_INIT;
    co.n_threads = o.threads;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (lm_context_create(&co, &ctx) != LM_OK) {
        fprintf(stderr, "lmerge run: out of memory\n");
        goto done;
    }
    const char *strategy = pick_strategy(ctx, method, &c, o.config);
    if (!strategy || lmerge_inputs_open(ctx, &c, o.config, &in) ||
        prepare_tokenizer(ctx, &c, &in, &tok, &remapped, &orig_models,
                          &tok_paths) ||
        lmerge_layout_build(&c, o.config, method, &in, &layout) ||
        lmerge_resolve(&c, o.config, &layout, &res) ||
        lmerge_views_build(ctx, &layout, &in, &views))
        goto done;
    if (lm_plan_create(ctx, strategy, &plan)) {
        fprintf(stderr, "lmerge run: %s:%d: %s\n", o.config,
                c.merge_method_line, lm_context_error(ctx));
        goto done;
    }
    lm_plan_set_base(plan, views.base);
    for (size_t j = 0; j < layout.n_models; j++) {
        double w = lmerge_resolved_weight(&res, j);
        lm_status st = views.models[j]
                           ? lm_plan_add_model(plan, views.models[j], w)
                           : lm_plan_add_lora(plan, views.adapters[j], w);
        if (st != LM_OK) {
            fprintf(stderr, "lmerge run: %s\n", lm_context_error(ctx));
            goto done;
        }
    }
    if (lmerge_resolved_apply(ctx, plan, &layout, &res, o.config))
        goto done;
    const char *dtype_name = o.dtype ? o.dtype : c.out_dtype ? c.out_dtype
                                                             : c.dtype;
    int dtype_line = o.dtype ? 0 : c.out_dtype ? c.out_dtype_line
                                               : c.dtype_line;
    lm_dtype out_dtype = LM_F32;
    if (dtype_name) {
        const char *d = strncmp(dtype_name, "torch.", 6) ? dtype_name
                                                         : dtype_name + 6;
        if (lm_dtype_parse(d, &out_dtype) ||
            lm_plan_set_output_dtype(plan, out_dtype)) {
            fprintf(stderr, "lmerge run: %s:%d: unknown dtype '%s' (use "
                    "float32, float16, bfloat16; or f32, f16, bf16, f64)\n",
                    o.config, dtype_line, dtype_name);
            goto done;
        }
    }
    if (lmerge_tie_embeddings(ctx, plan, views.base, views.models,
                              views.adapters, layout.n_models,
                              o.quiet || o.json || o.dry_run) ||
        lmerge_set_layouts(ctx, plan, in.ref[layout.out[0].base.input],
                           views.base, o.quiet || o.json || o.dry_run))
        goto done;
    double tuned_keep = NAN;
    if (lmerge_apply_stats(ctx, plan, &c, o.config, &stats))
        goto done;
    if (o.dry_run) {
        print_plan(&c, &layout, &in, &res, strategy, dtype_name, views.base);
        if (c.n_purify)
            printf("purify: %zu option(s), applied at execution\n",
                   c.n_purify);
        rc = 0;
        goto done;
    }
    if (lmerge_apply_purify(ctx, plan, &c, o.config, &tuned_keep))
        goto done;
    if (!isnan(tuned_keep) && !o.quiet && !o.json)
        fprintf(stderr, "lmerge run: purify keep %.4g chosen on held-out "
                "rows\n", tuned_keep);

    uint64_t total = 0;
    for (size_t i = 0; i < lm_model_count(views.base); i++) {
        const lm_tensor *t = lm_model_at(views.base, i);
        total += lm_tensor_numel(t) *
                 lm_dtype_size(dtype_name ? out_dtype : lm_tensor_dtype(t));
    }
    /* Everything is written into a staging directory that becomes
     * OUT_DIR in one step at the end (rank 0 owns it under MPI). */
    if (my_rank() == 0 && begin_output(ctx, &o, &in, &out))
        goto done;
    const char *staging = out ? lm_output_dir_path(out) : o.out_dir;
    char version[64];
    snprintf(version, sizeof(version), "libmerge %s", lm_version_string());
    const char *keys[] = {"merged_by", "merge_method", "merge_config"};
    const char *values[] = {version, c.merge_method,
                            config_text ? config_text : ""};
    /* The library picks the format: the base's (a GGUF base gives a GGUF
     * output carrying its key/values), else safetensors, sharded when
     * large and the format shards. A frankenmerge is safetensors: the
     * base's key/values would describe another layer count. */
    lm_safetensors_sink_options so = LM_SAFETENSORS_SINK_OPTIONS_INIT;
    so.max_shard_bytes = total > o.shard_bytes ? o.shard_bytes : 0;
    so.metadata_keys = keys;
    so.metadata_values = values;
    so.n_metadata = 3;
    const lm_model *like = c.n_slices ? NULL : in.model[layout.out[0].base.input];
    /* Under MPI only rank 0 owns the output files (see mpi_exec.c). */
    int gguf = my_rank() != 0 ? 0 : lmerge_gguf_sink(
        ctx, staging, like, o.gguf_type ? o.gguf_type : c.gguf_type,
        dtype_name != NULL, keys, values, 3, &sink);
    if (gguf < 0)
        goto done;
    lm_status sink_st =
        my_rank() != 0 || gguf
            ? LM_OK
            : lm_file_sink_create_for(ctx, staging, like, &so, &sink);
    if (sink_st) {
        fprintf(stderr, "lmerge run: %s\n", lm_context_error(ctx));
        goto done;
    }
    struct progress_state ps = {isatty(STDERR_FILENO) && !o.quiet && !o.json,
                                0};
    if (rank_count() > 1) {
#ifdef LMERGE_MPI
        /* Each failing rank has printed its rank, tensor and message. */
        if (lmerge_mpi_execute(ctx, plan, views.base, dtype_name != NULL,
                               out_dtype, c.merge_method, sink))
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
    struct lmerge_out_info info = {
        .donor = in.ref[layout.out[0].base.input],
        .dtype = dtype_name,
        .n_layers = c.n_slices ? layout.n_layers_out : -1,
        .config_text = config_text ? config_text : "",
        .strategy = strategy,
        .copy_files = o.copy_files,
    };
    /* The donor of side files is base_model's model part, else the
     * first model (mergekit's _get_donor_model). */
    char *donor = strndup(info.donor, strcspn(info.donor, "+"));
    info.donor = donor;
    int wrc = donor ? lmerge_write_out_files(&c, &layout, &info, staging, err,
                                             sizeof(err))
                    : -1;
    free(donor);
    if (wrc) {
        fprintf(stderr, "lmerge run: %s\n", donor ? err : "out of memory");
        goto done;
    }
    /* The merged tokenizer's files replace the donor's copies. */
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
        printf("{\"status\": \"ok\", \"method\": \"%s\", \"strategy\": "
               "\"%s\", \"models\": %zu, \"tensors\": %zu, \"bytes\": %llu, "
               "\"seconds\": %.3f, \"files\": [", c.merge_method, strategy,
               layout.n_models, layout.n_out, (unsigned long long)total, secs);
        for (size_t i = 0; i < lm_file_sink_file_count(sink); i++)
            printf("%s\"%s/%s\"", i ? ", " : "", o.out_dir,
                   strrchr(lm_file_sink_file_at(sink, i), '/') + 1);
        printf("]");
        if (!isnan(tuned_keep))
            printf(", \"purify_keep\": %.17g", tuned_keep);
        printf("}\n");
    } else if (!o.quiet) {
        bool small = total < 1000000;
        printf("merged %zu models with %s: %zu tensors, %.1f %s in %.2f s -> "
               "%s\n", layout.n_models, c.merge_method, layout.n_out,
               small ? total / 1e3 : total / 1e6, small ? "kB" : "MB", secs,
               o.out_dir);
    }
    rc = 0;
done:
    lm_file_sink_destroy(sink);
    lm_output_dir_destroy(out); /* removes the staging directory on failure */
    lm_plan_destroy(plan);
    lm_stats_destroy(stats);
    lmerge_views_free(&views);
    lmerge_resolved_free(&res);
    lmerge_layout_free(&layout);
    for (size_t i = 0; orig_models && i < in.n; i++)
        if (orig_models[i])
            in.model[i] = orig_models[i];
    lmerge_tokenizer_release(tok, remapped, in.n);
    free(orig_models);
    for (size_t i = 0; tok_paths && tok_paths[i]; i++)
        free(tok_paths[i]);
    free(tok_paths);
    lmerge_inputs_close(&in);
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
