/* The one dispatch of the library's vectorised loops. Not installed.
 *
 * Every kernel source listed in lib/meson.build's lm_simd_sources is
 * compiled once per instruction set (x86-64: baseline, AVX2, AVX-512; one
 * baseline build elsewhere). LM_SIMD(name) gives each build's functions
 * their own names, and each build's lib/simd_table.c gathers them into one
 * struct lm__simd. lm__simd_pick chooses a table at run time: the widest
 * the processor runs, or the one LIBMERGE_SIMD names (baseline, avx2,
 * avx512), so that tests run every build on one machine.
 *
 * Every build gives the same bits: the kernels are element by element,
 * integer operations or correctly rounded IEEE operations in source order
 * (no reassociation; no contraction into FMA, which -ffp-contract=off
 * rules out), and a wider vector only runs more elements at once. Works
 * under gcc and clang alike (plain per-file -m flags, no ifuncs).
 *
 * Callers pick a table once per tensor (or per call over a whole tensor)
 * and keep the pointer: reading the environment per block would cost
 * more than the smaller kernels. */
#ifndef LM_CORE_SIMD_H
#define LM_CORE_SIMD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "libmerge/common.h"

struct lm__fused;
struct lm__fused_view;
struct lm__fused_work;
struct lm__sign_merge_opts;

struct lm__simd {
    const char *name;
    /* core/fused_narrow.c: the linear merge of one block, no f64 input. */
    lm_status (*fused_narrow)(const struct lm__fused *f,
                              const struct lm__fused_view *io,
                              struct lm__fused_work *w, size_t lo, size_t len);
    /* core/sparse_kernels.c (see core/sparse_kernels.h for each). */
    bool (*any_nonfinite_f32)(const float *x, size_t n);
    void (*bf16_to_f32)(const uint16_t *src, float *dst, size_t n);
    void (*f32_to_bf16)(const float *src, uint16_t *dst, size_t n);
    void (*sub)(const float *x, const float *b, float *d, size_t len);
    bool (*delta_bf16)(const uint16_t *x, const float *b, float *d,
                       size_t len);
    bool (*delta_f32)(const float *x, const float *b, float *d, size_t len);
    void (*add)(const float *v, const float *b, float *o, size_t len);
    void (*scale)(float *x, size_t len, double scale);
    void (*count)(float *a, size_t len, float top, float bottom,
                  uint32_t c[4]);
    size_t (*band)(const float *a, size_t len, float bottom, float top,
                   float *out);
    size_t (*count_band)(float *d, size_t len, float top,
                         float bottom, uint32_t c[4], float *out);
    size_t (*count_eq)(const float *d, size_t len, float thr);
    void (*trim)(float *d, size_t len, float thr, bool keep_equal);
    double (*l1_block)(const float *x, size_t len);
    /* strategies/sign_kernels.c (strategies/sign_merge.h). */
    void (*dare_mask_at)(float *x, size_t len, size_t offset, double density,
                         bool rescale, uint64_t seed, size_t task);
    void (*sign_merge)(const float *const *tasks, const double *weights,
                       size_t n_tasks, size_t n,
                       const struct lm__sign_merge_opts *o, float *out);
    void (*weighted_sum)(const float *const *rows, const double *weights,
                         size_t n_tasks, size_t n, double lambda, double div,
                         float *out);
};

/* The table LIBMERGE_SIMD names when this processor runs it, else the
 * widest it runs. Reads the environment: call once per tensor. */
const struct lm__simd *lm__simd_pick(void);
/* The table of that name, or NULL when it is not built or this processor
 * cannot run it (tests compare every build). */
const struct lm__simd *lm__simd_named(const char *name);

/* Naming inside a kernel source: LM_SIMD(lm__sk_sub) is
 * lm__sk_sub_baseline, _avx2 or _avx512 by the build. */
#ifndef LM_SIMD_ISA
#define LM_SIMD_ISA baseline
#endif
#define LM_SIMD_CAT2(a, b) a##_##b
#define LM_SIMD_CAT(a, b) LM_SIMD_CAT2(a, b)
#define LM_SIMD(name) LM_SIMD_CAT(name, LM_SIMD_ISA)

#endif
