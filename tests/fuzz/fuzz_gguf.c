/* lm_gguf_read / lm_gguf_read_lora on arbitrary bytes; whatever loads is
 * written back as GGUF (carrying its key/values) and read again. */
#include <stdio.h>
#include <unistd.h>

#include "fuzz_util.h"
#include "libmerge.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lm_context *ctx = fuzz_context();
    if (!ctx)
        return 0;
    const char *path = fuzz_write_temp(data, size, ".gguf");
    lm_model *m = NULL;
    if (lm_gguf_read(ctx, path, &m) == LM_OK) {
        char out[256];
        snprintf(out, sizeof(out), "/tmp/lm_fuzz_%d_out.gguf", (int)getpid());
        lm_gguf_options go = LM_GGUF_OPTIONS_INIT;
        go.kv_from = m;
        lm_model *again = NULL;
        if (lm_gguf_write(ctx, m, out, &go) == LM_OK) {
            if (lm_gguf_read(ctx, out, &again) != LM_OK ||
                lm_model_count(again) != lm_model_count(m))
                __builtin_trap(); /* what we write must read back */
            lm_model_destroy(again);
            unlink(out);
        }
        lm_model_destroy(m);
    }
    lm_lora *l = NULL;
    if (lm_gguf_read_lora(ctx, path, &l) == LM_OK)
        lm_lora_destroy(l);
    lm_context_destroy(ctx);
    return 0;
}
