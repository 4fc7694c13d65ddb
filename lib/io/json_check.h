/* A scan of JSON text from a file before cJSON parses it. */
#ifndef LM_IO_JSON_CHECK_H
#define LM_IO_JSON_CHECK_H

#include <stddef.h>

#include "core/internal.h"

/* Refuses, with LM_ERR_FORMAT naming `path`, the offset and the string
 * being read, what cJSON would silently misread: a NUL byte anywhere (cJSON
 * stops there, so a NUL used to pass as whitespace), other control bytes
 * (< 0x20) except tab, LF and CR between tokens or any inside a string
 * (invalid JSON), and the escape \u0000 in a string (cJSON cuts the string
 * there: "a\u0000b" became "a"). `what` names the text in messages, e.g.
 * "of the header" gives "byte 12 of the header". */
lm_status lm__json_check(lm_context *ctx, const char *path, const char *text,
                         size_t len, const char *what);

#endif
