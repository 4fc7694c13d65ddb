/* Input files for the readers: regular files only, errors naming the
 * path. */
#ifndef LM_IO_INPUT_FILE_H
#define LM_IO_INPUT_FILE_H

#include <stddef.h>
#include <sys/stat.h>

#include "core/internal.h"

/* Open `path` read-only (lm__open_regular): on failure LM_ERR_IO with a
 * message such as "cannot open 'x': No such file or directory" or "'x' is
 * a FIFO, not a regular file". `what` (may be NULL) prefixes the message,
 * e.g. "stats". */
lm_status lm__open_input(lm_context *ctx, const char *what, const char *path,
                         int *fd, struct stat *st);

/* The whole of `path` (at most `max` bytes, else LM_ERR_FORMAT) in a new
 * NUL-terminated buffer the caller frees with lm_free. */
lm_status lm__read_input(lm_context *ctx, const char *what, const char *path,
                         size_t max, char **buf, size_t *len);

/* `st` unchanged, except that out of memory gets a message naming the
 * file and the item being read ("x.gguf: out of memory reading key 'k'"),
 * since the allocation that failed deep inside names neither. */
lm_status lm__oom_in(lm_context *ctx, lm_status st, const char *path,
                     const char *kind, const char *name);

#endif
