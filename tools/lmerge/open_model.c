/* Opening model files for lmerge. */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "commands.h"

#define LM_TRY_OPEN(expr)             \
    do {                              \
        lm_status st_ = (expr);       \
        if (st_ != LM_OK)             \
            return st_;               \
    } while (0)

lm_status lmerge_open_model(lm_context *ctx, const char *path, lm_model **out)
{
    return lm_model_open(ctx, path, out);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

bool lmerge_is_gguf(const char *path)
{
    return ends_with(path, ".gguf");
}

lm_status lmerge_open_input(lm_context *ctx, const char *path,
                            lm_model **model, lm_lora **lora)
{
    *model = NULL;
    *lora = NULL;
    if (lmerge_is_adapter(path))
        return lm_peft_read(ctx, path, lora);
    LM_TRY_OPEN(lmerge_open_model(ctx, path, model));
    const char *type = NULL;
    if (lmerge_is_gguf(path) &&
        lm_model_metadata(*model, "general.type", &type) == LM_OK &&
        !strcmp(type, "adapter")) {
        lm_model_destroy(*model);
        *model = NULL;
        return lm_gguf_read_lora(ctx, path, lora);
    }
    lm_context_clear_error(ctx);
    return LM_OK;
}

bool lmerge_is_adapter(const char *path)
{
    char cfg[4096];
    struct stat st;
    snprintf(cfg, sizeof(cfg), "%s/adapter_config.json", path);
    return stat(cfg, &st) == 0 && S_ISREG(st.st_mode);
}
