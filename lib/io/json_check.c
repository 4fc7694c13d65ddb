/* One pass over the bytes, tracking only whether we are inside a string:
 * enough to tell a padding byte from a byte of a name. */
#include <string.h>

#include "io/json_check.h"

static lm_status refuse(lm_context *ctx, const char *path, const char *text,
                        size_t at, const char *what, const char *problem,
                        const char *string_start)
{
    if (!string_start)
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: %s at byte %zu%s%s", path, problem,
                                    at, *what ? " " : "", what);
    /* Show the string up to the bad byte: for a header that is the tensor
     * or key name being read. */
    size_t n = (size_t)(text + at - string_start);
    return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                "%s: %s at byte %zu%s%s, inside the string "
                                "\"%.*s%s\"", path, problem, at,
                                *what ? " " : "", what,
                                (int)(n > 64 ? 64 : n), string_start,
                                n > 64 ? "..." : "");
}

lm_status lm__json_check(lm_context *ctx, const char *path, const char *text,
                         size_t len, const char *what)
{
    const char *string_start = NULL; /* inside a string when set */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c == 0)
            return refuse(ctx, path, text, i, what, "NUL byte",
                          string_start);
        if (!string_start) {
            if (c < 0x20 && c != '\t' && c != '\n' && c != '\r')
                return refuse(ctx, path, text, i, what,
                              "control byte outside a string", NULL);
            if (c == '"')
                string_start = text + i + 1;
            continue;
        }
        if (c < 0x20)
            return refuse(ctx, path, text, i, what,
                          "control byte inside a string", string_start);
        if (c == '"') {
            string_start = NULL;
        } else if (c == '\\' && i + 1 < len) {
            if (text[i + 1] == 'u' && len - i >= 6 &&
                !memcmp(text + i + 2, "0000", 4))
                return refuse(ctx, path, text, i, what,
                              "escaped NUL (\\u0000)", string_start);
            /* The escaped byte cannot end the string; a control byte is
             * left to the checks above. */
            if ((unsigned char)text[i + 1] >= 0x20)
                i++;
        }
    }
    return LM_OK;
}
