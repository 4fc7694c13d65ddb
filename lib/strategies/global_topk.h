/* A whole-model magnitude threshold per task, as the official TIES and
 * KnOTS code trims (github.com/prateeksr/TIES-Merging topk_values_mask,
 * github.com/gstoica27/KnOTS masking_ops.py): every value of task t over
 * the model flattened into one vector of length d, threshold = the
 * (d - floor(density_t d))-th smallest magnitude (torch.kthvalue), and an
 * entry is kept when |x| >= threshold (every tie at the threshold kept).
 *
 * Found exactly without holding the model: the magnitudes' f32 bit
 * patterns order like the values, so two prepare passes of a radix
 * selection suffice: pass 0 counts the high 16 bits, which fixes the
 * bucket holding the threshold; pass 1 counts the low 16 bits inside that
 * bucket. O(d) time, 512 KiB per task, integer counts (the same result
 * for any thread count and tensor order). */
#ifndef LM_STRATEGIES_GLOBAL_TOPK_H
#define LM_STRATEGIES_GLOBAL_TOPK_H

#include <pthread.h>

#include "strategies/builtin.h"

/* The two prepare passes it needs. */
#define LM__GLOBAL_TOPK_PASSES 2u

struct lm__global_topk {
    size_t n_tasks;
    unsigned pass;         /* the pass being run: 0, 1, then 2 (done)     */
    pthread_mutex_t lock;  /* guards hist and count during a pass         */
    uint64_t *hist;        /* n_tasks x 65536 counts                      */
    uint64_t *count;       /* n_tasks: values seen in pass 0 (d)          */
    uint32_t *bucket;      /* n_tasks: high half of the threshold         */
    uint64_t *rank;        /* n_tasks: its 1-based rank inside the bucket */
    bool *keep_all;        /* n_tasks: nothing is trimmed                 */
    float *threshold;      /* n_tasks: keep |x| >= threshold              */
};

lm_status lm__global_topk_init(lm_context *ctx, struct lm__global_topk *g,
                               size_t n_tasks);
void lm__global_topk_free(lm_context *ctx, struct lm__global_topk *g);

/* Count task t's n values x in the current pass (thread-safe; x must be
 * finite). */
lm_status lm__global_topk_add(lm_context *ctx, struct lm__global_topk *g,
                              size_t t, const float *x, size_t n);

/* End of the current pass. After pass 0 `density` (n_tasks fractions in
 * (0, 1]) fixes each task's rank. */
void lm__global_topk_pass_done(struct lm__global_topk *g,
                               const double *density);

/* Zero task t's entries of x below its threshold (after both passes). */
void lm__global_topk_trim(const struct lm__global_topk *g, size_t t, float *x,
                          size_t n);

#endif
