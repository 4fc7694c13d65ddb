/* lib/io/json_oom.c against cJSON: the readers report out of memory when a
 * cJSON parse fails on text json_oom accepts, so the two must accept
 * exactly the same texts (here: any bytes, NUL included). */
#include <cJSON.h>
#include <stdint.h>
#include <stdlib.h>

#include "io/json_oom.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cJSON *j = cJSON_ParseWithLength((const char *)data, size);
    bool ours = lm__json_parse_ran_out_of_memory((const char *)data, size);
    if ((j != NULL) != ours)
        abort(); /* a mismatch: cJSON and json_oom disagree on this text */
    cJSON_Delete(j);
    return 0;
}
