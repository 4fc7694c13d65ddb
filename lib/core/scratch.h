/* Work buffers a context keeps between uses. Not installed.
 *
 * Why: the fused paths take a buffer of about a megabyte per chunk of a
 * tensor and pass. Allocated and freed each time, malloc hands fresh
 * pages back to the kernel and faults them in again on the next use, and
 * a page fault is dear under virtualisation (ties with 8 models: 7 000
 * faults, about a tenth of the merge's CPU time). A few freed buffers are
 * kept instead, at most LM__SCRATCH_SLOTS of at most SCRATCH_MAX bytes,
 * until the context is destroyed.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LM_CORE_SCRATCH_H
#define LM_CORE_SCRATCH_H

#include <stddef.h>

#include "core/context_private.h"

/* A buffer of at least `size` bytes (a kept one when one fits, else
 * lm_alloc's), *got set to its size; NULL when out of memory. */
void *lm__scratch_take(lm_context *ctx, size_t size, size_t *got);
/* Back to the context (kept, or freed when there is no room): p from
 * lm__scratch_take with its *got. NULL is ignored. */
void lm__scratch_give(lm_context *ctx, void *p, size_t size);
/* Frees every kept buffer (context destruction). */
void lm__scratch_release(lm_context *ctx);

#endif
