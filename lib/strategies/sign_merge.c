/* Magnitude trimming, DARE masks and TIES sign election. */
#include <math.h>
#include <string.h>

#include "core/select.h"
#include "core/simd.h"
#include "strategies/sign_merge.h"

size_t lm__density_count(double density, size_t n)
{
    size_t k = (size_t)floor(density * (double)n);
    return n == 0 ? 0 : (k < 1 ? 1 : k > n ? n : k);
}

void lm__keep_top_k(float *x, size_t n, size_t k, float *scratch)
{
    if (k >= n)
        return;
    if (k == 0) {
        memset(x, 0, n * sizeof(float));
        return;
    }
    for (size_t i = 0; i < n; i++)
        scratch[i] = fabsf(x[i]);
    float threshold = lm__kth_largest(scratch, n, k);
    size_t above = 0;
    for (size_t i = 0; i < n; i++)
        above += fabsf(x[i]) > threshold;
    size_t ties_left = k - above;
    for (size_t i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > threshold)
            continue;
        if (a == threshold && ties_left) {
            ties_left--;
            continue;
        }
        x[i] = 0.0f;
    }
}

void lm__dare_mask(float *x, size_t n, double density, bool rescale,
                   uint64_t seed, size_t task)
{
    lm__simd_pick()->dare_mask_at(x, n, 0, density, rescale, seed, task);
}

void lm__sign_merge(const float *const *tasks, const double *weights,
                    size_t n_tasks, size_t n, const struct lm__sign_merge_opts *o,
                    float *out)
{
    lm__simd_pick()->sign_merge(tasks, weights, n_tasks, n, o, out);
}

lm_status lm__sign_merge_params(const lm_params *p,
                                struct lm__sign_merge_opts *o)
{
    const char *consensus, *divide;
    int in_election;
    LM_TRY(lm_params_get_choice(p, "consensus", &consensus));
    LM_TRY(lm_params_get_choice(p, "divide", &divide));
    LM_TRY(lm_params_get_bool(p, "weights_in_election", &in_election));
    o->consensus = strcmp(consensus, "count") ? LM_CONSENSUS_SUM
                                              : LM_CONSENSUS_COUNT;
    o->divide = !strcmp(divide, "weights") ? LM_DIVIDE_WEIGHTS
                : !strcmp(divide, "none")    ? LM_DIVIDE_NONE
                                             : LM_DIVIDE_COUNT;
    o->weights_in_election = in_election != 0;
    return LM_OK;
}
