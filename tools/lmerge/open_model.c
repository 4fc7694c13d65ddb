/* Opening model files for lmerge. */
#include <stdio.h>
#include <sys/stat.h>

#include "commands.h"

lm_status lmerge_open_model(lm_context *ctx, const char *path, lm_model **out)
{
    return lm_model_open(ctx, path, out);
}

bool lmerge_is_adapter(const char *path)
{
    char cfg[4096];
    struct stat st;
    snprintf(cfg, sizeof(cfg), "%s/adapter_config.json", path);
    return stat(cfg, &st) == 0 && S_ISREG(st.st_mode);
}
