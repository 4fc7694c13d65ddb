/* Choosing a kernel build (core/simd.h). */
#include <stdlib.h>
#include <string.h>

#include "core/simd.h"

extern const struct lm__simd lm__simd_table_baseline;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define X86_BUILDS 1
extern const struct lm__simd lm__simd_table_avx2;
extern const struct lm__simd lm__simd_table_avx512;

static bool runs_avx512(void)
{
    return __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq");
}
#else
#define X86_BUILDS 0
#endif

const struct lm__simd *lm__simd_named(const char *name)
{
    if (!strcmp(name, "baseline"))
        return &lm__simd_table_baseline;
#if X86_BUILDS
    if (!strcmp(name, "avx2") && __builtin_cpu_supports("avx2"))
        return &lm__simd_table_avx2;
    if (!strcmp(name, "avx512") && runs_avx512())
        return &lm__simd_table_avx512;
#endif
    return NULL;
}

/* LIBMERGE_SIMD (documented in docs/architecture.md) only narrows: a
 * build this processor cannot run, or an unknown name, gives the widest
 * it runs. */
const struct lm__simd *lm__simd_pick(void)
{
    const char *e = getenv("LIBMERGE_SIMD");
    const struct lm__simd *named = e ? lm__simd_named(e) : NULL;
    if (named)
        return named;
    const struct lm__simd *widest = NULL;
#if X86_BUILDS
    widest = lm__simd_named("avx512");
    if (!widest)
        widest = lm__simd_named("avx2");
#endif
    return widest ? widest : &lm__simd_table_baseline;
}
