/* Read-only file mappings kept alive by models. */
#ifndef LM_IO_MAPPING_H
#define LM_IO_MAPPING_H

#include "core/internal.h"

struct lm_mapping {
    void *addr;
    size_t len;
};

/* Every mapping a model's tensors point into (several for sharded
 * checkpoints); attached to the model as its resource. */
struct lm_mappings {
    lm_context *ctx;
    struct lm_mapping *maps;
    size_t count, cap;
};

/* Map `path` read-only; LM_ERR_IO naming the file on failure. An empty
 * file gives addr NULL, len 0. */
lm_status lm__map_file(lm_context *ctx, const char *path,
                       struct lm_mapping *out);
void lm__unmap(struct lm_mapping *m);

/* A mapping set attached to `model` (created on first use). */
lm_status lm__model_mappings(lm_model *model, struct lm_mappings **out);
lm_status lm__mappings_add(struct lm_mappings *set, struct lm_mapping map);

#endif
