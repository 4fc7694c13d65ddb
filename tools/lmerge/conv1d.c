/* Architectures that store some weights transposed: GPT-2's Conv1D layers
 * keep [in, out]. Read from the base's config.json (`model_type`), they are
 * flagged with lm_plan_set_transposed so that ESM, purification, the SVD
 * family and KnOTS see [out, in] as for every other layer. */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "conv1d.h"
#include "tokenizer_internal.h"

static const char *const gpt2_conv1d[] = {
    ".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight",
    ".mlp.c_proj.weight"};

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* The base's model_type ("" when it has no readable config.json). */
static void model_type(const char *base_path, char *out, size_t size)
{
    char dir[4096];
    struct stat st;
    out[0] = '\0';
    /* "model+lora" references: the model part holds the config. */
    snprintf(dir, sizeof(dir), "%.*s", (int)strcspn(base_path, "+"),
             base_path);
    if (stat(dir, &st) || !S_ISDIR(st.st_mode)) {
        char *slash = strrchr(dir, '/');
        if (slash)
            *slash = '\0';
        else
            snprintf(dir, sizeof(dir), ".");
    }
    char path[4200], err[256];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    bool missing = false;
    cJSON *root = tok_json_load(path, &missing, err, sizeof(err));
    if (!root)
        return;
    const cJSON *t = cJSON_IsObject(root)
                         ? cJSON_GetObjectItemCaseSensitive(root, "model_type")
                         : NULL;
    if (cJSON_IsString(t))
        snprintf(out, size, "%s", t->valuestring);
    cJSON_Delete(root);
}

int lmerge_set_layouts(lm_context *ctx, lm_plan *plan, const char *base_path,
                       const lm_model *base, int quiet)
{
    char type[64];
    model_type(base_path, type, sizeof(type));
    if (strcmp(type, "gpt2") != 0)
        return 0;
    size_t flagged = 0;
    for (size_t i = 0; i < lm_model_count(base); i++) {
        const char *name = lm_model_name_at(base, i);
        if (lm_tensor_ndim(lm_model_at(base, i)) != 2)
            continue;
        for (size_t k = 0; k < sizeof(gpt2_conv1d) / sizeof(*gpt2_conv1d);
             k++)
            if (ends_with(name, gpt2_conv1d[k])) {
                if (lm_plan_set_transposed(plan, name) != LM_OK) {
                    fprintf(stderr, "lmerge run: %s\n", lm_context_error(ctx));
                    return -1;
                }
                flagged++;
            }
    }
    if (flagged && !quiet)
        fprintf(stderr, "lmerge run: gpt2: %zu Conv1D weights are stored "
                "[in, out]; merged as [out, in]\n", flagged);
    return 0;
}
