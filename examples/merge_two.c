/* Merge two fine-tuned models into their base with task arithmetic. */
#include <stdio.h>
#include <libmerge.h>

int main(void)
{
    float base[4] = {1, 2, 3, 4}, ft_a[4] = {2, 2, 3, 4}, ft_b[4] = {1, 2, 3, 6};
    float *weights[3] = {base, ft_a, ft_b};
    int64_t shape[2] = {2, 2};
    lm_context *ctx;
    lm_context_create(NULL, &ctx);
    lm_model *models[3];
    for (int i = 0; i < 3; i++) {           /* wrap caller memory, no copy */
        lm_tensor *t;
        lm_model_create(ctx, &models[i]);
        lm_tensor_wrap(ctx, LM_F32, 2, shape, weights[i], sizeof(base), &t);
        lm_model_add(models[i], "layer.weight", t);
    }
    lm_plan *plan;
    lm_plan_create(ctx, "task_arithmetic", &plan);
    lm_plan_set_float(plan, "lambda", 0.5);
    lm_plan_set_base(plan, models[0]);
    lm_plan_add_model(plan, models[1], 1.0);
    lm_plan_add_model(plan, models[2], 1.0);
    lm_model *merged;
    if (lm_plan_execute(plan, &merged) != LM_OK) {
        fprintf(stderr, "merge failed: %s\n", lm_context_error(ctx));
        return 1;
    }
    const float *w = lm_tensor_cdata(lm_model_at(merged, 0));
    printf("merged: %g %g %g %g\n", w[0], w[1], w[2], w[3]); /* 1.5 2 3 5 */
    lm_model_destroy(merged);
    lm_plan_destroy(plan);
    for (int i = 0; i < 3; i++)
        lm_model_destroy(models[i]);
    lm_context_destroy(ctx);
    return 0;
}
