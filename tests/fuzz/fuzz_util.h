/* Fuzz targets feed bytes to loaders that take paths: write the input to a
 * per-process temporary file first. */
#ifndef LM_FUZZ_UTIL_H
#define LM_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Path of a file now holding exactly data[0..size). */
const char *fuzz_write_temp(const uint8_t *data, size_t size,
                            const char *suffix);

struct lm_context;
/* A one-thread context (NULL if it cannot be created). */
struct lm_context *fuzz_context(void);

#endif
