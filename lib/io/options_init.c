/* Option defaults of the file writers as functions, so bindings never
 * copy the C macros. */
#include "libmerge/file_sink.h"
#include "libmerge/gguf.h"
#include "libmerge/npz.h"

void lm_npz_options_init(lm_npz_options *options)
{
    if (options)
        *options = (lm_npz_options)LM_NPZ_OPTIONS_INIT;
}

void lm_gguf_options_init(lm_gguf_options *options)
{
    if (options)
        *options = (lm_gguf_options)LM_GGUF_OPTIONS_INIT;
}

void lm_safetensors_sink_options_init(lm_safetensors_sink_options *options)
{
    if (options)
        *options = (lm_safetensors_sink_options)LM_SAFETENSORS_SINK_OPTIONS_INIT;
}
