/* The .npy array header: parse and format. */
#ifndef LM_IO_NPY_HEADER_H
#define LM_IO_NPY_HEADER_H

#include "core/internal.h"

/* Parses the header at the start of an .npy member of `len` bytes: on
 * success *dtype, *ndim, shape and *data_offset (bytes from the member's
 * start to the array data). `what` names the member in messages. */
lm_status lm__npy_parse(lm_context *ctx, const char *what,
                        const unsigned char *p, size_t len, lm_dtype *dtype,
                        int *ndim, int64_t *shape, size_t *data_offset);

/* Formats a version 1.0 header (padded so the data starts at a multiple
 * of 64) into buf; returns its length, 0 if it does not fit. */
size_t lm__npy_format(char *buf, size_t size, lm_dtype dtype, int ndim,
                      const int64_t *shape);

#endif
