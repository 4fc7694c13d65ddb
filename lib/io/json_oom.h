/* Telling a cJSON parse that ran out of memory from malformed JSON. */
#ifndef LM_IO_JSON_OOM_H
#define LM_IO_JSON_OOM_H

#include <stdbool.h>
#include <stddef.h>

/* After cJSON_ParseWithLength(Opts)(text, len, ...) returned NULL: true if
 * cJSON's grammar accepts a value at the start of text[0..len), so the
 * parse can only have failed because one of cJSON's allocations did. */
bool lm__json_parse_ran_out_of_memory(const char *text, size_t len);

#endif
