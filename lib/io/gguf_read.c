/* GGUF reader: version 2/3 files, unquantized tensors mapped without
 * copying, quantized ones (gguf_quant.h) dequantized to f32, key/values as text metadata (and kept raw for the writer), and
 * llama.cpp LoRA adapter files. Every length, count and offset is checked
 * against the file before use. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/gguf_format.h"
#include "io/gguf_quant.h"
#include "io/input_file.h"
#include "io/mapping.h"
#include "libmerge/gguf.h"

#define MAX_KEY 65535u
#define MAX_NAME 255u

struct tensor_info {
    char name[MAX_NAME + 1];
    int ndim;
    int64_t shape[LM_GGUF_MAX_DIMS]; /* libmerge (row-major) order */
    lm_dtype dtype; /* LM_F32 for a quantized tensor */
    const struct lm__gguf_quant *quant; /* NULL: stored as dtype */
    uint32_t type;                      /* the ggml type */
    uint64_t offset, nbytes;            /* bytes in the file */
};

static lm_status bad(lm_context *ctx, const char *path, const char *what)
{
    return lm_context_set_error(ctx, LM_ERR_FORMAT, "%s: %s", path, what);
}

/* All key/value text of one file together: 64 MiB. Real files hold a few
 * MB (a 256k-token vocabulary with scores and merges); the text of any
 * value is at most ~6 bytes per byte of the file, so memory also stays
 * proportional to the file below the budget. */
#define TEXT_BUDGET ((size_t)64 << 20)

static lm_status text_error(lm_context *ctx, const char *path, const char *k,
                            enum lm__gguf_text r)
{
    switch (r) {
    case LM_GGUF_TEXT_TOO_DEEP:
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: the value of '%s' nests arrays "
                                    "too deep (at most %d levels)", path, k,
                                    LM_GGUF_MAX_NESTING);
    case LM_GGUF_TEXT_BAD_TYPE:
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: the value of '%s' is an array of an "
                                    "unknown type", path, k);
    case LM_GGUF_TEXT_TOO_LONG:
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: the key/values up to '%s' exceed "
                                    "the metadata budget of %zu MiB of text "
                                    "per file", path, k, TEXT_BUDGET >> 20);
    case LM_GGUF_TEXT_NUL:
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: the string value of '%s' contains a "
                                    "NUL byte", path, k);
    default:
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: the value of '%s' runs past the "
                                    "end of the file", path, k);
    }
}

static lm_status read_kvs(lm_context *ctx, const char *path,
                          struct gguf_cursor *c, uint64_t n_kv,
                          lm_model *model, uint32_t *alignment)
{
    size_t text_used = 0;
    for (uint64_t i = 0; i < n_kv; i++) {
        const char *key;
        uint64_t klen;
        uint32_t type;
        if (!lm__gguf_str(c, &key, &klen) || !lm__gguf_u32(c, &type))
            return bad(ctx, path, "truncated key/value section");
        if (klen == 0 || klen > MAX_KEY || memchr(key, 0, (size_t)klen))
            return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                        "%s: key/value %" PRIu64 " has an "
                                        "invalid key", path, i);
        char k[MAX_KEY + 1];
        memcpy(k, key, (size_t)klen);
        k[klen] = '\0';
        if (type >= GGUF_TYPE_COUNT)
            return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                        "%s: key '%s' has unknown value type "
                                        "%u", path, k, type);
        /* Hashed: duplicate checks stay linear in the number of keys. */
        if (lm_model_metadata_find(model, k, NULL) == LM_OK)
            return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                        "%s: key '%s' appears twice", path, k);
        if (!strcmp(k, "general.alignment")) {
            struct gguf_cursor peek = *c;
            if (type != GGUF_U32 || !lm__gguf_u32(&peek, alignment) ||
                *alignment == 0 || *alignment % 8 ||
                (*alignment & (*alignment - 1)))
                return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                            "%s: general.alignment must be a "
                                            "u32 power of two >= 8", path);
        }
        struct gguf_cursor start = *c;
        size_t len;
        enum lm__gguf_text r = lm__gguf_text_measure(
            c, type, TEXT_BUDGET - text_used, &len);
        if (r != LM_GGUF_TEXT_OK)
            return text_error(ctx, path, k, r);
        text_used += len;
        char *text = lm_alloc(ctx, len + 1);
        if (!text)
            return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                        "%s: out of memory reading key '%s' "
                                        "(%zu bytes of text)", path, k, len);
        lm__gguf_text_write(start, type, text, len);
        lm_status st = lm_model_set_metadata(model, k, text);
        lm_free(ctx, text);
        LM_TRY(lm__oom_in(ctx, st, path, "key", k));
    }
    return LM_OK;
}

