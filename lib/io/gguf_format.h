/* GGUF constants and the bounds-checked cursor shared by the GGUF reader
 * and writer (spec: ggml docs/gguf.md, version 3). */
#ifndef LM_IO_GGUF_FORMAT_H
#define LM_IO_GGUF_FORMAT_H

#include <stdbool.h>
#include <stdint.h>

#include "core/internal.h"

#define LM_GGUF_MAGIC 0x46554747u /* "GGUF" little-endian */
#define LM_GGUF_VERSION 3u
#define LM_GGUF_DEFAULT_ALIGNMENT 32u
#define LM_GGUF_MAX_DIMS 4

enum gguf_value_type {
    GGUF_U8 = 0, GGUF_I8 = 1, GGUF_U16 = 2, GGUF_I16 = 3, GGUF_U32 = 4,
    GGUF_I32 = 5, GGUF_F32 = 6, GGUF_BOOL = 7, GGUF_STRING = 8,
    GGUF_ARRAY = 9, GGUF_U64 = 10, GGUF_I64 = 11, GGUF_F64 = 12,
    GGUF_TYPE_COUNT = 13
};

enum ggml_type_id {
    GGML_F32 = 0, GGML_F16 = 1, GGML_F64 = 28, GGML_BF16 = 30
};

/* ggml type of a libmerge dtype and back (false when not representable). */
bool lm__gguf_from_dtype(lm_dtype d, uint32_t *ggml);
bool lm__gguf_to_dtype(uint32_t ggml, lm_dtype *d);
/* A name for any ggml type id, for messages ("Q4_K", "type 77"). */
const char *lm__ggml_type_name(uint32_t ggml, char *buf, size_t size);

/* A read position inside [p, end); every read fails cleanly past the end. */
struct gguf_cursor {
    const unsigned char *p, *end;
};

bool lm__gguf_u32(struct gguf_cursor *c, uint32_t *v);
bool lm__gguf_u64(struct gguf_cursor *c, uint64_t *v);
/* A gguf string: pointer into the buffer (not NUL-terminated), length. */
bool lm__gguf_str(struct gguf_cursor *c, const char **s, uint64_t *len);
/* Skip one value of `type` (arrays recursively, depth-limited). */
bool lm__gguf_skip_value(struct gguf_cursor *c, uint32_t type, int depth);

/* Arrays nest at most this deep (an array of arrays is depth 1). */
#define LM_GGUF_MAX_NESTING 8

/* A key/value's metadata text: strings as they are, other values as JSON
 * (lib/io/gguf_text.c). */
enum lm__gguf_text {
    LM_GGUF_TEXT_OK,
    LM_GGUF_TEXT_TRUNCATED, /* runs past the end of the file */
    LM_GGUF_TEXT_TOO_DEEP,  /* arrays nested deeper than the limit */
    LM_GGUF_TEXT_BAD_TYPE,  /* unknown value or array element type */
    LM_GGUF_TEXT_TOO_LONG,  /* text longer than the budget */
    LM_GGUF_TEXT_NUL        /* a string value holding a NUL byte */
};
/* Checks the value of `type` at c and measures its text (at most `budget`
 * bytes, else TOO_LONG), leaving c after the value. */
enum lm__gguf_text lm__gguf_text_measure(struct gguf_cursor *c,
                                         uint32_t type, size_t budget,
                                         size_t *len);
/* Writes the text of a value measured as `len` bytes into buf (len + 1
 * bytes, NUL-terminated); c is where the value starts. */
void lm__gguf_text_write(struct gguf_cursor c, uint32_t type, char *buf,
                         size_t len);

/* A GGUF file's raw key/value section (inside the model's mapping), the
 * format attachment of a model read from GGUF (lm__model_attach), so a
 * GGUF writer can carry typed values such as tokenizer arrays. */
struct lm__gguf_kv {
    const void *p;
    size_t len;
    uint64_t count;
    /* The tensors read from a quantized tensor (dequantized to f32) and
     * their ggml types, so a writer can tell them apart (lm_free'd with
     * the attachment). */
    const lm_tensor **quantized;
    uint32_t *quantized_type;
    size_t n_quantized;
};
/* Attach it to `model` (out of memory: an error naming `path`). */
lm_status lm__gguf_kv_attach(lm_context *ctx, const char *path,
                             lm_model *model, const void *p, size_t len,
                             uint64_t count);
/* The key/values of a model read from GGUF, or NULL. */
const struct lm__gguf_kv *lm__gguf_kv_of(const lm_model *model);
/* Records that `t` of `model` (read from GGUF) was stored as ggml type
 * `type` (a block format): LM_ERR_OUT_OF_MEMORY without a message. */
lm_status lm__gguf_note_quantized(lm_context *ctx, lm_model *model,
                                  const lm_tensor *t, uint32_t type);
/* The ggml block format `name`'s tensor of `model` was read from, or 0
 * when it was not quantized (or the model is not from GGUF). */
uint32_t lm__gguf_source_type(const lm_model *model, const char *name);

/* Map a GGUF file into `model` (lm_gguf_read; also lm_model_open). */
lm_status lm__gguf_read_into(lm_context *ctx, const char *path,
                             lm_model *model);

#endif
