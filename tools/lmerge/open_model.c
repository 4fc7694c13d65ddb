/* Opening model files for lmerge. */
#include "commands.h"

lm_status lmerge_open_model(lm_context *ctx, const char *path, lm_model **out)
{
    return lm_model_open(ctx, path, out);
}
