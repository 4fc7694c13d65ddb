/* Telling a cJSON parse that ran out of memory from malformed JSON. */
#ifndef LM_IO_JSON_OOM_H
#define LM_IO_JSON_OOM_H

#include <stdbool.h>
#include <stddef.h>

/* After cJSON_ParseWithLength(Opts)(text, len, ...) returned NULL: true if
 * cJSON's grammar accepts a value at the start of text[0..len), so the
 * parse can only have failed because one of cJSON's allocations did. */
bool lm__json_parse_ran_out_of_memory(const char *text, size_t len);

/* Whether cJSON's grammar accepts a value at the start of text[0..len)
 * (for the tests comparing it with cJSON). Unsure: a number of 64 bytes or
 * more, which cJSON builds differ on. */
enum lm__json_grammar {
    LM__JSON_REFUSED,
    LM__JSON_ACCEPTED,
    LM__JSON_UNSURE,
};
enum lm__json_grammar lm__json_cjson_grammar(const char *text, size_t len);

#endif
