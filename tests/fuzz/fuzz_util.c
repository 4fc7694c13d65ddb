#include "fuzz_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *fuzz_write_temp(const uint8_t *data, size_t size,
                            const char *suffix)
{
    static char path[256]; /* one fuzzing process, one thread */
    snprintf(path, sizeof(path), "/tmp/lm_fuzz_%d%s", (int)getpid(), suffix);
    FILE *f = fopen(path, "wb");
    if (!f)
        abort();
    if (size && fwrite(data, 1, size, f) != size)
        abort();
    fclose(f);
    return path;
}
