/* Opening models and LoRA adapters by path, through the format table. */
#include "io/formats.h"
#include "libmerge/io.h"

static lm_status read_model(lm_context *ctx, const struct lm__format *f,
                            const char *file, lm_model **out)
{
    lm_model *model;
    LM_TRY(lm_model_create(ctx, &model));
    lm_status st = f->read_into(ctx, file, model);
    if (st != LM_OK) {
        lm_model_destroy(model);
        return st;
    }
    *out = model;
    return LM_OK;
}

lm_status lm_model_open(lm_context *ctx, const char *path, lm_model **out)
{
    if (!ctx || !path || !out)
        return LM_ERR_INVALID_ARGUMENT;
    const struct lm__format *f;
    char *file;
    LM_TRY(lm__format_detect(ctx, path, LM_FORMAT_MODEL, &f, &file));
    lm_status st = read_model(ctx, f, file, out);
    lm_free(ctx, file);
    return st;
}

lm_status lm_lora_open(lm_context *ctx, const char *path, lm_lora **out)
{
    if (!ctx || !path || !out)
        return LM_ERR_INVALID_ARGUMENT;
    const struct lm__format *f;
    char *file;
    LM_TRY(lm__format_detect(ctx, path, LM_FORMAT_LORA, &f, &file));
    lm_status st = f->read_lora(ctx, file, out);
    lm_free(ctx, file);
    return st;
}

lm_status lm_input_open(lm_context *ctx, const char *path, lm_model **model,
                        lm_lora **lora)
{
    if (!ctx || !path || !model || !lora)
        return LM_ERR_INVALID_ARGUMENT;
    *model = NULL;
    *lora = NULL;
    const struct lm__format *f;
    char *file;
    LM_TRY(lm__format_detect(ctx, path, LM_FORMAT_ANY, &f, &file));
    lm_status st;
    if (!f->read_into) {
        st = f->read_lora(ctx, file, lora);
    } else {
        st = read_model(ctx, f, file, model);
        /* Some formats say only inside whether a file is an adapter. */
        if (st == LM_OK && f->model_is_lora && f->model_is_lora(*model)) {
            lm_model_destroy(*model);
            *model = NULL;
            st = f->read_lora(ctx, file, lora);
        }
    }
    lm_free(ctx, file);
    return st;
}
