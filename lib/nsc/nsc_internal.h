/* Internal layout of lm_nsc shared by nsc.c and spsa.c. */
#ifndef LM_NSC_INTERNAL_H
#define LM_NSC_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>

#include "core/internal.h"
#include "core/name_set.h"
#include "libmerge/experimental/nsc.h"
#include "linalg/linalg.h"

/* One task's adapter at one module, in f64. */
struct nsc_factor {
    size_t r;
    double scale;   /* s_k: alpha / r or alpha / sqrt(r) */
    double *a;      /* r x d_in; owns the block holding b and ginv */
    double *b;      /* d_out x r */
    double *ginv;   /* (A A^T + ridge I)^-1, r x r */
};

struct nsc_module {
    char *name;
    int64_t d_out, d_in;
    struct nsc_factor *tasks;  /* n_tasks; a == NULL: no adapter */
    /* n_tasks each, one block; centre: the trust region's */
    double *coef, *grad, *adam_m, *adam_v, *centre;
    bool frozen;
};

struct lm_nsc {
    lm_context *ctx;
    lm_nsc_options opts;
    size_t n_tasks, n_modules, cap;
    struct nsc_module *modules;
    struct lm__name_set names;  /* modules by name */
    uint64_t steps;             /* AdamW steps taken */
    pthread_mutex_t lock;       /* gradients and observations */
    bool lock_ready;
    double *obs, *obs_rows;     /* per task: sum of omega, rows observed */
};

lm_status lm__nsc_module(const lm_nsc *n, size_t i, struct nsc_module **m);
lm_status lm__nsc_check_task(const lm_nsc *n, size_t task, size_t module,
                             size_t d_in, const struct nsc_factor **f);
/* Sum of omega over rows; grad (may be NULL) gets grad_scale * d/dz. */
lm_status lm__nsc_ratio_sum(lm_context *ctx, const struct nsc_factor *f,
                            const float *z, size_t rows, size_t d,
                            double *sum, float *grad, double grad_scale);
/* AdamW on every unfrozen coefficient, then the safeguards' projection. */
void lm__nsc_adamw(lm_nsc *n, double lr);

#endif
