/* lmerge's tokenizer.json reader and tokenizer merging on arbitrary bytes:
 * the input is the base's tokenizer.json; a fixed fine-tune adds tokens.
 * The base, union and model-source plans are built and the union one's
 * files written. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_util.h"
#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char FT[] =
    "{\"added_tokens\": [{\"id\": 3, \"content\": \"<s>\", \"special\": true},"
    " {\"id\": 5, \"content\": \"<|x|>\", \"special\": true}],"
    " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1,"
    " \"ab\": 2, \"c\": 4}, \"merges\": [\"a b\"]}}";

static void put(const char *dir, const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fputs(text, f) == EOF || fclose(f))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char base[64], ft[64], out[64];
    if (!base[0]) {
        snprintf(base, sizeof(base), "/tmp/lm_fuzz_%d", (int)getpid());
        snprintf(ft, sizeof(ft), "/tmp/lm_fuzz_%d_ft", (int)getpid());
        snprintf(out, sizeof(out), "/tmp/lm_fuzz_%d_out", (int)getpid());
        mkdir(base, 0700);
        mkdir(ft, 0700);
        mkdir(out, 0700);
        put(ft, "tokenizer.json", FT);
        put(ft, "config.json", "{\"vocab_size\": 6}");
    }
    fuzz_write_temp(data, size, "/tokenizer.json");
    const char *paths[2] = {base, ft};
    static const char *const sources[] = {"base", "union", NULL};
    for (int s = 0; s < 3; s++) {
        struct lmerge_tok_spec spec = {0};
        struct lmerge_tok_token tok = {0};
        tok.token = "<|new|>";
        tok.kind = LMERGE_TOK_ZERO;
        tok.src_id = -1;
        spec.source = (char *)(sources[s] ? sources[s] : ft);
        spec.tokens = &tok;
        spec.n_tokens = 1;
        spec.pad_to_multiple_of = 4;
        lmerge_tok_plan *plan = NULL;
        char err[512];
        if (lmerge_tokenizer_plan(&spec, paths, 2, &plan, err, sizeof(err)))
            continue;
        if (s == 1 && lmerge_tokenizer_rows(plan) % 4)
            abort();
        if (s == 1)
            lmerge_tokenizer_write(plan, out, err, sizeof(err));
        lmerge_tokenizer_plan_free(plan);
    }
    return 0;
}
