/* lib/io/json_oom.c against cJSON: the readers report out of memory when a
 * cJSON parse fails on text json_oom accepts, so the two must accept
 * exactly the same texts (here: any bytes, NUL included), but for the
 * numbers of 64+ bytes that cJSON builds differ on. */
#include <cJSON.h>
#include <stdint.h>
#include <stdlib.h>

#include "io/json_oom.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cJSON *j = cJSON_ParseWithLength((const char *)data, size);
    enum lm__json_grammar ours =
        lm__json_cjson_grammar((const char *)data, size);
    if (ours != LM__JSON_UNSURE && (j != NULL) != (ours == LM__JSON_ACCEPTED))
        abort(); /* a mismatch: cJSON and json_oom disagree on this text */
    cJSON_Delete(j);
    return 0;
}
