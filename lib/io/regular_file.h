/* Opening input files without ever blocking on something that is not a
 * file. Context-free, so the lmerge tool compiles the same source. */
#ifndef LM_IO_REGULAR_FILE_H
#define LM_IO_REGULAR_FILE_H

#include <sys/stat.h>

/* What a file of mode `mode` is, for messages: "a FIFO", "a directory",
 * "a character device", "a block device", "a socket", "a symbolic link",
 * or "not a regular file" for anything else; NULL for a regular file. */
const char *lm__file_kind(mode_t mode);

/* Open `path` read-only after checking with stat() that it is a regular
 * file, then check the descriptor again with fstat() (the path may have
 * been replaced in between). Opened O_NONBLOCK so that even a FIFO swapped
 * in after the stat() cannot block; the flag is cleared again before
 * returning. Returns the descriptor with *st filled in, or -1 with
 * *kind == NULL and errno set (a system error), or -1 with *kind the
 * lm__file_kind() of what the path is. */
int lm__open_regular(const char *path, struct stat *st, const char **kind);

#endif
