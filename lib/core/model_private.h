/* Models and task vectors: private layouts, attachments, lookup. Not
 * installed.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LM_CORE_MODEL_PRIVATE_H
#define LM_CORE_MODEL_PRIVATE_H

#include "core/name_set.h"
#include "core/tensor_private.h"
#include "libmerge/model.h"

/* A tensor's bytes in a file: the file as it was when mapped (its
 * identity, so a file replaced since is never read) and the offset of the
 * tensor's first byte. */
struct lm__file_range {
    const char *path;
    uint64_t dev, ino, size;
    uint64_t offset;
};

struct lm_model_entry {
    char *name;
    lm_tensor *tensor;
};

struct lm_model {
    lm_context *ctx;
    struct lm_model_entry *entries; /* insertion order */
    size_t count, cap;
    struct lm__name_set names;      /* entries by name */
    /* An external resource the tensors point into (e.g. a file mapping);
     * released after the tensors when the model is destroyed. */
    void (*release)(void *resource);
    void *resource;
    /* Optional: called after the executor is done with a tensor, so a
     * file-backed model can drop its pages (bounded resident memory). */
    void (*done_with)(void *resource, const lm_tensor *tensor);
    /* Optional: where a tensor's bytes lie in the file it was mapped from
     * (false when they are not a plain copy of a file range), so a merge
     * can pread() them instead of touching the mapping (core/file_source.h). */
    bool (*file_range)(void *resource, const lm_tensor *tensor,
                       struct lm__file_range *out);
    char **meta_keys, **meta_values; /* insertion order */
    size_t n_meta, meta_cap;
    struct lm__name_set meta_names;  /* meta_keys by name */
    /* What the format a model was read from keeps beside its tensors and
     * metadata, for a writer of the same format to carry over (e.g. typed
     * key/values that text metadata cannot hold). Opaque here: `tag` names the owner (lib/io), who
     * alone reads `data`; `destroy` frees it, before `release`, since
     * `data` may point into the resource. */
    const void *attachment_tag;
    void *attachment;
    void (*attachment_destroy)(lm_context *ctx, void *data);
};

struct lm_task_vector {
    lm_context *ctx;
    lm_model *deltas; /* f32, owned */
};

/* Attach a resource released (after all tensors) when the model dies. Only
 * one per model; returns LM_ERR_STATE if one is already attached. */
lm_status lm__model_attach_resource(lm_model *model,
                                    void (*release)(void *resource),
                                    void *resource);

/* Attach format data to a model (see struct lm_model): one per model;
 * LM_ERR_STATE if one is attached. `destroy` may be NULL. */
lm_status lm__model_attach(lm_model *model, const void *tag, void *data,
                           void (*destroy)(lm_context *ctx, void *data));
/* The data attached under `tag`, or NULL. */
void *lm__model_attachment(const lm_model *model, const void *tag);

/* The tensor named `name`, or NULL (no error recorded). */
lm_tensor *lm__model_lookup(const lm_model *model, const char *name);
/* Index of the entry named `name` (hashed), or SIZE_MAX. */
size_t lm__model_index(const lm_model *model, const char *name);

#endif /* LM_CORE_MODEL_PRIVATE_H */
