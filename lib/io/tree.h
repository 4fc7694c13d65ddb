/* Whole directory trees: flushing them to disk before a commit and
 * removing them after a failed or replaced output. Symlinks are never
 * followed. */
#ifndef LM_IO_TREE_H
#define LM_IO_TREE_H

#include "libmerge/context.h"

/* fsync every regular file and directory under (and including) `root`. */
lm_status lm__tree_sync(lm_context *ctx, const char *root);
/* Removes `root` and everything under it; best effort, errors ignored
 * (used on paths that are being abandoned). */
void lm__tree_remove(lm_context *ctx, const char *root);
/* Name of one entry of `dir` other than "." and "..", allocated, or NULL
 * when the directory is empty; *count receives the number of entries.
 * Returns LM_ERR_IO when `dir` cannot be listed. */
lm_status lm__dir_entries(lm_context *ctx, const char *dir, size_t *count,
                          char **first);

#endif
