/* The files mergekit writes beside the weights (mergekit/merge.py): the
 * donor's config.json with torch_dtype and the layer count updated, its
 * tokenizer and other side files, mergekit_config.yml (the config as
 * given) and a generated model card README.md (never the donor's). */
#ifndef LMERGE_OUT_FILES_H
#define LMERGE_OUT_FILES_H

#include <stddef.h>

#include "config.h"
#include "layout.h"

struct lmerge_out_info {
    const char *donor;        /* base_model, else the first model */
    const char *dtype;        /* out_dtype, else dtype, as written; NULL */
    long n_layers;            /* output layer count to record, or -1 */
    const char *config_text;  /* the config file's text */
    const char *strategy;     /* libmerge strategy that ran */
    bool copy_files;          /* copy the donor's side files */
};

/* Writes everything into dir (the staging directory). Returns -1 and a
 * message in err on failure. */
int lmerge_write_out_files(const struct lmerge_config *c,
                           const struct lmerge_layout *l,
                           const struct lmerge_out_info *info, const char *dir,
                           char *err, size_t err_size);

#endif
