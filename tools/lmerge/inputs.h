/* Opening a config's inputs (every distinct model reference once, the
 * base first) and, when the output is not the base's tensor list as is
 * (slices, MODEL+LORA references), the per-slot models the plan merges:
 * lazy tensors reading the right tensor of the right input. */
#ifndef LMERGE_INPUTS_H
#define LMERGE_INPUTS_H

#include "layout.h"

/* Opens every reference; prints the error (naming the config line) and
 * returns -1 on failure. The base, when given, is input 0. */
int lmerge_inputs_open(lm_context *ctx, const struct lmerge_config *c,
                       const char *path, struct lmerge_inputs *in);
void lmerge_inputs_close(struct lmerge_inputs *in);

/* The plan's base and models for a layout: the inputs themselves when
 * layout->direct, else lazy slot models (owned by *views). */
struct lmerge_views {
    lm_model *base;
    lm_model **models;  /* layout->n_models */
    lm_lora **adapters; /* models[j] NULL and adapters[j] set: a LoRA input */
    lm_model **owned;   /* slot models to destroy */
    size_t n_owned;
    void *readers;
};
int lmerge_views_build(lm_context *ctx, const struct lmerge_layout *l,
                       const struct lmerge_inputs *in,
                       struct lmerge_views *v);
void lmerge_views_free(struct lmerge_views *v);

#endif
