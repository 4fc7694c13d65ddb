/* GGUF header layout used by the file sink. */
#ifndef LM_IO_GGUF_WRITE_H
#define LM_IO_GGUF_WRITE_H

#include "core/internal.h"

struct lm__gguf_layout_in {
    const lm_tensor_desc *outputs;
    size_t n;
    const lm_model *kv_from;          /* may be NULL */
    const char *const *meta_keys, *const *meta_values;
    size_t n_meta;
    uint32_t alignment;               /* 0: 32 */
    /* Each tensor's stored ggml type and bytes; NULL: its dtype's and
     * nbytes. */
    const uint32_t *types;
    const uint64_t *sizes;
};

/* The header bytes (caller frees with lm_free), each tensor's absolute
 * offset, and the total file length (data padded to the alignment). */
lm_status lm__gguf_layout(lm_context *ctx, const struct lm__gguf_layout_in *in,
                          unsigned char **header, size_t *header_len,
                          uint64_t *offsets, uint64_t *file_len);

#endif
