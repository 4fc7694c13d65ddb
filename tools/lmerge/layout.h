/* The output of a mergekit config, tensor by tensor: which tensor of
 * which input each plan slot reads, the layer position t mergekit's
 * gradients are evaluated at, and the slice whose parameters apply
 * (mergekit/plan.py, MergePlanner). */
#ifndef LMERGE_LAYOUT_H
#define LMERGE_LAYOUT_H

#include <stdbool.h>
#include <stddef.h>

#include <libmerge.h>

#include "config.h"
#include "mergekit_methods.h"

/* The opened inputs: one per distinct model reference of the config. */
struct lmerge_inputs {
    size_t n;
    char **ref;        /* the reference as written (MODEL or MODEL+LORA) */
    int *line;
    lm_model **model;  /* NULL for an adapter input */
    lm_lora **adapter; /* an input that is itself a LoRA adapter */
    lm_lora **lora;    /* the +LORA of MODEL+LORA, applied to the model */
    lm_task_vector **lora_delta; /* its dense deltas on the model */
};

/* One plan slot of one output tensor. */
struct lmerge_src {
    size_t input;      /* index into lmerge_inputs */
    const struct lmerge_model_ref *ref; /* the config entry (parameters) */
    char *in_name;     /* the input's tensor name */
};

struct lmerge_out {
    char *name;
    double t;          /* layer position for gradients */
    size_t slice;
    struct lmerge_src base;
    struct lmerge_src *models; /* layout.n_models slots */
};

struct lmerge_layout {
    const struct lmerge_method *method;
    /* The config's slices (models: one slice holding them, base appended
     * as mergekit does). */
    struct lmerge_slice *slices;
    size_t n_slices;
    bool own_slices;
    struct lmerge_out *out;
    size_t n_out;
    size_t n_models;   /* plan models (the base not counted) */
    bool direct;       /* the inputs can be the plan's models as they are */
    bool base_is_model;/* MEMBER role: the plan base is also a model */
    long n_layers_in, n_layers_out; /* -1 when unknown */
    bool renumbered;   /* output layer count differs from the base's */
};

/* Builds the layout; on error prints a message naming the config line and
 * returns -1. */
int lmerge_layout_build(const struct lmerge_config *c, const char *path,
                        const struct lmerge_method *m,
                        const struct lmerge_inputs *in,
                        struct lmerge_layout *out);
void lmerge_layout_free(struct lmerge_layout *l);

/* The input index of a config reference, or (size_t)-1. */
size_t lmerge_inputs_find(const struct lmerge_inputs *in, const char *ref);

/* Splits a tensor name at its layer number ("model.layers.7.mlp..." ->
 * prefix length 13, index 7, suffix ".mlp..."). Returns false for a
 * tensor outside the layer stack. */
bool lmerge_layer_split(const char *name, size_t *prefix_len, long *index,
                        const char **suffix);

#endif
