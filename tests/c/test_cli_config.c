/* The lmerge YAML config reader: accepted shapes and line-numbered
 * errors. */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "testutil.h"

static int load_text(const char *text, struct lmerge_config *c, char *err,
                     size_t n)
{
    char path[64];
    snprintf(path, sizeof(path), "/tmp/lm_config_%d.yaml", (int)getpid());
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    int rc = lmerge_config_load(path, c, err, n);
    unlink(path);
    return rc;
}

START_TEST(mergekit_config)
{
    struct lmerge_config c;
    char err[512];
    int rc = load_text("merge_method: ties\n"
                       "base_model: ./base\n"
                       "models:\n"
                       "  - model: ./a\n"
                       "    parameters: {weight: 1.0, density: 0.5}\n"
                       "  - model: ./b\n"
                       "    parameters:\n"
                       "      weight: 0.3\n"
                       "  - ./c\n"
                       "parameters:\n"
                       "  lambda: 0.8\n"
                       "dtype: bfloat16\n",
                       &c, err, sizeof(err));
    ck_assert_msg(rc == 0, "%s", err);
    ck_assert_str_eq(c.merge_method, "ties");
    ck_assert_str_eq(c.base_model, "./base");
    ck_assert_str_eq(c.dtype, "bfloat16");
    ck_assert_uint_eq(c.n_models, 3);
    ck_assert_str_eq(c.models[2].path, "./c");
    ck_assert_uint_eq(c.models[0].n_params, 2);
    ck_assert_str_eq(c.models[0].params[1].key, "density");
    ck_assert_str_eq(c.models[1].params[0].value, "0.3");
    ck_assert_int_eq(c.models[1].params[0].line, 8);
    ck_assert_uint_eq(c.n_params, 1);
    ck_assert_str_eq(c.params[0].key, "lambda");
    lmerge_config_free(&c);
}
END_TEST

START_TEST(errors_name_the_line)
{
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"merge_method: ties\nbase_model: b\nmodels: [a]\nbogus: 1\n",
         ":4: unknown key 'bogus'"},
        {"merge_method: ties\nbase_model: b\nmodels:\n  - model: a\n"
         "    weight: 2\n",
         ":5: unknown key 'weight' in a model entry"},
        {"merge_method: ties\nbase_model: b\nmodels: [a]\nparameters:\n"
         "  density:\n    - filter: mlp\n",
         ":6: parameter 'density': a filter entry without 'value'"},
        {"merge_method: ties\nbase_model: b\nmodels: [a]\nparameters:\n"
         "  density:\n    - {filter: mlp, value: 1, when: 2}\n",
         ":6: unknown key 'when' in a filter entry"},
        {"merge_method: ties\nbase_model: b\nmodels: [a]\nparameters:\n"
         "  density: []\n", ":5: parameter 'density' is an empty list"},
        {"merge_method: ties\nmodels: [a]\nslices:\n  - sources:\n"
         "      - {model: a, layer_range: [0, 2]}\n",
         "both 'models' (line 2) and 'slices' (line 3)"},
        {"merge_method: ties\nslices:\n  - sources:\n      - model: a\n",
         ":4: slice source 'a' without 'layer_range'"},
        {"merge_method: ties\nslices:\n  - sources:\n"
         "      - {model: a, layer_range: [4, 2]}\n",
         ":4: 'layer_range' [4, 2] holds no layer"},
        {"merge_method: ties\nslices:\n  - sources:\n"
         "      - {model: a, layer_range: [0, 2]}\n    residual_weight: 1\n",
         ":5: 'residual_weight' in a slice is a mergekit feature"},
        {"merge_method: ties\nmodels: [a+b+c]\n", "more than one '+'"},
        {"merge_method: ties\nmodels: [org/a@main]\n", "'@revision'"},
        {"merge_method: ties\nmodels: [a]\nmodules: {}\n",
         ":3: 'modules' (per-module merges"},
        {"base_model: b\nmodels: [a]\n", "missing 'merge_method'"},
        {"merge_method: ties\nbase_model: b\n", "'models'"},
        {"merge_method: ties\nbase_model: b\nmodels: [a]\nmodels: [b]\n",
         ":4: key 'models' is given twice"},
        {"merge_method: [ties\n", "YAML syntax error"},
        {"merge_method: slerp\nslices: []\n", ":2: 'slices' is an empty list"},
        {"- a\n- b\n", "must be a mapping"},
        {"", "must be a mapping"},
        /* a second document used to be ignored */
        {"merge_method: ties\nbase_model: b\nmodels: [a]\n---\n"
         "merge_method: average\n", ":4: a second YAML document"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct lmerge_config c;
        char err[512] = "";
        ck_assert_int_eq(load_text(cases[i].text, &c, err, sizeof(err)), -1);
        ck_assert_msg(strstr(err, cases[i].want) != NULL,
                      "case %zu: '%s' lacks '%s'", i, err, cases[i].want);
    }
    struct lmerge_config c;
    char err[512];
    ck_assert_int_eq(lmerge_config_load("/nonexistent.yaml", &c, err,
                                        sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "cannot open"));
    /* A FIFO would block fopen() forever: refused by name instead (the
     * alarm fails the test rather than hanging it). */
    char fifo[64];
    snprintf(fifo, sizeof(fifo), "/tmp/lm_config_fifo_%d.yaml", (int)getpid());
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    alarm(20);
    int rc = lmerge_config_load(fifo, &c, err, sizeof(err));
    alarm(0);
    unlink(fifo);
    ck_assert_int_eq(rc, -1);
    ck_assert_msg(strstr(err, "is a FIFO, not a regular file") != NULL, "%s",
                  err);
    ck_assert_int_eq(lmerge_config_load("/dev/null", &c, err, sizeof(err)),
                     -1);
    ck_assert_msg(strstr(err, "'/dev/null' is a character device") != NULL,
                  "%s", err);
}
END_TEST

