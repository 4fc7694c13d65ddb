/* libmerge: PEFT LoRA adapter directories.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LIBMERGE_PEFT_H
#define LIBMERGE_PEFT_H

#include "libmerge/lora.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Read a PEFT LoRA adapter directory (adapter_config.json and
 * adapter_model.safetensors) as factored task vectors. Keys
 * "base_model.model.<module>.lora_A.weight" [r, in] and ".lora_B.weight"
 * [out, r] become the update of base tensor "<module>.weight" with scale
 * alpha / r (alpha / sqrt(r) with use_rslora), where r and alpha come from
 * rank_pattern / alpha_pattern when a pattern matches the module (PEFT's
 * rule: the key matches the end of the module name at a '.' boundary, as
 * a regular expression) and from r / lora_alpha otherwise. The factors are
 * copied (they are small); the files are not kept open.
 * Errors: LM_ERR_IO (missing files), LM_ERR_FORMAT (malformed config,
 * unpaired or unknown keys, a factor's rank disagreeing with the config;
 * messages name the file and key), LM_ERR_UNSUPPORTED (DoRA, embedding
 * LoRA, modules_to_save, non-LORA peft_type, adapter_model.bin). */
LM_API lm_status lm_peft_read(lm_context *ctx, const char *dir,
                              lm_lora **out);

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_PEFT_H */
