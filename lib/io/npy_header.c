/* .npy headers: "\x93NUMPY", version, header length, then a Python dict
 * literal {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }. */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "io/npy_header.h"

static const char MAGIC[] = "\x93NUMPY";

static lm_status bad(lm_context *ctx, const char *what, const char *why)
{
    return lm_context_set_error(ctx, LM_ERR_FORMAT, "%s: %s", what, why);
}

/* The text after `'key':` (whitespace skipped), or NULL. */
static const char *value_of(const char *dict, const char *key)
{
    char quoted[32];
    snprintf(quoted, sizeof(quoted), "'%s'", key);
    const char *k = strstr(dict, quoted);
    if (!k)
        return NULL;
    k += strlen(quoted);
    while (isspace((unsigned char)*k))
        k++;
    if (*k != ':')
        return NULL;
    k++;
    while (isspace((unsigned char)*k))
        k++;
    return k;
}

static lm_status parse_descr(lm_context *ctx, const char *what,
                             const char *v, lm_dtype *dtype)
{
    char descr[16];
    if (!v || (*v != '\'' && *v != '"'))
        return bad(ctx, what, "the .npy header has no 'descr' string");
    char quote = *v++;
    size_t n = 0;
    while (v[n] && v[n] != quote && n < sizeof(descr) - 1)
        n++;
    if (v[n] != quote)
        return bad(ctx, what, "the .npy header's 'descr' is malformed");
    memcpy(descr, v, n);
    descr[n] = '\0';
    if (!strcmp(descr, "<f4"))
        *dtype = LM_F32;
    else if (!strcmp(descr, "<f2"))
        *dtype = LM_F16;
    else if (!strcmp(descr, "<f8"))
        *dtype = LM_F64;
    else
        return lm_context_set_error(
            ctx, LM_ERR_UNSUPPORTED,
            "%s: dtype '%s' is not supported (little-endian float16, "
            "float32 and float64 only%s)", what, descr,
            !strcmp(descr, "<V2") || !strcmp(descr, "|V2")
                ? "; bfloat16 from ml_dtypes is saved as raw '<V2': save "
                  "float32 instead"
                : "");
    return LM_OK;
}

static lm_status parse_shape(lm_context *ctx, const char *what,
                             const char *v, int *ndim, int64_t *shape)
{
    if (!v || *v != '(')
        return bad(ctx, what, "the .npy header has no 'shape' tuple");
    v++;
    int n = 0;
    for (;;) {
        while (isspace((unsigned char)*v))
            v++;
        if (*v == ')')
            break;
        if (!isdigit((unsigned char)*v))
            return bad(ctx, what, "the .npy header's 'shape' is malformed");
        uint64_t d = 0;
        while (isdigit((unsigned char)*v)) {
            if (d > (uint64_t)INT64_MAX / 10)
                return bad(ctx, what, "a dimension is too large");
            d = d * 10 + (uint64_t)(*v++ - '0');
        }
        if (n == LM_MAX_DIMS)
            return lm_context_set_error(ctx, LM_ERR_UNSUPPORTED,
                                        "%s: more than %d dimensions", what,
                                        LM_MAX_DIMS);
        shape[n++] = (int64_t)d;
        while (isspace((unsigned char)*v))
            v++;
        if (*v == ',')
            v++;
        else if (*v != ')')
            return bad(ctx, what, "the .npy header's 'shape' is malformed");
    }
    *ndim = n;
    return LM_OK;
}

lm_status lm__npy_parse(lm_context *ctx, const char *what,
                        const unsigned char *p, size_t len, lm_dtype *dtype,
                        int *ndim, int64_t *shape, size_t *data_offset)
{
    if (len < 10 || memcmp(p, MAGIC, 6) != 0)
        return bad(ctx, what, "not an .npy array (bad magic)");
    unsigned major = p[6];
    size_t hlen, start;
    if (major == 1) {
        hlen = (size_t)p[8] | (size_t)p[9] << 8;
        start = 10;
    } else if (major == 2 || major == 3) {
        if (len < 12)
            return bad(ctx, what, "truncated .npy header");
        hlen = (size_t)p[8] | (size_t)p[9] << 8 | (size_t)p[10] << 16 |
               (size_t)p[11] << 24;
        start = 12;
    } else {
        return lm_context_set_error(ctx, LM_ERR_UNSUPPORTED,
                                    "%s: .npy format version %u", what, major);
    }
    if (hlen > len - start || hlen > 1 << 20)
        return bad(ctx, what, "the .npy header runs past the member");
    char dict[4096];
    if (hlen >= sizeof(dict))
        return bad(ctx, what, "the .npy header is implausibly long");
    memcpy(dict, p + start, hlen);
    dict[hlen] = '\0';
    if (memchr(dict, '\0', hlen))
        return bad(ctx, what, "the .npy header contains a NUL byte");
    LM_TRY(parse_descr(ctx, what, value_of(dict, "descr"), dtype));
    const char *fo = value_of(dict, "fortran_order");
    if (!fo || (strncmp(fo, "False", 5) && strncmp(fo, "True", 4)))
        return bad(ctx, what, "the .npy header has no 'fortran_order'");
    if (!strncmp(fo, "True", 4))
        return lm_context_set_error(ctx, LM_ERR_UNSUPPORTED,
                                    "%s: Fortran-order arrays are not "
                                    "supported (save with "
                                    "np.ascontiguousarray)", what);
    LM_TRY(parse_shape(ctx, what, value_of(dict, "shape"), ndim, shape));
    *data_offset = start + hlen;
    return LM_OK;
}

size_t lm__npy_format(char *buf, size_t size, lm_dtype dtype, int ndim,
                      const int64_t *shape)
{
    char dict[512];
    int n = snprintf(dict, sizeof(dict), "{'descr': '%s', 'fortran_order': "
                     "False, 'shape': (", dtype == LM_F16   ? "<f2"
                                          : dtype == LM_F64 ? "<f8"
                                                            : "<f4");
    for (int i = 0; i < ndim && n > 0 && (size_t)n < sizeof(dict); i++)
        n += snprintf(dict + n, sizeof(dict) - (size_t)n, "%" PRId64 "%s",
                      shape[i], ndim == 1 ? "," : i + 1 < ndim ? ", " : "");
    if (n <= 0 || (size_t)n + 8 >= sizeof(dict))
        return 0;
    n += snprintf(dict + n, sizeof(dict) - (size_t)n, "), }");
    size_t total = (10 + (size_t)n + 1 + 63) / 64 * 64, hlen = total - 10;
    if (total > size)
        return 0;
    memcpy(buf, MAGIC, 6);
    buf[6] = 1;
    buf[7] = 0;
    buf[8] = (char)(hlen & 0xff);
    buf[9] = (char)(hlen >> 8);
    memcpy(buf + 10, dict, (size_t)n);
    memset(buf + 10 + n, ' ', hlen - (size_t)n - 1);
    buf[total - 1] = '\n';
    return total;
}