static lm_status read_info(lm_context *ctx, const char *path,
                           struct gguf_cursor *c, uint64_t i,
                           uint32_t alignment, struct tensor_info *t)
{
    const char *name;
    uint64_t nlen, dims[LM_GGUF_MAX_DIMS];
    uint32_t ndim, type;
    if (!lm__gguf_str(c, &name, &nlen))
        return bad(ctx, path, "truncated tensor information");
    if (nlen == 0 || nlen > MAX_NAME || memchr(name, 0, (size_t)nlen))
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: tensor %" PRIu64 " has an invalid "
                                    "name", path, i);
    memcpy(t->name, name, (size_t)nlen);
    t->name[nlen] = '\0';
    if (!lm__gguf_u32(c, &ndim))
        return bad(ctx, path, "truncated tensor information");
    if (ndim < 1 || ndim > LM_GGUF_MAX_DIMS)
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: tensor '%s' has %u dimensions (1 to "
                                    "4 allowed)", path, t->name, ndim);
    for (uint32_t d = 0; d < ndim; d++)
        if (!lm__gguf_u64(c, &dims[d]))
            return bad(ctx, path, "truncated tensor information");
    if (!lm__gguf_u32(c, &type) || !lm__gguf_u64(c, &t->offset))
        return bad(ctx, path, "truncated tensor information");
    char tname[32];
    t->type = type;
    t->quant = lm__gguf_quant_of(type);
    if (t->quant)
        t->dtype = LM_F32;
    else if (!lm__gguf_to_dtype(type, &t->dtype)) {
        /* "Q4_K", or "type 77" for an id ggml does not define. */
        lm__ggml_type_name(type, tname, sizeof(tname));
        bool known = strncmp(tname, "type ", 5) != 0;
        return lm_context_set_error(
            ctx, LM_ERR_UNSUPPORTED,
            "%s: tensor '%s' has %sggml type %s, which libmerge does not "
            "read (it reads F32, F16, BF16, F64, Q4_0, Q4_1, Q5_0, Q5_1, "
            "Q8_0, Q8_1 and Q2_K to Q8_K)", path, t->name,
            known ? "" : "unknown ", known ? tname : tname + 5);
    }
    /* A quantized row is whole blocks (ggml's ne[0] is the row). */
    if (t->quant && dims[0] % t->quant->block)
        return lm_context_set_error(
            ctx, LM_ERR_FORMAT,
            "%s: tensor '%s' is %s but its rows hold %" PRIu64 " values, "
            "not a multiple of the %s block of %u", path, t->name,
            lm__ggml_type_name(type, tname, sizeof(tname)), dims[0], tname,
            t->quant->block);
    t->ndim = (int)ndim;
    uint64_t numel = 1;
    for (uint32_t d = 0; d < ndim; d++) {
        if (dims[d] > (uint64_t)INT64_MAX ||
            (dims[d] && numel > UINT64_MAX / 16 / dims[d]))
            return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                        "%s: tensor '%s' is too large", path,
                                        t->name);
        numel *= dims[d];
        t->shape[ndim - 1 - d] = (int64_t)dims[d]; /* ggml ne[0] is last */
    }
    t->nbytes = t->quant ? numel / t->quant->block * t->quant->bytes
                         : numel * lm_dtype_size(t->dtype);
    if (t->offset % alignment)
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: tensor '%s' starts at offset %" PRIu64
                                    ", not a multiple of the alignment %u",
                                    path, t->name, t->offset, alignment);
    return LM_OK;
}

static int by_offset(const void *a, const void *b)
{
    const struct tensor_info *x = *(const struct tensor_info *const *)a,
                             *y = *(const struct tensor_info *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static lm_status check_layout(lm_context *ctx, const char *path,
                              struct tensor_info *infos, uint64_t n,
                              uint64_t data_len)
{
    struct tensor_info **order = lm__calloc(ctx, n ? n : 1, sizeof(*order));
    if (!order)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "%s: out of memory checking %" PRIu64
                                    " tensors", path, n);
    for (uint64_t i = 0; i < n; i++)
        order[i] = &infos[i];
    qsort(order, n, sizeof(*order), by_offset);
    lm_status st = LM_OK;
    for (uint64_t i = 0; st == LM_OK && i < n; i++) {
        const struct tensor_info *t = order[i];
        if (t->offset > data_len || t->nbytes > data_len - t->offset)
            st = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                      "%s: tensor '%s' (%" PRIu64 " bytes at "
                                      "%" PRIu64 ") runs past the end of the "
                                      "data (%" PRIu64 " bytes)", path,
                                      t->name, t->nbytes, t->offset, data_len);
        else if (i > 0 && order[i - 1]->offset + order[i - 1]->nbytes >
                              t->offset)
            st = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                      "%s: tensors '%s' and '%s' overlap",
                                      path, order[i - 1]->name, t->name);
    }
    lm_free(ctx, order);
    return st;
}

