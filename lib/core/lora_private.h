/* LoRA adapters: private layout and the dense update of one target.
 * Not installed.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LM_CORE_LORA_PRIVATE_H
#define LM_CORE_LORA_PRIVATE_H

#include "core/name_set.h"
#include "core/tensor_private.h"
#include "libmerge/lora.h"

struct lm_lora_entry {
    char *target;
    lm_tensor *a, *b;
    double scale;
    bool transposed; /* target stored [in, out]: the update is (B A)^T */
};

struct lm_lora {
    lm_context *ctx;
    struct lm_lora_entry *entries;
    size_t count, cap;
    struct lm__name_set targets; /* entries by target */
};

/* delta = scale * B A of the adapter's factors for `name` (zero when the
 * adapter does not target it); `m` names the adapter in errors. */
lm_status lm__lora_delta(lm_context *ctx, const lm_lora *l, size_t m,
                         const char *name, const lm_tensor *base,
                         float *delta);

#endif /* LM_CORE_LORA_PRIVATE_H */
