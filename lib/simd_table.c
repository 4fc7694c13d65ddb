/* One build's kernels as core/simd.h's table (compiled with each
 * instruction set's flags, like every kernel source). Outside lib/core:
 * it names the strategies' kernels, which the core may not include. */
#include "core/fused_private.h"
#include "core/sparse_kernels.h"
#include "strategies/sign_kernels.h"

#define STR2(x) #x
#define STR(x) STR2(x)

const struct lm__simd LM_SIMD(lm__simd_table) = {
    .name = STR(LM_SIMD_ISA),
    .fused_narrow = LM_SIMD(lm__fused_narrow),
    .any_nonfinite_f32 = LM_SIMD(lm__sk_any_nonfinite_f32),
    .bf16_to_f32 = LM_SIMD(lm__sk_bf16_to_f32),
    .f32_to_bf16 = LM_SIMD(lm__sk_f32_to_bf16),
    .sub = LM_SIMD(lm__sk_sub),
    .delta_bf16 = LM_SIMD(lm__sk_delta_bf16),
    .delta_f32 = LM_SIMD(lm__sk_delta_f32),
    .add = LM_SIMD(lm__sk_add),
    .scale = LM_SIMD(lm__sk_scale),
    .count = LM_SIMD(lm__sk_count),
    .band = LM_SIMD(lm__sk_band),
    .count_band = LM_SIMD(lm__sk_count_band),
    .count_eq = LM_SIMD(lm__sk_count_eq),
    .trim = LM_SIMD(lm__sk_trim),
    .l1_block = LM_SIMD(lm__sk_l1_block),
    .dare_mask_at = LM_SIMD(lm__dare_mask_kernel),
    .sign_merge = LM_SIMD(lm__sign_merge_kernel),
    .weighted_sum = LM_SIMD(lm__weighted_sum_kernel),
};