/* A quantized tensor becomes an f32 tensor of its own (the blocks were
 * bounds-checked against the file by check_layout): memory is 4 bytes a
 * value, at most ~12 times the tensor's bytes in the file (Q2_K). */
static lm_status dequantize(lm_context *ctx, const char *path,
                            const struct tensor_info *info,
                            const unsigned char *data, lm_tensor **out)
{
    lm_status st = lm_tensor_create(ctx, LM_F32, info->ndim, info->shape,
                                    out);
    if (st != LM_OK)
        return st == LM_ERR_OUT_OF_MEMORY
                   ? lm_context_set_error(ctx, st, "%s: out of memory "
                                          "dequantizing tensor '%s'", path,
                                          info->name)
                   : st;
    size_t n_blocks = (size_t)(info->nbytes / info->quant->bytes);
    if (n_blocks)
        info->quant->dequantize(data, n_blocks, lm_tensor_data(*out));
    return LM_OK;
}

static lm_status parse(lm_context *ctx, const char *path,
                       const struct lm_mapping *map, lm_model *model)
{
    if (map->len < 24) /* also: an empty file maps to NULL */
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: %zu bytes is too short for a GGUF "
                                    "file (truncated)", path, map->len);
    struct gguf_cursor c = {map->addr, (const unsigned char *)map->addr +
                                           map->len};
    uint32_t magic, version, alignment = LM_GGUF_DEFAULT_ALIGNMENT;
    uint64_t n_tensors, n_kv;
    if (!lm__gguf_u32(&c, &magic) || magic != LM_GGUF_MAGIC)
        return bad(ctx, path, "not a GGUF file (bad magic)");
    if (!lm__gguf_u32(&c, &version) || version < 2 || version > 3)
        return lm_context_set_error(ctx, LM_ERR_UNSUPPORTED,
                                    "%s: GGUF version %u (libmerge reads 2 "
                                    "and 3)", path, version);
    if (!lm__gguf_u64(&c, &n_tensors) || !lm__gguf_u64(&c, &n_kv))
        return bad(ctx, path, "truncated header");
    /* A tensor info takes >= 28 bytes and a key/value >= 13. */
    if (n_tensors > map->len / 28 || n_kv > map->len / 13)
        return bad(ctx, path, "tensor or key/value count larger than the "
                              "file allows");
    const unsigned char *kv_begin = c.p;
    LM_TRY(read_kvs(ctx, path, &c, n_kv, model, &alignment));
    LM_TRY(lm__gguf_kv_attach(ctx, path, model, kv_begin,
                              (size_t)(c.p - kv_begin), n_kv));
    if (n_tensors == 0)
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: the file holds no tensors (an empty "
                                    "model)", path);
    struct tensor_info *infos = lm__calloc(ctx, n_tensors, sizeof(*infos));
    if (!infos)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "%s: out of memory for %" PRIu64
                                    " tensors", path, n_tensors);
    lm_status st = LM_OK;
    for (uint64_t i = 0; st == LM_OK && i < n_tensors; i++)
        st = read_info(ctx, path, &c, i, alignment, &infos[i]);
    uint64_t header = (uint64_t)(c.p - (const unsigned char *)map->addr);
    uint64_t data_start = (header + alignment - 1) / alignment * alignment;
    uint64_t data_len = data_start <= map->len ? map->len - data_start : 0;
    if (st == LM_OK && data_start > map->len && n_tensors)
        st = bad(ctx, path, "the file ends before the tensor data");
    if (st == LM_OK)
        st = check_layout(ctx, path, infos, n_tensors, data_len);
    for (uint64_t i = 0; st == LM_OK && i < n_tensors; i++) {
        lm_tensor *t = NULL;
        const unsigned char *data =
            (const unsigned char *)map->addr + data_start + infos[i].offset;
        st = infos[i].quant
                 ? dequantize(ctx, path, &infos[i], data, &t)
                 : lm_tensor_wrap(ctx, infos[i].dtype, infos[i].ndim,
                                  infos[i].shape, (void *)data,
                                  (size_t)infos[i].nbytes, &t);
        if (st == LM_OK && (st = lm_model_add(model, infos[i].name, t)) !=
                               LM_OK) {
            lm_tensor_destroy(t);
            if (st == LM_ERR_EXISTS)
                st = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                          "%s: duplicate tensor name '%s'",
                                          path, infos[i].name);
        } else if (st == LM_OK && infos[i].quant) {
            st = lm__gguf_note_quantized(ctx, model, t, infos[i].type);
        }
        st = lm__oom_in(ctx, st, path, "tensor", infos[i].name);
    }
    lm_free(ctx, infos);
    return st;
}

