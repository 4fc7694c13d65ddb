/* Read-only file mappings kept alive by models. */
#ifndef LM_IO_MAPPING_H
#define LM_IO_MAPPING_H

#include "core/internal.h"

struct lm_mapping {
    void *addr;
    size_t len;
    /* The file as mapped (lm__file_range): its path (owned) and identity. */
    char *path;
    uint64_t dev, ino;
};

/* Every mapping a model's tensors point into (several for sharded
 * checkpoints); attached to the model as its resource. */
struct lm_mappings {
    lm_context *ctx;
    struct lm_mapping *maps;
    size_t count, cap;
};

/* Map `path` read-only; LM_ERR_IO naming the file on failure. An empty
 * file gives addr NULL, len 0. lm__unmap frees what it holds. */
lm_status lm__map_file(lm_context *ctx, const char *path,
                       struct lm_mapping *out);
void lm__unmap(lm_context *ctx, struct lm_mapping *m);

/* A mapping set attached to `model` (created on first use). */
lm_status lm__model_mappings(lm_model *model, struct lm_mappings **out);
lm_status lm__mappings_add(struct lm_mappings *set, struct lm_mapping map);

/* A format parser over one mapped file, adding its tensors to a model. */
typedef lm_status (*lm__parse_fn)(lm_context *ctx, const char *path,
                                  const struct lm_mapping *map,
                                  lm_model *model);

/* Map `path` into the model's mapping set, then parse it. */
lm_status lm__map_and_parse(lm_context *ctx, const char *path,
                            lm_model *model, lm__parse_fn parse);

/* A new model holding one parsed file (destroyed again on failure). */
lm_status lm__read_model(lm_context *ctx, const char *path, lm_model **out,
                         lm__parse_fn parse);

#endif
