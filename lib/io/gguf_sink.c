/* The GGUF writer of the file sink (file_writer.h): one file, whose header
 * (key/values carried from a GGUF source, tensor infos, padding) comes
 * from gguf_write.c, and whose tensors are stored as lm_gguf_store says:
 * in their output dtype, as F16 for a dequantized source tensor, or as
 * Q8_0 (gguf_quant.h), re-encoded here from the output bytes. */
#include <stdlib.h>
#include <string.h>

#include "io/file_writer.h"
#include "io/gguf_format.h"
#include "io/gguf_quant.h"
#include "io/gguf_write.h"
#include "libmerge/gguf.h"

#define WHAT "GGUF sink"

struct gguf_config {
    const lm_model *kv_from; /* may be NULL */
    uint32_t alignment;      /* 0: the default */
    lm_gguf_store store;
    /* Set at begin (stored_sizes): per output, the dtype the plan gives,
     * the ggml type stored and the bytes stored. */
    size_t n;
    lm_dtype *dtype;
    uint32_t *type;
    uint64_t *size;
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
        l->n_meta, c->alignment, c->type, c->size};
    return lm__gguf_layout(ctx, &in, bytes, len, l->offset, file_len);
}

/* What llama.cpp's quantizer quantizes: 2-D weights of whole 32-value
 * rows (norms, biases and other 1-D tensors stay as they are). */
static bool q8_0_eligible(const lm_tensor_desc *d)
{
    return d->ndim == 2 && d->shape[1] > 0 && d->shape[1] % 32 == 0;
}

static lm_status stored_sizes(lm_context *ctx, void *config,
                              const lm_tensor_desc *o, size_t n,
                              uint64_t *sizes)
{
    struct gguf_config *c = config;
    c->dtype = lm__calloc(ctx, n ? n : 1, sizeof(*c->dtype));
    c->type = lm__calloc(ctx, n ? n : 1, sizeof(*c->type));
    c->size = lm__calloc(ctx, n ? n : 1, sizeof(*c->size));
    if (!c->dtype || !c->type || !c->size)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    WHAT ": out of memory");
    c->n = n;
    for (size_t i = 0; i < n; i++) {
        lm_dtype stored = o[i].dtype;
        if (!lm__gguf_from_dtype(stored, &c->type[i]))
            return lm_context_set_error(ctx, LM_ERR_DTYPE,
                                        "GGUF: tensor '%s' has a dtype GGUF "
                                        "cannot hold", o[i].name);
        c->dtype[i] = o[i].dtype;
        c->size[i] = o[i].nbytes;
        if (c->store == LM_GGUF_STORE_Q8_0 && q8_0_eligible(&o[i])) {
            c->type[i] = GGML_Q8_0;
            uint64_t numel = (uint64_t)o[i].shape[0] * (uint64_t)o[i].shape[1];
            c->size[i] = numel / LM_Q8_0_BLOCK * LM_Q8_0_BYTES;
        } else {
            /* A tensor that was quantized goes back compact: F16,
             * llama.cpp's unquantized default (half of F32, within f16
             * rounding), unless the caller asked for the output dtype. */
            if (c->store != LM_GGUF_STORE_DTYPE && stored == LM_F32 &&
                lm__gguf_source_type(c->kv_from, o[i].name)) {
                stored = LM_F16;
                lm__gguf_from_dtype(stored, &c->type[i]);
            }
            c->size[i] = o[i].nbytes / lm_dtype_size(o[i].dtype) *
                         lm_dtype_size(stored);
        }
        sizes[i] = c->size[i];
    }
    return LM_OK;
}

/* Q8_0 blocks from output bytes of any float dtype (through f32). */
static lm_status to_q8_0(lm_context *ctx, const struct gguf_config *c,
                         size_t i, const char *name, const void *data,
                         size_t numel, unsigned char *out)
{
    float *f = (float *)data, *tmp = NULL;
    if (c->dtype[i] != LM_F32) {
        if (!(tmp = lm__calloc(ctx, numel ? numel : 1, sizeof(float))))
            return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                        WHAT ": out of memory encoding "
                                        "'%s'", name);
        lm_convert(data, c->dtype[i], tmp, LM_F32, numel);
        f = tmp;
    }
    bool ok = lm__quant_q8_0(f, numel / LM_Q8_0_BLOCK, out);
    lm_free(ctx, tmp);
    if (!ok)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_RANGE,
                                    WHAT ": tensor '%s' holds a value Q8_0 "
                                    "cannot store (not finite, or a block "
                                    "whose max |x| / 127 exceeds the f16 "
                                    "range)", name);
    return LM_OK;
}

static lm_status encode(lm_context *ctx, const void *config, size_t i,
                        const char *name, const void *data, size_t nbytes,
                        void **out, size_t *out_len)
{
    const struct gguf_config *c = config;
    *out = NULL;
    uint32_t as_is;
    if (i >= c->n || (lm__gguf_from_dtype(c->dtype[i], &as_is) &&
                      as_is == c->type[i]))
        return LM_OK;
    size_t numel = nbytes / lm_dtype_size(c->dtype[i]);
    unsigned char *buf = lm_alloc(ctx, (size_t)c->size[i] ? (size_t)c->size[i]
                                                          : 1);
    if (!buf)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    WHAT ": out of memory encoding '%s'",
                                    name);
    lm_status st = LM_OK;
    if (c->type[i] == GGML_Q8_0)
        st = to_q8_0(ctx, c, i, name, data, numel, buf);
    else /* F16 */
        st = lm_convert(data, c->dtype[i], buf, LM_F16, numel);
    if (st != LM_OK) {
        lm_free(ctx, buf);
        return st;
    }
    *out = buf;
    *out_len = (size_t)c->size[i];
    return LM_OK;
}

static void config_free(lm_context *ctx, void *config)
{
    struct gguf_config *c = config;
    lm_free(ctx, c->dtype);
    lm_free(ctx, c->type);
    lm_free(ctx, c->size);
    lm_free(ctx, c);
}

static const struct lm__file_writer gguf_writer = {
    WHAT, NULL, header, NULL, NULL, config_free, stored_sizes, encode};

/* The alignment a GGUF source declares, or 0. */
static uint32_t source_alignment(const lm_model *m)
{
    const char *v = NULL;
    if (!lm__gguf_kv_of(m) ||
        lm_model_metadata_find(m, "general.alignment", &v) != LM_OK)
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
    if ((unsigned)o.store > LM_GGUF_STORE_Q8_0)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_RANGE,
                                    WHAT ": unknown store mode %d",
                                    (int)o.store);
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
    *c = (struct gguf_config){o.kv_from, align, o.store, 0,
                              NULL, NULL, NULL};
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
