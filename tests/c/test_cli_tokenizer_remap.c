/* lmerge's tokenizer module called directly: the fallback rows of a token
 * the first input lacks or has, with and without a base model (mergekit's
 * PermutedEmbeddings: the base's row when the base has the token, else the
 * mean of the models having it). Expected rows are written out from that
 * rule; the values are exact in f32. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"
#include "tokenizer.h"

static char dirs[3][64];

/* Model i: tokens a, b and (models 0, 1) "X"; embedding row r of model i
 * holds (10 i + r, -(10 i + r)). */
static void write_dir(int i)
{
    snprintf(dirs[i], sizeof(dirs[i]), "/tmp/lm_tok_%d_%d", (int)getpid(),
             i);
    mkdir(dirs[i], 0700);
    char path[128];
    snprintf(path, sizeof(path), "%s/tokenizer.json", dirs[i]);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, "
               "\"b\": 1}, \"merges\": []}, \"added_tokens\": [%s]}",
            i < 2 ? "{\"id\": 2, \"content\": \"X\", \"special\": true}" : "");
    fclose(f);
}

static lm_model *model(lm_context *ctx, int i)
{
    int64_t rows = i < 2 ? 3 : 2, shape[2] = {rows, 2};
    lm_model *m;
    lm_tensor *t;
    ck_assert_int_eq(lm_model_create(ctx, &m), LM_OK);
    ck_assert_int_eq(lm_tensor_create(ctx, LM_F32, 2, shape, &t), LM_OK);
    float *d = lm_tensor_data(t);
    for (int r = 0; r < rows; r++) {
        d[2 * r] = (float)(10 * i + r);
        d[2 * r + 1] = -(float)(10 * i + r);
    }
    ck_assert_int_eq(lm_model_add(m, "model.embed_tokens.weight", t), LM_OK);
    return m;
}

static void run(bool no_base, const float *want_x_for_2)
{
    lm_context *ctx = tu_context(1, 0);
    lm_model *in[3], *out[3];
    const char *paths[3];
    for (int i = 0; i < 3; i++) {
        write_dir(i);
        paths[i] = dirs[i];
        in[i] = model(ctx, i);
    }
    struct lmerge_tok_spec spec = {0};
    spec.source = "union";
    spec.no_base_model = no_base;
    lmerge_tok_plan *plan;
    char err[512];
    ck_assert_msg(lmerge_tokenizer_plan(&spec, paths, 3, &plan, err,
                                        sizeof(err)) == 0, "%s", err);
    ck_assert_int_eq(lmerge_tokenizer_rows(plan), 3);
    ck_assert_msg(lmerge_tokenizer_remap(plan, ctx, in, out, err,
                                         sizeof(err)) == 0, "%s", err);
    for (int i = 0; i < 3; i++) {
        lm_tensor *t;
        ck_assert_int_eq(lm_model_find(out[i], "model.embed_tokens.weight",
                                       &t), LM_OK);
        ck_assert_int_eq(lm_tensor_dim(t, 0), 3);
        const float *d = lm_tensor_cdata(t);
        /* a and b: every model's own rows */
        for (int r = 0; r < 2; r++)
            ck_assert(d[2 * r] == (float)(10 * i + r));
        /* X: models 0 and 1 keep theirs, model 2 takes the fallback */
        const float *want = i < 2 ? (float[]){(float)(10 * i + 2),
                                              -(float)(10 * i + 2)}
                                  : want_x_for_2;
        ck_assert(d[4] == want[0] && d[5] == want[1]);
        lm_model_destroy(out[i]);
        lm_model_destroy(in[i]);
        char path[128];
        snprintf(path, sizeof(path), "%s/tokenizer.json", dirs[i]);
        unlink(path);
        rmdir(dirs[i]);
    }
    lmerge_tokenizer_plan_free(plan);
    lm_context_destroy(ctx);
}

START_TEST(base_row_when_the_base_has_it)
{
    run(false, (const float[]){2, -2}); /* model 0's row 2 */
}
END_TEST

START_TEST(mean_without_a_base_model)
{
    run(true, (const float[]){7, -7}); /* (2 + 12) / 2 */
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tokenizer_remap");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, base_row_when_the_base_has_it);
    tcase_add_test(tc, mean_without_a_base_model);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
