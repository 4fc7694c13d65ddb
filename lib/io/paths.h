/* Building paths in the context's memory: the directory part of a path
 * and a name inside a directory. */
#ifndef LM_IO_PATHS_H
#define LM_IO_PATHS_H

#include "libmerge/context.h"

/* The directory part of path ("." when it has none), allocated (lm_free),
 * or NULL when out of memory. */
char *lm__dir_of(lm_context *ctx, const char *path);
/* dir + "/" + name, allocated (lm_free), or NULL when out of memory. */
char *lm__path_join(lm_context *ctx, const char *dir, const char *name);

#endif
