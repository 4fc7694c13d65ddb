/* Tied input/output embeddings stored twice in model files. */
#ifndef LMERGE_TIES_H
#define LMERGE_TIES_H

#include "libmerge.h"

/* lm_plan_tie each known (head, embedding) pair that is identical in the
 * base and every model (n models; adapters[m] non-NULL where model m is an
 * adapter). Returns -1 after printing the error. */
int lmerge_tie_embeddings(lm_context *ctx, lm_plan *plan, const lm_model *base,
                          lm_model *const *models, lm_lora *const *adapters,
                          size_t n, int quiet);

#endif
