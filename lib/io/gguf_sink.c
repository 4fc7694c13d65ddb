/* The GGUF writer of the file sink (file_writer.h): one file, whose header
 * (key/values carried from a GGUF source, tensor infos, padding) comes
 * from gguf_write.c. */
#include <stdlib.h>
#include <string.h>

#include "io/file_writer.h"
#include "io/gguf_format.h"
#include "io/gguf_write.h"
#include "libmerge/gguf.h"

#define WHAT "GGUF sink"

struct gguf_config {
    const lm_model *kv_from; /* may be NULL */
    uint32_t alignment;      /* 0: the default */
};

static lm_status header(lm_context *ctx, const void *config,
                        struct lm__sink_layout *l, size_t k,
                        unsigned char **bytes, size_t *len,
                        uint64_t *file_len)
{
    (void)k; /* GGUF does not shard: always file 0 */
    const struct gguf_config *c = config;
    struct lm__gguf_layout_in in = {
        l->outputs, l->n, c->kv_from, l->meta_keys, l->meta_values,
        l->n_meta, c->alignment};
    return lm__gguf_layout(ctx, &in, bytes, len, l->offset, file_len);
}

static void config_free(lm_context *ctx, void *config)
{
    lm_free(ctx, config);
}

static const struct lm__file_writer gguf_writer = {
    WHAT, NULL, header, NULL, NULL, config_free};

/* The alignment a GGUF source declares, or 0. */
static uint32_t source_alignment(const lm_model *m)
{
    const char *v = NULL;
    if (!lm__gguf_kv_of(m) ||
        lm_model_metadata(m, "general.alignment", &v) != LM_OK)
        return 0;
    return (uint32_t)strtoul(v, NULL, 10);
}

lm_status lm_gguf_sink_create(lm_context *ctx, const char *path,
                              const lm_gguf_options *opts, lm_file_sink **out)
{
    if (!ctx || !path || !*path || !out)
        return LM_ERR_INVALID_ARGUMENT;
    lm_gguf_options o = LM_GGUF_OPTIONS_INIT;
    if (opts) {
        if (opts->struct_size < sizeof(o))
            return lm_context_set_error(ctx, LM_ERR_ABI,
                                        "GGUF sink: options struct_size %u "
                                        "too small", opts->struct_size);
        memcpy(&o, opts, sizeof(o));
    }
    uint32_t align = o.alignment ? o.alignment : source_alignment(o.kv_from);
    if (align && (align % 8 || (align & (align - 1))))
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_RANGE,
                                    "GGUF sink: alignment %u is not a power "
                                    "of two >= 8", align);
    if (o.n_metadata && (!o.metadata_keys || !o.metadata_values))
        return lm_context_set_error(ctx, LM_ERR_INVALID_ARGUMENT,
                                    WHAT ": n_metadata without keys/values");
    struct gguf_config *c = lm_alloc(ctx, sizeof(*c));
    if (!c)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    WHAT ": out of memory");
    *c = (struct gguf_config){o.kv_from, align};
    return lm__file_sink_create(ctx, path, &gguf_writer, c, 0,
                                o.metadata_keys, o.metadata_values,
                                o.n_metadata, out);
}

lm_status lm_gguf_write(lm_context *ctx, const lm_model *model,
                        const char *path, const lm_gguf_options *options)
{
    if (!ctx || !model || !path)
        return LM_ERR_INVALID_ARGUMENT;
    lm_file_sink *sink;
    LM_TRY(lm_gguf_sink_create(ctx, path, options, &sink));
    lm_status st = lm__file_sink_write_model(ctx, model, sink);
    lm_file_sink_destroy(sink);
    return st;
}
