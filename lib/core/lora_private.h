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

/* One target's factors as f32 (the adapter's A [r, in] and B [out, r]),
 * read once per tensor so that its update can be formed a row block at a
 * time. */
struct lm__lora_factors {
    float *a, *b; /* one allocation, at a */
    size_t r, in, out;
    size_t rows, cols; /* of the update: [out, in], or [in, out] transposed */
    float scale;
    bool transposed;
};

/* Rows of the update formed per sgemm call: the plain path
 * (lm__lora_delta) and the fused path (core/fused.c) use the same row
 * blocks, so that both make the same BLAS calls and agree bit for bit. */
size_t lm__lora_block_rows(size_t cols);

/* `name`'s factors of adapter `m` (named in errors) checked against the
 * base's shape; *found = false, and nothing allocated, when the adapter
 * does not target `name`. */
lm_status lm__lora_factors_load(lm_context *ctx, const lm_lora *l, size_t m,
                                const char *name, const lm_tensor *base,
                                struct lm__lora_factors *f, bool *found);
void lm__lora_factors_free(lm_context *ctx, struct lm__lora_factors *f);

/* Rows [r0, r0 + n) of the update, [n, cols], into out. */
void lm__lora_rows(const struct lm__lora_factors *f, size_t r0, size_t n,
                   float *out);

/* The entry of `l` for `target`, or NULL. */
const struct lm_lora_entry *lm__lora_entry(const lm_lora *l,
                                           const char *target);

/* delta = scale * B A of the adapter's factors for `name` (zero when the
 * adapter does not target it); `m` names the adapter in errors. */
lm_status lm__lora_delta(lm_context *ctx, const lm_lora *l, size_t m,
                         const char *name, const lm_tensor *base,
                         float *delta);

#endif /* LM_CORE_LORA_PRIVATE_H */
