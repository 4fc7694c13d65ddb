/* Reader of the text fixtures written by
 * tests/fixtures/gen_strategy_fixtures.py (the format is documented at the
 * top of that script). A tiny reader of its own, so the strategy suites do
 * not depend on the library's file readers. Parse errors fail the running
 * Check test, naming the file and the token. */
#ifndef LM_TEST_FIXTURE_H
#define LM_TEST_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

#define FX_MAX_DIMS 4

typedef struct fx_tensor {
    char *name;
    int ndim;
    int64_t shape[FX_MAX_DIMS];
    size_t numel;
    float *values; /* n_models x numel, model 0 (the base) first */
} fx_tensor;

typedef struct fx_rows { /* one task's inputs to one layer (ESM statistics) */
    size_t task, n_rows, d_in;
    char *name;
    float *values; /* n_rows x d_in, row-major */
} fx_rows;

typedef struct fx_inputs {
    size_t n_models; /* base + tasks */
    size_t n_tensors, n_rows;
    fx_tensor *tensors;
    fx_rows *rows;
} fx_inputs;

typedef struct fx_param {
    char *name, *value;
    size_t model; /* param_model: that model's value; FX_ALL_MODELS: param */
} fx_param;
#define FX_ALL_MODELS ((size_t)-1)

typedef struct fx_expect { /* reference merged task vector, merged - base */
    char *name;
    size_t numel;
    double *values;
} fx_expect;

typedef struct fx_case {
    char *method, *inputs;
    uint64_t seed;
    size_t n_weights, n_params, n_expect;
    double *weights;
    fx_param *params;
    fx_expect *expect;
} fx_case;

/* dir/file, e.g. fx_path(LM_FIXTURE_DIR, "inputs_elem.txt"); free().
 * NULL when out of memory. */
char *fx_path(const char *dir, const char *file);
void fx_load_inputs(const char *path, fx_inputs *out);
void fx_load_case(const char *path, fx_case *out);
/* The names listed in an index file (one word a line), or NULL when it
 * cannot be read; free with fx_free_names. Usable outside a Check test. */
char **fx_load_names(const char *path, size_t *count);
void fx_free_inputs(fx_inputs *in);
void fx_free_case(fx_case *c);
void fx_free_names(char **names, size_t count);

#endif
