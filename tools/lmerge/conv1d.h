/* Weights an architecture stores transposed (GPT-2's Conv1D). */
#ifndef LMERGE_CONV1D_H
#define LMERGE_CONV1D_H

#include "libmerge.h"

/* Flag the base's transposed weights on the plan, by the model_type of the
 * config.json beside base_path (a model reference, "+lora" allowed).
 * Returns -1 after printing an error. */
int lmerge_set_layouts(lm_context *ctx, lm_plan *plan, const char *base_path,
                       const lm_model *base, int quiet);

#endif
