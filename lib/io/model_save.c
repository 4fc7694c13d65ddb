/* Writing models and merge outputs by path, through the format table. */
#include <string.h>

#include "io/atomic_file.h"
#include "io/formats.h"
#include "io/paths.h"
#include "libmerge/io.h"

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

lm_status lm_model_save(lm_context *ctx, const lm_model *model,
                        const char *path, unsigned flags)
{
    if (!ctx || !model || !path)
        return LM_ERR_INVALID_ARGUMENT;
    for (size_t i = 0; lm__formats[i]; i++) {
        const struct lm__format *f = lm__formats[i];
        for (size_t k = 0; f->write && f->suffixes && f->suffixes[k]; k++)
            if (ends_with(path, f->suffixes[k]))
                return f->write(ctx, model, path, flags);
    }
    return lm_context_set_error(ctx, LM_ERR_INVALID_ARGUMENT,
                                "save: '%s': unknown extension (use "
                                ".safetensors, .gguf or .npz)", path);
}

lm_status lm_file_sink_create_for(lm_context *ctx, const char *dir,
                                  const lm_model *like,
                                  const lm_safetensors_sink_options *options,
                                  lm_file_sink **out)
{
    if (!ctx || !dir || !*dir || !out)
        return LM_ERR_INVALID_ARGUMENT;
    lm_safetensors_sink_options o = LM_SAFETENSORS_SINK_OPTIONS_INIT;
    if (options) {
        if (options->struct_size < sizeof(o))
            return lm_context_set_error(ctx, LM_ERR_ABI,
                                        "file sink: options struct_size %u "
                                        "too small", options->struct_size);
        memcpy(&o, options, sizeof(o));
    }
    if (o.n_metadata && (!o.metadata_keys || !o.metadata_values))
        return lm_context_set_error(ctx, LM_ERR_INVALID_ARGUMENT,
                                    "file sink: n_metadata without "
                                    "keys/values");
    /* The base's own format when it can be streamed, else the first
     * entry that can (safetensors). */
    const struct lm__format *f = lm__format_of_model(like);
    for (size_t i = 0; !f || !f->sink_create; i++)
        f = lm__formats[i];
    if (o.max_shard_bytes && f->shards)
        return f->sink_create(ctx, dir, like, &o, out);
    char *path = lm__path_join(ctx, dir, f->file_name);
    if (!path)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory creating a sink in '%s'",
                                    dir);
    lm_status st = f->sink_create(ctx, path, like, &o, out);
    lm_free(ctx, path);
    return st;
}
