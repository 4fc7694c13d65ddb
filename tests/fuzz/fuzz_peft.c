/* lm_peft_read with arbitrary bytes as adapter_config.json next to a fixed,
 * valid adapter_model.safetensors (one rank-2 pair for module "q"). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_util.h"
#include "libmerge.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *adapter_dir(lm_context *ctx)
{
    static char dir[128]; /* one fuzzing process, one thread */
    if (dir[0])
        return dir;
    snprintf(dir, sizeof(dir), "/tmp/lm_fuzz_peft_%d", (int)getpid());
    mkdir(dir, 0700);
    lm_model *m;
    lm_tensor *a, *b;
    if (lm_model_create(ctx, &m) ||
        lm_tensor_create(ctx, LM_F32, 2, (int64_t[]){2, 4}, &a) ||
        lm_model_add(m, "base_model.model.q.lora_A.weight", a) ||
        lm_tensor_create(ctx, LM_F32, 2, (int64_t[]){4, 2}, &b) ||
        lm_model_add(m, "base_model.model.q.lora_B.weight", b))
        abort();
    char path[256];
    snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
    if (lm_safetensors_write(ctx, m, path, NULL) != LM_OK)
        abort();
    lm_model_destroy(m);
    return dir;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lm_context *ctx = fuzz_context();
    if (!ctx)
        return 0;
    const char *dir = adapter_dir(ctx);
    char path[256];
    snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size))
        abort();
    fclose(f);
    lm_lora *l = NULL;
    if (lm_peft_read(ctx, dir, &l) == LM_OK)
        lm_lora_destroy(l);
    lm_context_destroy(ctx);
    return 0;
}
