/* cJSON returns NULL both for malformed text and when one of its
 * allocations fails, and the library cannot install cJSON's hooks to see
 * which (they are process-wide: that would be global state shared with the
 * application). So after a failed parse the text is run through cJSON's
 * grammar again here, without allocating. The functions below follow cJSON
 * 1.7.15's parse_value, parse_string, parse_number, parse_array and
 * parse_object (cJSON.c) step for step, quirks included (whitespace is any
 * byte <= 32, numbers are what strtod takes from the longest run of
 * [0-9+-eE.], \u escapes are not checked for hex digits,
 * nesting stops at CJSON_NESTING_LIMIT), so "accepted here" means
 * "accepted by cJSON"; test_robustness_alloc_failures compares the two on many
 * mutated texts. */
#include <cJSON.h>
#include <string.h>

#include "io/json_oom.h"

struct buf {
    const unsigned char *s;
    size_t len, off, depth;
    bool unsure;
};

static bool can_read(const struct buf *b, size_t n) { return b->off + n <= b->len; }
static bool can_access(const struct buf *b, size_t i) { return b->off + i < b->len; }
static unsigned char at(const struct buf *b, size_t i) { return b->s[b->off + i]; }

static void skip_whitespace(struct buf *b)
{
    if (!can_access(b, 0))
        return;
    while (can_access(b, 0) && at(b, 0) <= 32)
        b->off++;
    if (b->off == b->len)
        b->off--;
}

static bool value(struct buf *b);

/* cJSON hands strtod the longest run of [0-9+-eE.] with '.' as the
 * locale's decimal point, and strtod takes from such a run [sign] digits
 * [. digits] or [sign] . digits, then an exponent only when a digit follows
 * the e; nothing (a failure) without a mantissa digit. Computed here, so no
 * locale or strtod. Up to 1.7.18 cJSON copied at most 63 bytes of the run;
 * later versions and Debian's 1.7.15 (CVE-2023-26819 backport) take it
 * all, and the header cannot tell which: a run of 64 bytes or more makes
 * the answer "unsure". */
#define NUMBER_RUN_SURE 63

static bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static bool number(struct buf *b)
{
    size_t run = 0;
    while (can_access(b, run)) {
        unsigned char c = at(b, run);
        if (!is_digit(c) && c != '+' && c != '-' && c != 'e' && c != 'E' &&
            c != '.')
            break;
        run++;
    }
    if (run > NUMBER_RUN_SURE) {
        b->unsure = true;
        return false;
    }
    const unsigned char *p = b->s + b->off;
    size_t i = 0, digits = 0;
    if (i < run && (p[i] == '+' || p[i] == '-'))
        i++;
    for (; i < run && is_digit(p[i]); i++)
        digits++;
    if (i < run && p[i] == '.')
        for (i++; i < run && is_digit(p[i]); i++)
            digits++;
    if (!digits)
        return false;
    if (i < run && (p[i] == 'e' || p[i] == 'E')) {
        size_t j = i + 1;
        if (j < run && (p[j] == '+' || p[j] == '-'))
            j++;
        if (j < run && is_digit(p[j])) {
            while (j < run && is_digit(p[j]))
                j++;
            i = j;
        }
    }
    b->off += i;
    return true;
}

static unsigned hex4(const unsigned char *p)
{
    unsigned h = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p[i];
        if (c >= '0' && c <= '9')
            h += (unsigned)(c - '0');
        else if (c >= 'A' && c <= 'F')
            h += 10u + (unsigned)(c - 'A');
        else if (c >= 'a' && c <= 'f')
            h += 10u + (unsigned)(c - 'a');
        else
            return 0; /* cJSON's parse_hex4 fails as 0, taken as U+0000 */
        if (i < 3)
            h <<= 4;
    }
    return h;
}

