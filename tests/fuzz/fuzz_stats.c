/* lm_stats_load on arbitrary bytes: any result but a crash, a leak or UB.
 * The file ends with a CRC-32 of everything before it, which almost no
 * mutation keeps right: each input is loaded as it is (the checksum path)
 * and again with its last 4 bytes replaced by the right CRC, so that the
 * mutations reach the parser behind the check. */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "fuzz_util.h"
#include "libmerge.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void load(const uint8_t *data, size_t size)
{
    lm_context *ctx;
    if (lm_context_create(NULL, &ctx) != LM_OK)
        return;
    lm_stats *s = NULL;
    if (lm_stats_load(ctx, fuzz_write_temp(data, size, ".lmstats"), &s) ==
        LM_OK)
        lm_stats_destroy(s);
    lm_context_destroy(ctx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    load(data, size);
    if (size < 12)
        return 0;
    uint8_t *fixed = malloc(size);
    if (!fixed)
        return 0;
    memcpy(fixed, data, size);
    uint32_t crc = (uint32_t)crc32(crc32(0L, Z_NULL, 0), fixed,
                                   (uInt)(size - 4));
    memcpy(fixed + size - 4, &crc, 4); /* as the writer stores it */
    load(fixed, size);
    free(fixed);
    return 0;
}
