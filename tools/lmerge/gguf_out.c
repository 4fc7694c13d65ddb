/* How `lmerge run` stores a GGUF output. A GGUF base gives a GGUF output
 * (lm_file_sink_create_for), where tensors dequantized from a quantized
 * base are written F16 by default; the config's `gguf_type: q8_0` (or
 * --gguf-type) writes 2-D weights as Q8_0 instead, and an explicit
 * dtype/out_dtype writes every tensor in that dtype. */
#include <stdio.h>
#include <string.h>

#include "commands.h"

int lmerge_gguf_sink(lm_context *ctx, const char *dir, const lm_model *base,
                     const char *gguf_type, bool dtype_given,
                     const char *const *keys, const char *const *values,
                     size_t n_meta, lm_file_sink **sink)
{
    bool gguf_base = lm_model_count(base) > 0 &&
                     lm_gguf_tensor_type(base, lm_model_name_at(base, 0));
    bool q8_0 = false;
    if (gguf_type && (!strcmp(gguf_type, "q8_0") ||
                      !strcmp(gguf_type, "Q8_0"))) {
        q8_0 = true;
    } else if (gguf_type && strcmp(gguf_type, "auto") != 0) {
        fprintf(stderr, "lmerge run: gguf_type '%s' is not one of auto, "
                "q8_0\n", gguf_type);
        return -1;
    }
    if (q8_0 && !gguf_base) {
        fprintf(stderr, "lmerge run: gguf_type '%s' needs a GGUF base_model "
                "(the output takes the base's format)\n", gguf_type);
        return -1;
    }
    if (!gguf_base || (!q8_0 && !dtype_given))
        return 0; /* the format's default (lm_file_sink_create_for) */
    lm_gguf_store store = q8_0 ? LM_GGUF_STORE_Q8_0 : LM_GGUF_STORE_DTYPE;
    char path[4096];
    if ((size_t)snprintf(path, sizeof(path), "%s/model.gguf", dir) >=
        sizeof(path)) {
        fprintf(stderr, "lmerge run: output path too long\n");
        return -1;
    }
    lm_gguf_options go;
    lm_gguf_options_init(&go);
    go.kv_from = base;
    go.metadata_keys = keys;
    go.metadata_values = values;
    go.n_metadata = n_meta;
    go.store = store;
    if (lm_gguf_sink_create(ctx, path, &go, sink) != LM_OK) {
        fprintf(stderr, "lmerge run: %s\n", lm_context_error(ctx));
        return -1;
    }
    return 1;
}