lm_status lm__gguf_read_into(lm_context *ctx, const char *path,
                             lm_model *model)
{
    return lm__map_and_parse(ctx, path, model, parse);
}

lm_status lm_gguf_read(lm_context *ctx, const char *path, lm_model **out)
{
    return lm__read_model(ctx, path, out, parse);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

static lm_status require_meta(lm_context *ctx, const char *path,
                              const lm_model *m, const char *key,
                              const char *want)
{
    const char *v = NULL;
    if (lm_model_metadata_find(m, key, &v) != LM_OK || strcmp(v, want) != 0) {
        lm_context_clear_error(ctx);
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: not a LoRA adapter GGUF (%s is %s%s%s,"
                                    " expected \"%s\")", path, key,
                                    v ? "\"" : "", v ? v : "missing",
                                    v ? "\"" : "", want);
    }
    return LM_OK;
}

/* Pairs "<target>.lora_a" [r, in] with "<target>.lora_b" [out, r]. */
static lm_status pair_adapters(lm_context *ctx, const char *path,
                               const lm_model *m, double alpha, lm_lora *lora)
{
    for (size_t i = 0; i < lm_model_count(m); i++) {
        const char *name = lm_model_name_at(m, i);
        bool is_a = ends_with(name, ".lora_a"), is_b = ends_with(name, ".lora_b");
        if (!is_a && !is_b)
            return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                        "%s: tensor '%s' is neither .lora_a "
                                        "nor .lora_b", path, name);
        size_t base_len = strlen(name) - strlen(".lora_a");
        char other[MAX_NAME + 16], target[MAX_NAME + 1];
        snprintf(target, sizeof(target), "%.*s", (int)base_len, name);
        snprintf(other, sizeof(other), "%s.lora_%c", target, is_a ? 'b' : 'a');
        lm_tensor *mate = lm__model_lookup(m, other);
        if (!mate)
            return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                        "%s: '%s' has no matching '%s'", path,
                                        name, other);
        if (!is_a || ends_with(target, "_norm.weight"))
            continue; /* each pair once; llama.cpp skips norm adapters */
        const lm_tensor *a = lm_model_at(m, i), *b = mate;
        if (lm_tensor_ndim(a) != 2 || lm_tensor_ndim(b) != 2 ||
            lm_tensor_dim(a, 0) != lm_tensor_dim(b, 1))
            return lm_context_set_error(ctx, LM_ERR_SHAPE,
                                        "%s: '%s' and '%s' are not a LoRA "
                                        "pair [r, in] / [out, r]", path, name,
                                        other);
        double rank = (double)lm_tensor_dim(a, 0);
        lm_tensor *ca = NULL, *cb = NULL;
        lm_status st = lm_tensor_clone(ctx, a, &ca);
        if (st == LM_OK)
            st = lm_tensor_clone(ctx, b, &cb);
        if (st == LM_OK)
            st = lm_lora_add(lora, target, ca, cb,
                             alpha != 0 ? alpha / rank : 1.0);
        if (st != LM_OK) { /* lm_lora_add owns them only on success */
            lm_tensor_destroy(ca);
            lm_tensor_destroy(cb);
            return st;
        }
    }
    return LM_OK;
}

lm_status lm_gguf_read_lora(lm_context *ctx, const char *path, lm_lora **out)
{
    if (!ctx || !path || !out)
        return LM_ERR_INVALID_ARGUMENT;
    lm_model *m;
    LM_TRY(lm_gguf_read(ctx, path, &m));
    lm_status st = require_meta(ctx, path, m, "general.type", "adapter");
    if (st == LM_OK)
        st = require_meta(ctx, path, m, "adapter.type", "lora");
    double alpha = 0; /* absent: no alpha scaling, as in llama.cpp */
    const char *text;
    if (st == LM_OK) {
        if (lm_model_metadata_find(m, "adapter.lora.alpha", &text) == LM_OK) {
            char *end;
            alpha = strtod(text, &end);
            if (*end || end == text)
                st = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                          "%s: adapter.lora.alpha is not a "
                                          "number", path);
        } else {
            lm_context_clear_error(ctx);
        }
    }
    lm_lora *lora = NULL;
    if (st == LM_OK)
        st = lm_lora_create(ctx, &lora);
    if (st == LM_OK)
        st = pair_adapters(ctx, path, m, alpha, lora);
    lm_model_destroy(m);
    if (st != LM_OK) {
        lm_lora_destroy(lora);
        return st;
    }
    *out = lora;
    return LM_OK;
}
