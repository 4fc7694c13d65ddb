/* Runtime dispatch for the hot element loops of the fused paths. Not
 * installed.
 *
 * LM_VECTOR_CLONES before a function has GCC build it three times (the
 * baseline x86-64, x86-64-v3 = AVX2, x86-64-v4 = AVX-512) and pick one
 * when the library loads (an ifunc): the baseline keeps the library
 * running on any x86-64, while DARE's 64-bit hash (no 64-bit vector
 * multiply before AVX-512) and the 256/512-bit loops pay on newer cores.
 *
 * Every clone is the same C, so the same bits: the marked loops are
 * element by element (integer operations, or IEEE-rounded f32/f64
 * operations in source order: no reassociation, and no contraction into
 * FMA, which the library's -ffp-contract=off rules out); a wider vector
 * only runs more elements at once. Elsewhere (clang, other targets,
 * builds without optimisation) the macro is empty and the one function
 * is the baseline. Mark only static functions over whole blocks: a
 * clone is reached through an indirect call and is never inlined, and
 * GCC exports the dispatcher of a global one whatever its visibility (an
 * internal function calls its static clones from a plain wrapper). */
#ifndef LM_CORE_VECTOR_CLONES_H
#define LM_CORE_VECTOR_CLONES_H

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) &&       \
    defined(__linux__) && defined(__OPTIMIZE__) && __GNUC__ >= 11
#define LM_VECTOR_CLONES                                                     \
    __attribute__((target_clones("default", "arch=x86-64-v3",                \
                                 "arch=x86-64-v4")))
/* Hand-written AVX-512 kernels may be built too (chosen at run time by
 * __builtin_cpu_supports, beside a portable loop of the same result). */
#define LM_VECTOR_AVX512 1
#else
#define LM_VECTOR_CLONES
#endif

#endif
