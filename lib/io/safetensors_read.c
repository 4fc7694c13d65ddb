/* Reading safetensors files (single or sharded) into mapped models, with
 * every rule of the format checked. */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/input_file.h"
#include "io/json_check.h"
#include "io/json_oom.h"
#include "io/mapping.h"
#include "io/formats_read.h"
#include "libmerge/safetensors.h"

/* safetensors' own reference implementation refuses larger headers. */
#define MAX_HEADER (100u * 1000u * 1000u)

struct range {
    uint64_t begin, end;
    const char *name;
};

static int by_begin(const void *a, const void *b)
{
    const struct range *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

static const char *const OTHER_DTYPES[] = {
    "BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64",
    "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64",
};

static lm_status parse_dtype(lm_context *ctx, const char *path,
                             const char *name, const cJSON *v, lm_dtype *out)
{
    if (!cJSON_IsString(v))
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: tensor '%s': \"dtype\" is missing "
                                    "or not a string", path, name);
    const char *s = v->valuestring;
    if (!strcmp(s, "F32")) *out = LM_F32;
    else if (!strcmp(s, "F16")) *out = LM_F16;
    else if (!strcmp(s, "BF16")) *out = LM_BF16;
    else if (!strcmp(s, "F64")) *out = LM_F64;
    else {
        for (size_t i = 0; i < sizeof(OTHER_DTYPES) / sizeof(*OTHER_DTYPES);
             i++)
            if (!strcmp(s, OTHER_DTYPES[i]))
                return lm_context_set_error(
                    ctx, LM_ERR_DTYPE,
                    "%s: tensor '%s' has dtype %s; libmerge merges F32, F16, "
                    "BF16 and F64 tensors", path, name, s);
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: tensor '%s' has unknown dtype '%s'",
                                    path, name, s);
    }
    return LM_OK;
}

/* A JSON number that is a non-negative integer below 2^53 (exact in the
 * double cJSON stores). */
static bool as_u64(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v))
        return false;
    double d = v->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || d != floor(d))
        return false;
    *out = (uint64_t)d;
    return true;
}

static lm_status parse_entry(lm_context *ctx, const char *path,
                             const cJSON *e, lm_dtype *dtype, int *ndim,
                             int64_t *shape, struct range *r)
{
    const char *name = e->string;
    if (!cJSON_IsObject(e))
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: entry '%s' is not an object", path,
                                    name);
    for (const cJSON *f = e->child; f; f = f->next)
        if (strcmp(f->string, "dtype") && strcmp(f->string, "shape") &&
            strcmp(f->string, "data_offsets"))
            return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                        "%s: tensor '%s' has unknown field "
                                        "'%s'", path, name, f->string);
    LM_TRY(parse_dtype(ctx, path, name, cJSON_GetObjectItemCaseSensitive(e, "dtype"),
                       dtype));
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!cJSON_IsArray(sh))
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: tensor '%s': \"shape\" is missing or "
                                    "not an array", path, name);
    int n = cJSON_GetArraySize(sh);
    if (n > LM_MAX_DIMS)
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: tensor '%s' has %d dimensions (at "
                                    "most %d)", path, name, n, LM_MAX_DIMS);
    int i = 0;
    for (const cJSON *d = sh->child; d; d = d->next, i++) {
        uint64_t v;
        if (!as_u64(d, &v) || v > (uint64_t)INT64_MAX)
            return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                        "%s: tensor '%s': shape[%d] is not a "
                                        "non-negative integer", path, name, i);
        shape[i] = (int64_t)v;
    }
    *ndim = n;
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 ||
        !as_u64(cJSON_GetArrayItem(off, 0), &r->begin) ||
        !as_u64(cJSON_GetArrayItem(off, 1), &r->end))
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: tensor '%s': \"data_offsets\" must be "
                                    "[begin, end] non-negative integers", path,
                                    name);
    if (r->begin > r->end)
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: tensor '%s': data_offsets begin %llu "
                                    "> end %llu", path, name,
                                    (unsigned long long)r->begin,
                                    (unsigned long long)r->end);
    bool overflow;
    size_t numel = lm__numel_checked(n, shape, &overflow);
    if (overflow || numel > SIZE_MAX / lm_dtype_size(*dtype) ||
        numel * lm_dtype_size(*dtype) != r->end - r->begin)
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: tensor '%s': shape and dtype need "
                                    "%s bytes but data_offsets span %llu",
                                    path, name,
                                    overflow ? "more than 2^64" : "other",
                                    (unsigned long long)(r->end - r->begin));
    r->name = name;
    return LM_OK;
}

