/* `lmerge demo`: merge example models generated in memory (a small MLP
 * and three fine-tuned variants with low-rank task vectors) and check every
 * merged value against an independent f64 computation. */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/stat.h>

#include "commands.h"

#define N_TASKS 3

static const struct {
    const char *name;
    int ndim;
    int64_t shape[2];
} demo_tensors[] = {
    {"fc1.weight", 2, {64, 32}},
    {"fc1.bias", 1, {64, 0}},
    {"fc2.weight", 2, {16, 64}},
    {"fc2.bias", 1, {16, 0}},
};
#define N_TENSORS (sizeof(demo_tensors) / sizeof(demo_tensors[0]))

static double uniform(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (double)(z >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

/* Base: uniform weights. Task t: base + a rank-2 update u v^T / 10 for
 * matrices, small noise for biases. */
static lm_status build_models(lm_context *ctx, lm_dtype dtype,
                              lm_model **base, lm_model **tasks)
{
    lm_status st = lm_model_create(ctx, base);
    for (int t = 0; st == LM_OK && t < N_TASKS; t++)
        st = lm_model_create(ctx, &tasks[t]);
    for (size_t k = 0; st == LM_OK && k < N_TENSORS; k++) {
        lm_tensor *bt;
        st = lm_tensor_create(ctx, dtype, demo_tensors[k].ndim,
                              demo_tensors[k].shape, &bt);
        if (st != LM_OK)
            break;
        uint64_t s = 1000 + k;
        for (size_t i = 0; i < lm_tensor_numel(bt); i++)
            lm_tensor_set(bt, i, 0.2 * uniform(&s));
        if ((st = lm_model_add(*base, demo_tensors[k].name, bt)) != LM_OK) {
            lm_tensor_destroy(bt);
            break;
        }
        for (int t = 0; st == LM_OK && t < N_TASKS; t++) {
            lm_tensor *ft;
            if ((st = lm_tensor_clone(ctx, bt, &ft)) != LM_OK)
                break;
            int64_t rows = demo_tensors[k].shape[0];
            int64_t cols = demo_tensors[k].ndim == 2 ? demo_tensors[k].shape[1]
                                                     : 1;
            uint64_t s2 = 77 * (uint64_t)(t + 1) + k;
            double u[2][64], v[2][64];
            for (int r = 0; r < 2; r++)
                for (int64_t i = 0; i < 64; i++) {
                    u[r][i] = uniform(&s2);
                    v[r][i] = uniform(&s2);
                }
            for (int64_t i = 0; i < rows; i++)
                for (int64_t j = 0; j < cols; j++) {
                    double b, d = (u[0][i] * v[0][j] + u[1][i] * v[1][j]) / 10;
                    size_t idx = (size_t)(i * cols + j);
                    lm_tensor_get(bt, idx, &b);
                    lm_tensor_set(ft, idx, b + d);
                }
            if ((st = lm_model_add(tasks[t], demo_tensors[k].name, ft)) !=
                LM_OK)
                lm_tensor_destroy(ft);
        }
    }
    return st;
}

/* Worst error of `merged` against the formula, in units of the output
 * dtype's rounding at each value's magnitude. */
static double check(const lm_model *base, lm_model *const *tasks,
                    const lm_model *merged, const char *method, double lambda,
                    double *cosines)
{
    double worst = 0.0, dot[N_TASKS] = {0}, nt[N_TASKS] = {0}, nm = 0;
    for (size_t k = 0; k < lm_model_count(base); k++) {
        const lm_tensor *b = lm_model_at(base, k);
        lm_tensor *m;
        lm_model_find(merged, lm_model_name_at(base, k), &m);
        lm_dtype dt = lm_tensor_dtype(b);
        double eps = dt == LM_BF16 ? 0x1p-8 : dt == LM_F16 ? 0x1p-11 : 0x1p-24;
        for (size_t i = 0; i < lm_tensor_numel(b); i++) {
            double bv, mv, acc = 0, mag = 0, tv[N_TASKS];
            lm_tensor_get(b, i, &bv);
            lm_tensor_get(m, i, &mv);
            for (int t = 0; t < N_TASKS; t++) {
                lm_tensor *tt;
                lm_model_find(tasks[t], lm_model_name_at(base, k), &tt);
                lm_tensor_get(tt, i, &tv[t]);
                tv[t] -= bv;
                acc += tv[t];
                mag += fabs(tv[t]) + fabs(bv);
            }
            double want = strcmp(method, "average") == 0 ? bv + acc / N_TASKS
                                                         : bv + lambda * acc;
            double err = fabs(mv - want) / (eps * (fabs(want) + mag));
            if (err > worst)
                worst = err;
            for (int t = 0; t < N_TASKS; t++) {
                dot[t] += (mv - bv) * tv[t];
                nt[t] += tv[t] * tv[t];
            }
            nm += (mv - bv) * (mv - bv);
        }
    }
    for (int t = 0; t < N_TASKS; t++)
        cosines[t] = dot[t] / sqrt(nt[t] * nm);
    return worst;
}

static int write_inputs(lm_context *ctx, const char *dir, lm_model *base,
                        lm_model *const *tasks)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/base", dir);
    if (mkdir(path, 0777) && errno != EEXIST)
        return -1;
    snprintf(path, sizeof(path), "%s/base/model.safetensors", dir);
    if (lm_safetensors_write(ctx, base, path, NULL))
        return -1;
    snprintf(path, sizeof(path), "%s/base/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "{\"model_type\": \"lmerge-demo-mlp\", \"hidden\": 64}\n");
    fclose(f);
    for (int t = 0; t < N_TASKS; t++) {
        snprintf(path, sizeof(path), "%s/task%d.safetensors", dir, t + 1);
        if (lm_safetensors_write(ctx, tasks[t], path, NULL))
            return -1;
    }
    snprintf(path, sizeof(path), "%s/merge.yaml", dir);
    f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "merge_method: task_arithmetic\n"
               "base_model: %s/base\n"
               "models:\n", dir);
    for (int t = 0; t < N_TASKS; t++)
        fprintf(f, "  - model: %s/task%d.safetensors\n"
                   "    parameters: {weight: 1.0}\n", dir, t + 1);
    fprintf(f, "parameters:\n  lambda: 0.4\n");
    fclose(f);
    return 0;
}

/* The main job: example models written to files, merged by `lmerge run`,
 * the result read back and checked against an independent f64 computation;
 * then the same check for the other dtypes and `average`, in memory. */
int lmerge_demo(int argc, char **argv)
{
    char dir[4096] = "";
    if (argc == 3 && strcmp(argv[1], "--dir") == 0) {
        snprintf(dir, sizeof(dir), "%s", argv[2]);
        if (mkdir(dir, 0777) && errno != EEXIST) {
            fprintf(stderr, "lmerge demo: cannot create '%s': %s\n", dir,
                    strerror(errno));
            return 1;
        }
    } else if (argc == 1) {
        snprintf(dir, sizeof(dir), "%s/lmerge-demo-XXXXXX",
                 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
        if (!mkdtemp(dir)) {
            fprintf(stderr, "lmerge demo: cannot create a directory\n");
            return 1;
        }
    } else {
        fprintf(stderr, "usage: lmerge demo [--dir DIR]\n");
        return 2;
    }
    lm_context *ctx;
    if (lm_context_create(NULL, &ctx) != LM_OK) {
        fprintf(stderr, "lmerge demo: cannot create a context\n");
        return 1;
    }
    printf("libmerge %s demo: a 2-layer MLP base (fc1 64x32, fc2 16x64) and %d "
           "fine-tuned variants,\neach a rank-2 task vector per weight "
           "matrix, written as safetensors to\n  %s\n\n",
           lm_version_string(), N_TASKS, dir);
    int failures = 0;
    lm_model *base = NULL, *tasks[N_TASKS] = {NULL}, *merged = NULL;
    if (build_models(ctx, LM_F32, &base, tasks) != LM_OK ||
        write_inputs(ctx, dir, base, tasks) != 0) {
        fprintf(stderr, "lmerge demo: cannot write the example models: %s\n",
                lm_context_error(ctx));
        failures++;
    } else {
        char config[4096], out[4096];
        snprintf(config, sizeof(config), "%s/merge.yaml", dir);
        snprintf(out, sizeof(out), "%s/merged", dir);
        /* --overwrite: a second demo in the same --dir replaces its own
         * earlier result. */
        printf("$ lmerge run %s -o %s --overwrite\n", config, out);
        fflush(stdout);
        char *run_argv[] = {"run", config, "-o", out, "--overwrite", NULL};
        if (lmerge_run(5, run_argv) != 0) {
            failures++;
        } else if (lm_model_open(ctx, out, &merged) != LM_OK) {
            fprintf(stderr, "lmerge demo: cannot read the result: %s\n",
                    lm_context_error(ctx));
            failures++;
        } else {
            double cos[N_TASKS];
            double worst = check(base, tasks, merged, "task_arithmetic", 0.4,
                                 cos);
            bool ok = worst <= 4.0;
            failures += !ok;
            printf("read back %zu tensors: cos(merged, task i) = %.3f %.3f "
                   "%.3f, max error %.2f rounding units  %s\n\n",
                   lm_model_count(merged), cos[0], cos[1], cos[2], worst,
                   ok ? "OK" : "MISMATCH");
        }
    }
    lm_model_destroy(merged);
    lm_model_destroy(base);
    for (int t = 0; t < N_TASKS; t++)
        lm_model_destroy(tasks[t]);

    static const struct {
        const char *method;
        double lambda;
        lm_dtype dtype;
    } runs[] = {
        {"task_arithmetic", 0.4, LM_BF16},
        {"average", 0.0, LM_F32},
        {"average", 0.0, LM_F16},
    };
    printf("in memory:\n");
    for (size_t r = 0; r < sizeof(runs) / sizeof(runs[0]); r++) {
        lm_model *b = NULL, *ts[N_TASKS] = {NULL}, *m = NULL;
        lm_plan *plan = NULL;
        lm_status st = build_models(ctx, runs[r].dtype, &b, ts);
        if (st == LM_OK)
            st = lm_plan_create(ctx, runs[r].method, &plan);
        if (st == LM_OK && strcmp(runs[r].method, "task_arithmetic") == 0)
            st = lm_plan_set_float(plan, "lambda", runs[r].lambda);
        if (st == LM_OK)
            st = lm_plan_set_base(plan, b);
        for (int t = 0; st == LM_OK && t < N_TASKS; t++)
            st = lm_plan_add_model(plan, ts[t], 1.0);
        if (st == LM_OK)
            st = lm_plan_execute(plan, &m);
        if (st != LM_OK) {
            fprintf(stderr, "lmerge demo: %s failed: %s (%s)\n",
                    runs[r].method, lm_strerror(st), lm_context_error(ctx));
            failures++;
        } else {
            double cos[N_TASKS];
            double worst = check(b, ts, m, runs[r].method, runs[r].lambda,
                                 cos);
            bool ok = worst <= 4.0;
            failures += !ok;
            printf("  %-16s %-5s %zu tensors  cos(merged, task i) = %.3f %.3f "
                   "%.3f  max error %.2f rounding units  %s\n",
                   runs[r].method, lm_dtype_name(runs[r].dtype),
                   lm_model_count(m), cos[0], cos[1], cos[2], worst,
                   ok ? "OK" : "MISMATCH");
        }
        lm_model_destroy(m);
        lm_plan_destroy(plan);
        lm_model_destroy(b);
        for (int t = 0; t < N_TASKS; t++)
            lm_model_destroy(ts[t]);
    }
    lm_context_destroy(ctx);
    printf("\ncheck: %s\n", failures ? "FAILED"
                                     : "every merged value matches an "
                                       "independent f64 computation");
    return failures ? 1 : 0;
}