/* Gradients, filters and slices as mergekit's config.py reads them, and
 * evaluate_setting's arithmetic on them. */
START_TEST(gradients_filters_slices)
{
    struct lmerge_config c;
    char err[512];
    int rc = load_text(
        "merge_method: slerp\n"
        "base_model: a+lora_a\n"
        "slices:\n"
        "  - sources:\n"
        "      - model: a+lora_a\n"
        "        layer_range: [0, 4]\n"
        "      - model: b\n"
        "        layer_range: [2, 6]\n"
        "        parameters: {weight: [0, 1]}\n"
        "    parameters:\n"
        "      t: 0.25\n"
        "parameters:\n"
        "  t:\n"
        "    - filter: self_attn\n"
        "      value: [0, 0.5, 0.3, 0.7, 1]\n"
        "    - filter: mlp\n"
        "      value: [1, 0.5, 0.7, 0.3, 0]\n"
        "    - value: 0.5\n"
        "  only_mlp:\n"
        "    - {filter: mlp, value: 2}\n"
        "dtype: float16\n",
        &c, err, sizeof(err));
    ck_assert_msg(rc == 0, "%s", err);
    ck_assert_str_eq(c.base_model, "a");
    ck_assert_str_eq(c.base_lora, "lora_a");
    ck_assert_uint_eq(c.n_slices, 1);
    ck_assert_uint_eq(c.slices[0].n_sources, 2);
    ck_assert_str_eq(c.slices[0].sources[0].lora, "lora_a");
    ck_assert_int_eq(c.slices[0].sources[1].layer_range[0], 2);
    ck_assert_int_eq(c.slices[0].sources[1].layer_range[1], 6);
    const struct lmerge_param *t = &c.params[0];
    ck_assert_uint_eq(t->n_conds, 3);
    const char *text;
    double v;
    /* [0, .5, .3, .7, 1] at t = 0.6: scaled 2.4, 0.6 * 0.3 + 0.4 * 0.7 */
    ck_assert_int_eq(lmerge_param_eval(t, "model.layers.3.self_attn.q.weight",
                                       0.6, &text, &v), 1);
    ck_assert_ptr_null(text);
    ck_assert_double_eq_tol(v, 0.6 * 0.3 + 0.4 * 0.7, 1e-15);
    ck_assert_int_eq(lmerge_param_eval(t, "model.layers.3.mlp.up.weight", 1.0,
                                       &text, &v), 1);
    ck_assert_double_eq(v, 0.0);
    ck_assert_int_eq(lmerge_param_eval(t, "model.norm.weight", 0.3, &text, &v),
                     1);
    ck_assert_str_eq(text, "0.5");
    /* No filter matches: the next level of precedence decides. */
    ck_assert_int_eq(lmerge_param_eval(&c.params[1], "model.norm.weight", 0.0,
                                       &text, &v), 0);
    lmerge_config_free(&c);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("cli");
    tcase_add_test(tc, mergekit_config);
    tcase_add_test(tc, errors_name_the_line);
    tcase_add_test(tc, gradients_filters_slices);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
