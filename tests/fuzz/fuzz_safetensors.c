/* lm_safetensors_read on arbitrary bytes, then a merge of whatever loaded
 * (touching every tensor's data through the mapping). */
#include "fuzz_util.h"
#include "libmerge.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lm_context *ctx = fuzz_context();
    if (!ctx)
        return 0;
    lm_model *m = NULL;
    if (lm_safetensors_read(ctx, fuzz_write_temp(data, size, ".safetensors"),
                            &m) == LM_OK) {
        lm_plan *p = NULL;
        lm_model *out = NULL;
        if (lm_plan_create(ctx, "average", &p) == LM_OK &&
            lm_plan_set_base(p, m) == LM_OK &&
            lm_plan_add_model(p, m, 1.0) == LM_OK &&
            lm_plan_execute(p, &out) == LM_OK)
            lm_model_destroy(out);
        lm_plan_destroy(p);
        lm_model_destroy(m);
    }
    lm_context_destroy(ctx);
    return 0;
}
