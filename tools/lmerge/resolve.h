/* A config's parameters evaluated for every output tensor and plan model
 * the way mergekit's ConfigReader does (mergekit/config.py): for a
 * per-model parameter the model's own entry (its slice source), then the
 * slice's `parameters`, then the top-level `parameters`, then mergekit's
 * default; merge-wide parameters skip the first step. Gradients are read
 * at the tensor's layer position and filters against its name (the
 * input's tensor name for per-model values, as mergekit). The values are
 * then translated to the strategy's parameters and set on the plan. */
#ifndef LMERGE_RESOLVE_H
#define LMERGE_RESOLVE_H

#include <stdio.h>

#include "layout.h"

#define LMERGE_ALL ((size_t)-1)

/* One libmerge parameter for one plan model (or every model), over the
 * output tensors. */
struct lmerge_value {
    const char *name;   /* libmerge parameter name */
    const char *mk_name;/* the mergekit parameter it comes from */
    size_t model;       /* plan model index or LMERGE_ALL */
    const char *text;   /* a choice / string value (uniform), or NULL */
    double *v;          /* per output tensor */
    bool uniform;
    int line;           /* where the value came from (0: a default) */
};

struct lmerge_resolved {
    struct lmerge_value *vals;
    size_t n;
    char fixed[256];    /* the method's fixed libmerge parameters */
};

/* Evaluates every parameter; prints the error naming the line and returns
 * -1 on failure. */
int lmerge_resolve(const struct lmerge_config *c, const char *path,
                   const struct lmerge_layout *l, struct lmerge_resolved *r);
void lmerge_resolved_free(struct lmerge_resolved *r);

/* The weight of plan model j for output tensor 0 (the weight models are
 * added with); 1 when the method has none. */
double lmerge_resolved_weight(const struct lmerge_resolved *r, size_t j);

/* Sets everything on the plan (models already added). */
int lmerge_resolved_apply(lm_context *ctx, lm_plan *plan,
                          const struct lmerge_layout *l,
                          const struct lmerge_resolved *r, const char *path);

/* The --dry-run summary of the values. */
void lmerge_resolved_print(FILE *f, const struct lmerge_layout *l,
                           const struct lmerge_resolved *r);

#endif
