/* Opening model files for lmerge. */
#include "commands.h"

lm_status lmerge_open_model(lm_context *ctx, const char *path, lm_model **out)
{
    (void)out;
    return lm_context_set_error(ctx, LM_ERR_UNSUPPORTED,
                                "cannot open '%s': model file reading is not "
                                "wired into lmerge yet", path);
}
