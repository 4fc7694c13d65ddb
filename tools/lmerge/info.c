/* `lmerge info FILE`: tensors, dtypes, shapes of a model file. */
#include <stdio.h>

#include "commands.h"

int lmerge_info(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: lmerge info FILE_OR_DIR\n");
        return 2;
    }
    lm_context *ctx;
    if (lm_context_create(NULL, &ctx) != LM_OK)
        return 1;
    lm_model *m = NULL;
    int rc = 0;
    if (lm_model_open(ctx, argv[1], &m) != LM_OK) {
        fprintf(stderr, "lmerge info: %s\n", lm_context_error(ctx));
        rc = 1;
    } else {
        for (size_t i = 0; i < lm_model_count(m); i++) {
            const lm_tensor *t = lm_model_at(m, i);
            printf("%-48s %-5s [", lm_model_name_at(m, i),
                   lm_dtype_name(lm_tensor_dtype(t)));
            for (int d = 0; d < lm_tensor_ndim(t); d++)
                printf("%s%lld", d ? ", " : "", (long long)lm_tensor_dim(t, d));
            printf("]\n");
        }
    }
    lm_model_destroy(m);
    lm_context_destroy(ctx);
    return rc;
}
