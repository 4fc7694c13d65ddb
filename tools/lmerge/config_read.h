/* Shared helpers of the config reader (config*.c): libyaml document
 * access and error messages naming the file and line. */
#ifndef LMERGE_CONFIG_READ_H
#define LMERGE_CONFIG_READ_H

#include <stddef.h>
#include <yaml.h>

#include "config.h"

struct reader {
    yaml_document_t *doc;
    const char *path;
    char *err;
    size_t err_size;
};

int lmerge_cfg_fail(struct reader *r, const yaml_node_t *node,
                    const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define fail lmerge_cfg_fail

static inline int line_of(const yaml_node_t *node)
{
    return (int)node->start_mark.line + 1;
}

static inline const char *scalar(const yaml_node_t *node)
{
    return node && node->type == YAML_SCALAR_NODE
               ? (const char *)node->data.scalar.value
               : NULL;
}

static inline yaml_node_t *node_at(struct reader *r, int id)
{
    return yaml_document_get_node(r->doc, id);
}

int lmerge_cfg_copy_scalar(struct reader *r, const yaml_node_t *node,
                           const char *key, char **out);
/* A mapping with no key given twice (YAML allows it; which would win is
 * a guess). */
int lmerge_cfg_mapping(struct reader *r, const yaml_node_t *map,
                       const char *what);
/* `parameters:` (or `purify:`) mapping of name: ParameterSetting. */
int lmerge_cfg_read_params(struct reader *r, const yaml_node_t *map,
                           const char *where, struct lmerge_param **out,
                           size_t *n_out);
/* `models:` and `slices:`. */
int lmerge_cfg_read_models(struct reader *r, const yaml_node_t *seq,
                           struct lmerge_config *c);
int lmerge_cfg_read_slices(struct reader *r, const yaml_node_t *seq,
                           struct lmerge_config *c);
/* A model reference PATH or PATH+LORA into ref->path/model/lora. */
int lmerge_cfg_model_ref(struct reader *r, const yaml_node_t *node,
                         char **path, char **model, char **lora);

#endif
