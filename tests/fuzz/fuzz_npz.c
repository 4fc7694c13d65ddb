/* lm_npz_read on arbitrary bytes; whatever loads is written back (stored
 * and deflated) and must read back with the same tensor count. */
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
    lm_model *m = NULL;
    if (lm_npz_read(ctx, fuzz_write_temp(data, size, ".npz"), &m) == LM_OK) {
        char out[256];
        snprintf(out, sizeof(out), "/tmp/lm_fuzz_%d_out.npz", (int)getpid());
        for (int compress = 0; compress < 2; compress++) {
            lm_npz_options no = LM_NPZ_OPTIONS_INIT;
            no.compress = compress;
            lm_model *again = NULL;
            if (lm_npz_write(ctx, m, out, &no) == LM_OK) {
                if (lm_npz_read(ctx, out, &again) != LM_OK ||
                    lm_model_count(again) != lm_model_count(m))
                    __builtin_trap(); /* what we write must read back */
                lm_model_destroy(again);
                unlink(out);
            }
        }
        lm_model_destroy(m);
    }
    lm_context_destroy(ctx);
    return 0;
}
