/* The lmerge YAML config reader on arbitrary bytes. */
#include "config.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lmerge_config c;
    char err[512];
    if (lmerge_config_load(fuzz_write_temp(data, size, ".yaml"), &c, err,
                           sizeof(err)) == 0)
        lmerge_config_free(&c);
    return 0;
}
