#include "fuzz_util.h"

#include "libmerge.h"

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

lm_context *fuzz_context(void)
{
    lm_context_options o = LM_CONTEXT_OPTIONS_INIT;
    o.n_threads = 1;
    lm_context *ctx = NULL;
    return lm_context_create(&o, &ctx) == LM_OK ? ctx : NULL;
}
