/* lm_stats_load on arbitrary bytes: any result but a crash, a leak or UB. */
#include "fuzz_util.h"
#include "libmerge.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lm_context *ctx;
    if (lm_context_create(NULL, &ctx) != LM_OK)
        return 0;
    lm_stats *s = NULL;
    if (lm_stats_load(ctx, fuzz_write_temp(data, size, ".lmstats"), &s) ==
        LM_OK)
        lm_stats_destroy(s);
    lm_context_destroy(ctx);
    return 0;
}
