/* `lmerge methods`: registered strategies with parameters and defaults. */
#include <math.h>
#include <stdio.h>

#include "commands.h"

static void print_range(const lm_param_desc *p)
{
    switch (p->type) {
    case LM_PARAM_CHOICE:
        printf("one of %s", p->choices);
        break;
    case LM_PARAM_STRING:
        printf("text, default empty");
        break;
    case LM_PARAM_BOOL:
        printf("bool, default %s", p->default_value != 0 ? "true" : "false");
        break;
    default:
        printf("%s, default %g", p->type == LM_PARAM_INT ? "int" : "float",
               p->default_value);
        if (isfinite(p->min_value) || isfinite(p->max_value))
            printf(", range [%g, %g]", p->min_value, p->max_value);
    }
}

int lmerge_methods(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    lm_context *ctx;
    if (lm_context_create(NULL, &ctx) != LM_OK) {
        fprintf(stderr, "lmerge: cannot create a context\n");
        return 1;
    }
    for (size_t i = 0; i < lm_strategy_count(ctx); i++) {
        const lm_strategy_vtable *vt = lm_strategy_at(ctx, i);
        printf("%s - %s\n", vt->name, vt->description ? vt->description : "");
        for (size_t j = 0; j < vt->n_params; j++) {
            const lm_param_desc *p = &vt->params[j];
            printf("    %-20s ", p->name);
            print_range(p);
            if (p->flags & (LM_PARAM_PER_TENSOR | LM_PARAM_PER_MODEL))
                printf("; per %s",
                       (p->flags & LM_PARAM_PER_TENSOR) &&
                               (p->flags & LM_PARAM_PER_MODEL)
                           ? "tensor and model"
                           : (p->flags & LM_PARAM_PER_TENSOR) ? "tensor"
                                                              : "model");
            if (p->help)
                printf("\n    %-20s %s", "", p->help);
            printf("\n");
        }
    }
    lm_context_destroy(ctx);
    return 0;
}
