/* GGUF header layout for the file sink: key/values copied raw from a GGUF
 * source model (minus the keys the caller overrides), the caller's string
 * metadata, tensor infos in ggml dimension order, padding to the
 * alignment. The tensor data is written by the sink at the offsets
 * computed here. */
#include <stdlib.h>
#include <string.h>

#include "io/gguf_format.h"
#include "io/gguf_write.h"

struct buf {
    lm_context *ctx;
    unsigned char *p;
    size_t len, cap;
    bool failed;
};

static void put(struct buf *b, const void *data, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        unsigned char *grown = lm_alloc(b->ctx, cap);
        if (!grown) {
            b->failed = true;
            return;
        }
        if (b->len)
            memcpy(grown, b->p, b->len);
        lm_free(b->ctx, b->p);
        b->p = grown;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void put_u32(struct buf *b, uint32_t v)
{
    unsigned char le[4] = {(unsigned char)v, (unsigned char)(v >> 8),
                           (unsigned char)(v >> 16), (unsigned char)(v >> 24)};
    put(b, le, 4);
}

static void put_u64(struct buf *b, uint64_t v)
{
    put_u32(b, (uint32_t)v);
    put_u32(b, (uint32_t)(v >> 32));
}

static void put_str(struct buf *b, const char *s)
{
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}

static bool overridden(const char *key, size_t klen,
                       const struct lm__gguf_layout_in *in)
{
    if (klen == strlen("general.alignment") &&
        !memcmp(key, "general.alignment", klen))
        return true; /* always written by us */
    for (size_t i = 0; i < in->n_meta; i++)
        if (strlen(in->meta_keys[i]) == klen &&
            !memcmp(in->meta_keys[i], key, klen))
            return true;
    return false;
}

/* Copies the source's key/values except overridden ones; returns the
 * number copied. */
static uint64_t copy_kvs(struct buf *b, const lm_model *src,
                         const struct lm__gguf_layout_in *in)
{
    const struct lm__gguf_kv *kv = lm__gguf_kv_of(src);
    if (!kv)
        return 0;
    struct gguf_cursor c = {kv->p, (const unsigned char *)kv->p + kv->len};
    uint64_t copied = 0;
    for (uint64_t i = 0; i < kv->count; i++) {
        const unsigned char *start = c.p;
        const char *key;
        uint64_t klen;
        uint32_t type;
        /* Validated when the source was read. */
        if (!lm__gguf_str(&c, &key, &klen) || !lm__gguf_u32(&c, &type) ||
            !lm__gguf_skip_value(&c, type, 0))
            break;
        if (overridden(key, (size_t)klen, in))
            continue;
        put(b, start, (size_t)(c.p - start));
        copied++;
    }
    return copied;
}

lm_status lm__gguf_layout(lm_context *ctx, const struct lm__gguf_layout_in *in,
                          unsigned char **header, size_t *header_len,
                          uint64_t *offsets, uint64_t *file_len)
{
    uint32_t align = in->alignment ? in->alignment : LM_GGUF_DEFAULT_ALIGNMENT;
    for (size_t i = 0; i < in->n; i++) {
        uint32_t type;
        if (!in->types && !lm__gguf_from_dtype(in->outputs[i].dtype, &type))
            return lm_context_set_error(ctx, LM_ERR_DTYPE,
                                        "GGUF: tensor '%s' has a dtype GGUF "
                                        "cannot hold", in->outputs[i].name);
        if (in->outputs[i].ndim < 1 || in->outputs[i].ndim > LM_GGUF_MAX_DIMS)
            return lm_context_set_error(ctx, LM_ERR_SHAPE,
                                        "GGUF: tensor '%s' has %d dimensions "
                                        "(GGUF holds 1 to 4)",
                                        in->outputs[i].name,
                                        in->outputs[i].ndim);
    }
    struct buf kv = {ctx, NULL, 0, 0, false};
    uint64_t n_kv = copy_kvs(&kv, in->kv_from, in);
    put_str(&kv, "general.alignment");
    put_u32(&kv, GGUF_U32);
    put_u32(&kv, align);
    n_kv++;
    for (size_t i = 0; i < in->n_meta; i++, n_kv++) {
        put_str(&kv, in->meta_keys[i]);
        put_u32(&kv, GGUF_STRING);
        put_str(&kv, in->meta_values[i]);
    }
    struct buf b = {ctx, NULL, 0, 0, false};
    put_u32(&b, LM_GGUF_MAGIC);
    put_u32(&b, LM_GGUF_VERSION);
    put_u64(&b, in->n);
    put_u64(&b, n_kv);
    if (!kv.failed && kv.len)
        put(&b, kv.p, kv.len);
    lm_free(ctx, kv.p);
    uint64_t rel = 0;
    for (size_t i = 0; i < in->n; i++) {
        const lm_tensor_desc *d = &in->outputs[i];
        uint32_t type = 0;
        if (in->types)
            type = in->types[i];
        else
            lm__gguf_from_dtype(d->dtype, &type);
        uint64_t nbytes = in->sizes ? in->sizes[i] : d->nbytes;
        put_str(&b, d->name);
        put_u32(&b, (uint32_t)d->ndim);
        for (int k = d->ndim - 1; k >= 0; k--) /* ggml order */
            put_u64(&b, (uint64_t)d->shape[k]);
        put_u32(&b, type);
        put_u64(&b, rel);
        offsets[i] = rel;
        rel += (nbytes + align - 1) / align * align;
    }
    static const unsigned char zeros[64];
    while (!b.failed && b.len % align)
        put(&b, zeros, align - b.len % align < 64 ? align - b.len % align : 64);
    if (kv.failed || b.failed) {
        lm_free(ctx, b.p);
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "GGUF: out of memory building the header");
    }
    for (size_t i = 0; i < in->n; i++)
        offsets[i] += b.len;
    *header = b.p;
    *header_len = b.len;
    *file_len = b.len + rel;
    return LM_OK;
}
