/* The element loops of DARE's mask, the sign-elected merge and the
 * weighted sum (strategies/sign_merge.h), built once per instruction set
 * (core/simd.h): DARE's 64-bit hash has no 64-bit vector multiply before
 * AVX-512, and the f64 sums run 4 or 8 lanes wide on wider sets. */
#include <math.h>

#include "core/context_private.h"
#include "strategies/sign_kernels.h"

void LM_SIMD(lm__dare_mask_kernel)(float *x, size_t len, size_t offset,
                                   double density, bool rescale,
                                   uint64_t seed, size_t task)
{
    uint64_t stream = lm__mix64_inline(seed ^ lm__mix64_inline(0xda3e0000ULL + task));
    float scale = rescale ? (float)(1.0 / density) : 1.0f;
    /* An entry is kept when its draw u = m / 2^53 (m: the top 53 bits of
     * a 64-bit hash) is below density. m / 2^53 and density * 2^53 are
     * exact, so u < density exactly when the integer m < ceil(density *
     * 2^53): the same draws, with no integer-to-double conversion. */
    uint64_t below = (uint64_t)ceil(density * 9007199254740992.0);
    for (size_t j = 0; j < len; j++) {
        /* The draw depends on the element's index in the whole tensor. */
        uint64_t i = offset + j;
        uint64_t m = lm__mix64_inline(stream ^ lm__mix64_inline(i)) >> 11;
        x[j] = m < below ? x[j] * scale : 0.0f;
    }
}

/* Elements per step of lm__sign_merge: its per-element sums stay on the
 * stack and every loop runs over elements, so that it vectorises. */
#define SIGN_STEP 256

void LM_SIMD(lm__sign_merge_kernel)(const float *const *tasks,
                                    const double *weights, size_t n_tasks,
                                    size_t n,
                                    const struct lm__sign_merge_opts *o,
                                    float *out)
{
    bool wie = o->weights_in_election;
    bool count = o->consensus == LM_CONSENSUS_COUNT;
    bool by_weight = o->divide == LM_DIVIDE_WEIGHTS;
    double vote[SIGN_STEP], num[SIGN_STEP], den[SIGN_STEP];
    for (size_t i0 = 0; i0 < n; i0 += SIGN_STEP) {
        size_t len = n - i0 < SIGN_STEP ? n - i0 : SIGN_STEP;
        /* Per element, tasks are summed in order t = 0, 1, ...; a skipped
         * term adds +0.0, which leaves every sum as it was (a sum started
         * at +0.0 is never -0.0). */
        for (size_t j = 0; j < len; j++)
            vote[j] = num[j] = den[j] = 0.0;
        for (size_t t = 0; t < n_tasks; t++) {
            const float *x = tasks[t] + i0;
            /* v * 1.0 is v exactly: one loop for both election inputs. */
            double ew = wie ? weights[t] : 1.0;
            if (count)
                for (size_t j = 0; j < len; j++) {
                    double v = x[j] * ew;
                    vote[j] += (v > 0 ? 1.0 : 0.0) - (v < 0 ? 1.0 : 0.0);
                }
            else
                for (size_t j = 0; j < len; j++)
                    vote[j] += x[j] * ew;
        }
        for (size_t t = 0; t < n_tasks; t++) {
            const float *x = tasks[t] + i0;
            double w = weights[t], unit = by_weight ? w : 1.0;
            double ew = wie ? w : 1.0;
            for (size_t j = 0; j < len; j++) {
                double v = x[j];
                /* Agreement is judged on the values that voted; a tie
                 * elects +, as mergekit does. */
                double a = v * ew;
                double agree = ((a > 0) & (vote[j] >= 0)) |
                                       ((a < 0) & (vote[j] < 0))
                                   ? 1.0
                                   : 0.0;
                /* 0 * (w * v) is +-0.0: the sum is unchanged. */
                num[j] += agree * (w * v);
                den[j] += agree * unit;
            }
        }
        /* No agreeing task leaves num = 0; weights that cancel divide by
         * 1 (mergekit's divisor rule). */
        if (o->divide == LM_DIVIDE_NONE)
            for (size_t j = 0; j < len; j++)
                out[i0 + j] = (float)num[j];
        else /* x / 1.0 is x exactly */
            for (size_t j = 0; j < len; j++)
                out[i0 + j] = (float)(num[j] / (den[j] == 0.0 ? 1.0 : den[j]));
    }
}

/* Elements per step of the weighted sum: the sums stay on the stack and the
 * loops run over elements (vectorised), tasks added in order per element. */
#define SUM_STEP 256

void LM_SIMD(lm__weighted_sum_kernel)(const float *const *rows,
                                      const double *weights, size_t n_tasks,
                                      size_t n, double lambda, double div,
                                      float *out)
{
    double acc[SUM_STEP];
    for (size_t i0 = 0; i0 < n; i0 += SUM_STEP) {
        size_t len = n - i0 < SUM_STEP ? n - i0 : SUM_STEP;
        for (size_t j = 0; j < len; j++)
            acc[j] = 0.0;
        for (size_t t = 0; t < n_tasks; t++) {
            const float *x = rows[t] + i0;
            double w = weights[t];
            for (size_t j = 0; j < len; j++)
                acc[j] += w * (double)x[j];
        }
        for (size_t j = 0; j < len; j++)
            out[i0 + j] = (float)(lambda * (acc[j] / div));
    }
}