static lm_status read_metadata(lm_context *ctx, const char *path,
                               const cJSON *meta, lm_model *model)
{
    if (!cJSON_IsObject(meta))
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: \"__metadata__\" is not an object",
                                    path);
    for (const cJSON *kv = meta->child; kv; kv = kv->next) {
        if (!cJSON_IsString(kv))
            return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                        "%s: __metadata__ value of '%s' is "
                                        "not a string", path, kv->string);
        LM_TRY(lm__oom_in(ctx, lm_model_set_metadata(model, kv->string,
                                                     kv->valuestring),
                          path, "metadata key", kv->string));
    }
    return LM_OK;
}

/* Ranges sorted by offset must tile [0, data_len) exactly. */
static lm_status check_coverage(lm_context *ctx, const char *path,
                                struct range *r, size_t n, uint64_t data_len)
{
    qsort(r, n, sizeof(*r), by_begin);
    uint64_t at = 0;
    for (size_t i = 0; i < n; i++) {
        if (r[i].begin < at)
            return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                        "%s: tensor '%s' overlaps tensor "
                                        "'%s'", path, r[i].name,
                                        r[i - 1].name);
        if (r[i].begin > at)
            return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                        "%s: %llu unused bytes before tensor "
                                        "'%s' (the data must be fully "
                                        "indexed)", path,
                                        (unsigned long long)(r[i].begin - at),
                                        r[i].name);
        at = r[i].end;
    }
    if (at > data_len)
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: tensor '%s' ends at byte %llu of "
                                    "the data but the file holds %llu", path,
                                    n ? r[n - 1].name : "?",
                                    (unsigned long long)at,
                                    (unsigned long long)data_len);
    if (at < data_len)
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: %llu trailing bytes after the last "
                                    "tensor", path,
                                    (unsigned long long)(data_len - at));
    return LM_OK;
}

static lm_status add_tensor(lm_context *ctx, lm_model *model, const char *path,
                            const char *name, lm_dtype dtype, int ndim,
                            const int64_t *shape, const char *data)
{
    size_t nbytes = 0;
    lm_tensor *t;
    if ((uintptr_t)data % lm_dtype_size(dtype)) {
        /* safetensors does not promise alignment: copy such tensors. */
        LM_TRY(lm__oom_in(ctx, lm_tensor_create(ctx, dtype, ndim, shape, &t),
                          path, "tensor", name));
        memcpy(t->data, data, lm_tensor_nbytes(t));
    } else {
        bool overflow;
        nbytes = lm__numel_checked(ndim, shape, &overflow) *
                 lm_dtype_size(dtype);
        LM_TRY(lm_tensor_wrap(ctx, dtype, ndim, shape, (void *)data, nbytes,
                              &t));
    }
    lm_status st = lm_model_add(model, name, t);
    if (st != LM_OK) {
        lm_tensor_destroy(t);
        if (st == LM_ERR_EXISTS)
            return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                        "%s: duplicate tensor name '%s'",
                                        path, name);
    }
    return lm__oom_in(ctx, st, path, "tensor", name);
}

