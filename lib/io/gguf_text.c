/* GGUF key/values as metadata text, written straight from the file's
 * bytes. Measured first, so a value's text is allocated once at its exact
 * size and a hostile array is refused before anything is allocated (the
 * old cJSON tree cost ~80 bytes per element: a 10 MB u8 array took
 * 816 MB). Numbers are printed as cJSON prints them, so the text is what
 * earlier versions gave. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/gguf_format.h"

/* Where the text goes: buf NULL only counts. */
struct text {
    char *buf;
    size_t len, budget;
};

static void put(struct text *t, const char *s, size_t n)
{
    if (t->buf)
        memcpy(t->buf + t->len, s, n);
    t->len += n;
}

/* cJSON's print_number: integers that fit an int as %d, others with 15
 * significant digits, or 17 when 15 do not read back; NaN/Inf as null. */
static void put_double(struct text *t, double d)
{
    char buf[32];
    int n;
    if (isnan(d) || isinf(d))
        n = snprintf(buf, sizeof(buf), "null");
    else if (d >= -2147483648.0 && d <= 2147483647.0 && d == (double)(int)d)
        n = snprintf(buf, sizeof(buf), "%d", (int)d);
    else {
        n = snprintf(buf, sizeof(buf), "%1.15g", d);
        double back = strtod(buf, NULL);
        double big = fabs(back) > fabs(d) ? fabs(back) : fabs(d);
        if (!(fabs(back - d) <= big * 2.220446049250313e-16))
            n = snprintf(buf, sizeof(buf), "%1.17g", d);
    }
    put(t, buf, (size_t)n);
}

static void put_int(struct text *t, bool is_signed, uint64_t v)
{
    char buf[24];
    int n = is_signed ? snprintf(buf, sizeof(buf), "%" PRId64, (int64_t)v)
                      : snprintf(buf, sizeof(buf), "%" PRIu64, v);
    put(t, buf, (size_t)n);
}

/* A string inside an array, escaped as cJSON does. */
static void put_json_string(struct text *t, const char *s, uint64_t n)
{
    put(t, "\"", 1);
    for (uint64_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        const char *e = c == '"' ? "\\\"" : c == '\\' ? "\\\\"
                      : c == '\b' ? "\\b" : c == '\f' ? "\\f"
                      : c == '\n' ? "\\n" : c == '\r' ? "\\r"
                      : c == '\t' ? "\\t" : NULL;
        if (e)
            put(t, e, 2);
        else if (c < 0x20)
            put(t, esc, (size_t)snprintf(esc, sizeof(esc), "\\u%04x", c));
        else
            put(t, (const char *)&c, 1);
    }
    put(t, "\"", 1);
}

static uint64_t le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static enum lm__gguf_text scalar(struct gguf_cursor *c, uint32_t type,
                                 bool top, struct text *t)
{
    static const int size[GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0,
                                              8, 8, 8};
    if (type == GGUF_STRING) {
        const char *s;
        uint64_t n;
        if (!lm__gguf_str(c, &s, &n))
            return LM_GGUF_TEXT_TRUNCATED;
        if (!top) {
            put_json_string(t, s, n);
            return LM_GGUF_TEXT_OK;
        }
        /* Top-level strings are kept as they are: a NUL would cut the C
         * string short, silently changing the value. */
        if (memchr(s, 0, (size_t)n))
            return LM_GGUF_TEXT_NUL;
        put(t, s, (size_t)n);
        return LM_GGUF_TEXT_OK;
    }
    if (type >= GGUF_TYPE_COUNT || !size[type])
        return LM_GGUF_TEXT_BAD_TYPE;
    if (c->end - c->p < size[type])
        return LM_GGUF_TEXT_TRUNCATED;
    uint64_t v = le(c->p, size[type]);
    c->p += size[type];
    switch (type) {
    case GGUF_U8: case GGUF_U16: case GGUF_U32: case GGUF_U64:
        put_int(t, false, v);
        break;
    case GGUF_I8: put_int(t, true, (uint64_t)(int64_t)(int8_t)v); break;
    case GGUF_I16: put_int(t, true, (uint64_t)(int64_t)(int16_t)v); break;
    case GGUF_I32: put_int(t, true, (uint64_t)(int64_t)(int32_t)v); break;
    case GGUF_I64: put_int(t, true, v); break;
    case GGUF_BOOL: put(t, v ? "true" : "false", v ? 4 : 5); break;
    case GGUF_F32: {
        uint32_t u = (uint32_t)v;
        float f;
        memcpy(&f, &u, 4);
        put_double(t, (double)f);
        break;
    }
    default: { /* GGUF_F64 */
        double d;
        memcpy(&d, &v, 8);
        put_double(t, d);
        break;
    }
    }
    return LM_GGUF_TEXT_OK;
}

static enum lm__gguf_text value(struct gguf_cursor *c, uint32_t type,
                                int depth, struct text *t)
{
    if (type != GGUF_ARRAY)
        return scalar(c, type, depth == 0, t);
    uint32_t elem;
    uint64_t count;
    if (depth > LM_GGUF_MAX_NESTING)
        return LM_GGUF_TEXT_TOO_DEEP;
    if (!lm__gguf_u32(c, &elem) || !lm__gguf_u64(c, &count))
        return LM_GGUF_TEXT_TRUNCATED;
    if (elem >= GGUF_TYPE_COUNT)
        return LM_GGUF_TEXT_BAD_TYPE;
    /* Every element takes at least one byte of the file: bounds the loop
     * by the file size before anything is written. */
    if (count > (uint64_t)(c->end - c->p))
        return LM_GGUF_TEXT_TRUNCATED;
    put(t, "[", 1);
    for (uint64_t i = 0; i < count; i++) {
        if (i)
            put(t, ",", 1);
        enum lm__gguf_text r = value(c, elem, depth + 1, t);
        if (r != LM_GGUF_TEXT_OK)
            return r;
        if (t->len > t->budget)
            return LM_GGUF_TEXT_TOO_LONG;
    }
    put(t, "]", 1);
    return LM_GGUF_TEXT_OK;
}

enum lm__gguf_text lm__gguf_text_measure(struct gguf_cursor *c,
                                         uint32_t type, size_t budget,
                                         size_t *len)
{
    struct text t = {NULL, 0, budget};
    enum lm__gguf_text r = value(c, type, 0, &t);
    if (r == LM_GGUF_TEXT_OK && t.len > budget)
        r = LM_GGUF_TEXT_TOO_LONG;
    *len = t.len;
    return r;
}

void lm__gguf_text_write(struct gguf_cursor c, uint32_t type, char *buf,
                         size_t len)
{
    struct text t = {buf, 0, len};
    value(&c, type, 0, &t);
    buf[t.len] = '\0';
}
