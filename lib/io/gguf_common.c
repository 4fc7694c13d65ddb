/* GGUF type tables and the bounds-checked little-endian cursor. */
#include <stdio.h>
#include <string.h>

#include "io/gguf_format.h"
#include "libmerge/gguf.h"

bool lm__gguf_from_dtype(lm_dtype d, uint32_t *ggml)
{
    switch (d) {
    case LM_F32: *ggml = GGML_F32; return true;
    case LM_F16: *ggml = GGML_F16; return true;
    case LM_BF16: *ggml = GGML_BF16; return true;
    case LM_F64: *ggml = GGML_F64; return true;
    default: return false;
    }
}

bool lm__gguf_to_dtype(uint32_t ggml, lm_dtype *d)
{
    switch (ggml) {
    case GGML_F32: *d = LM_F32; return true;
    case GGML_F16: *d = LM_F16; return true;
    case GGML_BF16: *d = LM_BF16; return true;
    case GGML_F64: *d = LM_F64; return true;
    default: return false;
    }
}

/* ggml's name of type id `ggml`, or NULL for an id it does not define. */
static const char *known_name(uint32_t ggml)
{
    static const char *const names[] = {
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1",
        "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K",
        "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S",
        "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M",
        "BF16", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0"};
    if (ggml < sizeof(names) / sizeof(names[0]))
        return names[ggml];
    return ggml == 39 ? "MXFP4" : NULL;
}

const char *lm__ggml_type_name(uint32_t ggml, char *buf, size_t size)
{
    const char *name = known_name(ggml);
    if (name)
        snprintf(buf, size, "%s", name);
    else
        snprintf(buf, size, "type %u", ggml);
    return buf;
}

bool lm__gguf_u32(struct gguf_cursor *c, uint32_t *v)
{
    if (c->end - c->p < 4)
        return false;
    *v = (uint32_t)c->p[0] | (uint32_t)c->p[1] << 8 |
         (uint32_t)c->p[2] << 16 | (uint32_t)c->p[3] << 24;
    c->p += 4;
    return true;
}

bool lm__gguf_u64(struct gguf_cursor *c, uint64_t *v)
{
    uint32_t lo, hi;
    if (!lm__gguf_u32(c, &lo) || !lm__gguf_u32(c, &hi))
        return false;
    *v = (uint64_t)hi << 32 | lo;
    return true;
}

bool lm__gguf_str(struct gguf_cursor *c, const char **s, uint64_t *len)
{
    if (!lm__gguf_u64(c, len) || *len > (uint64_t)(c->end - c->p))
        return false;
    *s = (const char *)c->p;
    c->p += *len;
    return true;
}

static size_t scalar_size(uint32_t type)
{
    switch (type) {
    case GGUF_U8: case GGUF_I8: case GGUF_BOOL: return 1;
    case GGUF_U16: case GGUF_I16: return 2;
    case GGUF_U32: case GGUF_I32: case GGUF_F32: return 4;
    case GGUF_U64: case GGUF_I64: case GGUF_F64: return 8;
    default: return 0;
    }
}

bool lm__gguf_skip_value(struct gguf_cursor *c, uint32_t type, int depth)
{
    if (type == GGUF_STRING) {
        const char *s;
        uint64_t n;
        return lm__gguf_str(c, &s, &n);
    }
    if (type == GGUF_ARRAY) {
        uint32_t elem;
        uint64_t count;
        if (depth > LM_GGUF_MAX_NESTING || !lm__gguf_u32(c, &elem) ||
            !lm__gguf_u64(c, &count))
            return false;
        size_t size = scalar_size(elem);
        if (size)
            return count <= (uint64_t)(c->end - c->p) / size &&
                   (c->p += count * size, true);
        if (elem != GGUF_STRING && elem != GGUF_ARRAY)
            return false;
        /* Each element takes at least 8 bytes: bounds the loop. */
        if (count > (uint64_t)(c->end - c->p) / 8)
            return false;
        for (uint64_t i = 0; i < count; i++)
            if (!lm__gguf_skip_value(c, elem, depth + 1))
                return false;
        return true;
    }
    size_t size = scalar_size(type);
    if (!size || (size_t)(c->end - c->p) < size)
        return false;
    c->p += size;
    return true;
}

/* The attachment's tag: its address identifies GGUF key/values. */
static const char kv_tag[] = "GGUF key/values";

static void kv_destroy(lm_context *ctx, void *data)
{
    struct lm__gguf_kv *kv = data;
    lm_free(ctx, kv->quantized);
    lm_free(ctx, kv->quantized_type);
    lm_free(ctx, kv);
}

lm_status lm__gguf_kv_attach(lm_context *ctx, const char *path,
                             lm_model *model, const void *p, size_t len,
                             uint64_t count)
{
    struct lm__gguf_kv *kv = lm_alloc(ctx, sizeof(*kv));
    if (!kv)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "%s: out of memory keeping the "
                                    "key/values", path);
    *kv = (struct lm__gguf_kv){p, len, count, NULL, NULL, 0};
    lm_status st = lm__model_attach(model, kv_tag, kv, kv_destroy);
    if (st != LM_OK) {
        lm_free(ctx, kv);
        return lm_context_set_error(ctx, st, "%s: the model already holds "
                                             "another file's format data",
                                    path);
    }
    return LM_OK;
}

const struct lm__gguf_kv *lm__gguf_kv_of(const lm_model *model)
{
    return lm__model_attachment(model, kv_tag);
}

lm_status lm__gguf_note_quantized(lm_context *ctx, lm_model *model,
                                  const lm_tensor *t, uint32_t type)
{
    struct lm__gguf_kv *kv = lm__model_attachment(model, kv_tag);
    if (!kv)
        return LM_ERR_STATE;
    size_t n = kv->n_quantized;
    if ((n & (n - 1)) == 0) { /* grow at powers of two */
        size_t cap = n ? 2 * n : 8;
        const lm_tensor **ts = lm__calloc(ctx, cap, sizeof(*ts));
        uint32_t *types = lm__calloc(ctx, cap, sizeof(*types));
        if (!ts || !types) {
            lm_free(ctx, ts);
            lm_free(ctx, types);
            return LM_ERR_OUT_OF_MEMORY;
        }
        if (n) {
            memcpy(ts, kv->quantized, n * sizeof(*ts));
            memcpy(types, kv->quantized_type, n * sizeof(*types));
        }
        lm_free(ctx, kv->quantized);
        lm_free(ctx, kv->quantized_type);
        kv->quantized = ts;
        kv->quantized_type = types;
    }
    kv->quantized[n] = t;
    kv->quantized_type[n] = type;
    kv->n_quantized = n + 1;
    return LM_OK;
}

uint32_t lm__gguf_source_type(const lm_model *model, const char *name)
{
    const struct lm__gguf_kv *kv = lm__gguf_kv_of(model);
    if (!kv || !kv->n_quantized)
        return 0;
    const lm_tensor *t = lm__model_lookup(model, name);
    for (size_t i = 0; t && i < kv->n_quantized; i++)
        if (kv->quantized[i] == t)
            return kv->quantized_type[i];
    return 0;
}

const char *lm_gguf_tensor_type(const lm_model *model, const char *name)
{
    if (!model || !name || !lm__gguf_kv_of(model))
        return NULL;
    const lm_tensor *t = lm__model_lookup(model, name);
    if (!t)
        return NULL;
    uint32_t type = lm__gguf_source_type(model, name);
    if (!type && !lm__gguf_from_dtype(lm_tensor_dtype(t), &type))
        return NULL; /* a tensor added later in a dtype GGUF cannot hold */
    return known_name(type);
}