/* Parse one mapped file and add its tensors to `model`. */
static lm_status parse_file(lm_context *ctx, const char *path,
                            const struct lm_mapping *map, lm_model *model)
{
    const unsigned char *p = map->addr;
    if (map->len < 8)
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: %zu bytes is too short for a "
                                    "safetensors file", path, map->len);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++)
        hlen |= (uint64_t)p[i] << (8 * i);
    if (hlen > map->len - 8 || hlen > MAX_HEADER || hlen < 2)
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: header length %llu does not fit the "
                                    "file of %zu bytes", path,
                                    (unsigned long long)hlen, map->len);
    const char *json = (const char *)p + 8;
    /* cJSON stops at a NUL and cuts strings at \u0000: check the bytes
     * first (padding included, which must be spaces or JSON whitespace). */
    LM_TRY(lm__json_check(ctx, path, json, (size_t)hlen, "of the header"));
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, (size_t)hlen, &end, 0);
    if (!root && lm__json_parse_ran_out_of_memory(json, (size_t)hlen))
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "%s: out of memory parsing the header "
                                    "(%llu bytes of JSON)", path,
                                    (unsigned long long)hlen);
    if (!root || !cJSON_IsObject(root)) {
        size_t at = end ? (size_t)(end - json) : 0;
        cJSON_Delete(root);
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: the header is not a well-formed JSON "
                                    "object (near byte %zu)", path, at);
    }
    /* Only spaces may pad the JSON (the writer pads to 8 bytes). */
    for (const char *c = end; c < json + hlen; c++)
        if (*c != ' ' && *c != '\n' && *c != '\t' && *c != '\r') {
            cJSON_Delete(root);
            return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                        "%s: unexpected bytes after the "
                                        "header's JSON", path);
        }
    size_t n = 0;
    for (const cJSON *e = root->child; e; e = e->next)
        n++;
    struct range *ranges = lm__calloc(ctx, n ? n : 1, sizeof(*ranges));
    lm_status st = ranges ? LM_OK
                          : lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                                 "%s: out of memory for the "
                                                 "header's %zu entries", path,
                                                 n);
    size_t nr = 0;
    const char *data = (const char *)p + 8 + hlen;
    uint64_t data_len = map->len - 8 - hlen;
    bool seen_meta = false;
    for (const cJSON *e = root->child; st == LM_OK && e; e = e->next) {
        if (!strcmp(e->string, "__metadata__")) {
            st = seen_meta ? lm_context_set_error(ctx, LM_ERR_FORMAT,
                                                  "%s: __metadata__ given "
                                                  "twice", path)
                           : read_metadata(ctx, path, e, model);
            seen_meta = true;
            continue;
        }
        lm_dtype dtype = LM_F32;
        int ndim = 0;
        int64_t shape[LM_MAX_DIMS] = {0};
        st = parse_entry(ctx, path, e, &dtype, &ndim, shape, &ranges[nr]);
        if (st == LM_OK && ranges[nr].end > data_len)
            st = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                      "%s: tensor '%s' ends at byte %llu of "
                                      "the data but the file holds %llu",
                                      path, e->string,
                                      (unsigned long long)ranges[nr].end,
                                      (unsigned long long)data_len);
        if (st == LM_OK)
            st = add_tensor(ctx, model, path, e->string, dtype, ndim, shape,
                            data + ranges[nr].begin);
        nr++;
    }
    if (st == LM_OK && nr == 0)
        st = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                  "%s: the header lists no tensors (an empty "
                                  "model)", path);
    if (st == LM_OK)
        st = check_coverage(ctx, path, ranges, nr, data_len);
    lm_free(ctx, ranges);
    cJSON_Delete(root);
    return st;
}

lm_status lm__safetensors_read_into(lm_context *ctx, const char *path,
                                    lm_model *model)
{
    return lm__map_and_parse(ctx, path, model, parse_file);
}

lm_status lm_safetensors_read(lm_context *ctx, const char *path,
                              lm_model **out)
{
    return lm__read_model(ctx, path, out, parse_file);
}