/* Length of the \u escape at p (6 or 12), 0 if cJSON refuses it. */
static size_t utf16_escape(const unsigned char *p, const unsigned char *end)
{
    if (end - p < 6)
        return 0;
    unsigned first = hex4(p + 2);
    if (first >= 0xDC00 && first <= 0xDFFF)
        return 0;
    if (first < 0xD800 || first > 0xDBFF)
        return 6;
    const unsigned char *second = p + 6;
    if (end - second < 6 || second[0] != '\\' || second[1] != 'u')
        return 0;
    unsigned code = hex4(second + 2);
    return code >= 0xDC00 && code <= 0xDFFF ? 12 : 0;
}

static bool string(struct buf *b)
{
    if (!can_access(b, 0) || at(b, 0) != '"')
        return false;
    const unsigned char *p = b->s + b->off + 1, *end = p;
    while ((size_t)(end - b->s) < b->len && *end != '"') {
        if (*end == '\\') {
            if ((size_t)(end + 1 - b->s) >= b->len)
                return false;
            end++;
        }
        end++;
    }
    if ((size_t)(end - b->s) >= b->len || *end != '"')
        return false;
    while (p < end) {
        if (*p != '\\') {
            p++;
            continue;
        }
        size_t n = 2;
        switch (p[1]) {
        case 'b': case 'f': case 'n': case 'r': case 't':
        case '"': case '\\': case '/':
            break;
        case 'u':
            n = utf16_escape(p, end);
            if (!n)
                return false;
            break;
        default:
            return false;
        }
        p += n;
    }
    b->off = (size_t)(end - b->s) + 1;
    return true;
}

/* The elements of an array (close = ']') or the members of an object. */
static bool container(struct buf *b, unsigned char close)
{
    if (b->depth >= CJSON_NESTING_LIMIT)
        return false;
    b->depth++;
    b->off++; /* the '[' or '{' parse_value saw */
    skip_whitespace(b);
    if (can_access(b, 0) && at(b, 0) == close)
        goto done;
    if (!can_access(b, 0))
        return false;
    b->off--;
    do {
        b->off++;
        skip_whitespace(b);
        if (close == '}') {
            if (!string(b))
                return false;
            skip_whitespace(b);
            if (!can_access(b, 0) || at(b, 0) != ':')
                return false;
            b->off++;
            skip_whitespace(b);
        }
        if (!value(b))
            return false;
        skip_whitespace(b);
    } while (can_access(b, 0) && at(b, 0) == ',');
    if (!can_access(b, 0) || at(b, 0) != close)
        return false;
done:
    b->depth--;
    b->off++;
    return true;
}

static bool value(struct buf *b)
{
    if (can_read(b, 4) && !memcmp(b->s + b->off, "null", 4)) {
        b->off += 4;
        return true;
    }
    if (can_read(b, 5) && !memcmp(b->s + b->off, "false", 5)) {
        b->off += 5;
        return true;
    }
    if (can_read(b, 4) && !memcmp(b->s + b->off, "true", 4)) {
        b->off += 4;
        return true;
    }
    if (!can_access(b, 0))
        return false;
    unsigned char c = at(b, 0);
    if (c == '"')
        return string(b);
    if (c == '-' || (c >= '0' && c <= '9'))
        return number(b);
    if (c == '[')
        return container(b, ']');
    if (c == '{')
        return container(b, '}');
    return false;
}

enum lm__json_grammar lm__json_cjson_grammar(const char *text, size_t len)
{
    if (!text || !len)
        return LM__JSON_REFUSED;
    struct buf b = {(const unsigned char *)text, len, 0, 0, false};
    /* cJSON skips a UTF-8 byte order mark (when 5 bytes can be read) */
    if (len > 4 && !memcmp(text, "\xEF\xBB\xBF", 3))
        b.off = 3;
    skip_whitespace(&b);
    bool ok = value(&b);
    return b.unsure ? LM__JSON_UNSURE
                    : ok ? LM__JSON_ACCEPTED : LM__JSON_REFUSED;
}

bool lm__json_parse_ran_out_of_memory(const char *text, size_t len)
{
    /* unsure: keep the parse error (what the readers said before) */
    return lm__json_cjson_grammar(text, len) == LM__JSON_ACCEPTED;
}
