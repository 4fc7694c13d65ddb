/* lm__sign_merge (lib/strategies/sign_merge.c, compiled with
 * -fno-trapping-math so that its loops vectorise) against a branchy
 * scalar reference written here from the method's definition (TIES,
 * Yadav et al. 2023, with mergekit's options): per element, elect the
 * sign of the (weighted) sum or of the majority of the task values (a tie
 * elects +), then sum w_t x_t in f64 in task order over the tasks whose
 * (election-weighted) value is non-zero with that sign and divide by
 * their count, their weights (a zero sum divides by 1) or nothing.
 * Tolerance: 0 ulps (compared as bits) — the function documents that
 * order, and the compiler flag must not change a value. Inputs hold
 * signed zeros, exact vote ties, zero and negative weights, and lengths
 * around the kernel's 256-element steps. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "strategies/sign_merge.h"
#include "testutil.h"

#define MAX_N 1000
#define K 4

static float reference(const float *const *x, const double *w, size_t k,
                       size_t i, const struct lm__sign_merge_opts *o)
{
    double vote = 0.0;
    for (size_t t = 0; t < k; t++) {
        double a = (double)x[t][i] * (o->weights_in_election ? w[t] : 1.0);
        if (o->consensus == LM_CONSENSUS_COUNT) {
            if (a > 0)
                vote += 1.0;
            else if (a < 0)
                vote -= 1.0;
        } else {
            vote += a;
        }
    }
    bool positive = vote >= 0;
    double num = 0.0, den = 0.0;
    for (size_t t = 0; t < k; t++) {
        double a = (double)x[t][i] * (o->weights_in_election ? w[t] : 1.0);
        if ((positive && a > 0) || (!positive && a < 0)) {
            num += w[t] * (double)x[t][i];
            den += o->divide == LM_DIVIDE_WEIGHTS ? w[t] : 1.0;
        }
    }
    if (o->divide == LM_DIVIDE_NONE)
        return (float)num;
    return (float)(num / (den == 0.0 ? 1.0 : den));
}

/* Values from a small set so that zeros of both signs, equal magnitudes
 * and cancelling votes are common. */
static float pick(uint64_t *s)
{
    static const float v[] = {0.0f, -0.0f, 0.5f, -0.5f, 0.25f, -0.25f,
                              1.5f, -1.0f, 3e-5f, -7e-3f, 0.1f, -0.1f};
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return v[*s % (sizeof(v) / sizeof(v[0]))];
}

START_TEST(sign_merge_matches_reference)
{
    static const size_t lens[] = {1, 3, 255, 256, 257, 513, MAX_N};
    static const double weights[][K] = {
        {1.0, 1.0, 1.0, 1.0},
        {0.7, -0.2, 1.1, 0.0},
        {0.5, -0.5, 0.25, -0.25}, /* weights that cancel */
    };
    static float rows[K][MAX_N];
    float got[MAX_N];
    uint64_t s = 0x5eed;
    for (size_t t = 0; t < K; t++)
        for (size_t i = 0; i < MAX_N; i++)
            rows[t][i] = pick(&s);
    const float *x[K] = {rows[0], rows[1], rows[2], rows[3]};
    for (int c = 0; c < 2; c++)
        for (int d = 0; d < 3; d++)
            for (int e = 0; e < 2; e++)
                for (size_t wi = 0; wi < 3; wi++)
                    for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]);
                         li++) {
                        struct lm__sign_merge_opts o = {
                            .consensus = (enum lm__consensus)c,
                            .divide = (enum lm__divide)d,
                            .weights_in_election = e != 0,
                        };
                        size_t n = lens[li];
                        for (size_t k = 1; k <= K; k += K - 1) {
                            lm__sign_merge(x, weights[wi], k, n, &o, got);
                            for (size_t i = 0; i < n; i++) {
                                float want =
                                    reference(x, weights[wi], k, i, &o);
                                if (memcmp(&want, &got[i], sizeof(float)))
                                    ck_abort_msg(
                                        "consensus %d divide %d wie %d "
                                        "weights %zu n %zu k %zu: element "
                                        "%zu is %a, reference %a",
                                        c, d, e, wi, n, k, i, (double)got[i],
                                        (double)want);
                            }
                        }
                    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sign_merge");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, sign_merge_matches_reference);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
