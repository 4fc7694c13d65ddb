/* A file written under a temporary name beside its destination and renamed
 * into place only once every byte is on disk: readers see the old file or
 * the complete new one, never a partial one. Directory outputs (several
 * files that must appear together) use lm_output_dir instead. */
#ifndef LM_IO_ATOMIC_FILE_H
#define LM_IO_ATOMIC_FILE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "libmerge/context.h"

struct lm__atomic_file {
    lm_context *ctx;
    char *final_path;
    char *tmp_path; /* NULL once renamed or discarded */
    int fd;
};

/* Creates `.NAME.tmp.XXXXXX` in final_path's directory (mode 0644). */
lm_status lm__atomic_open(lm_context *ctx, const char *final_path,
                          struct lm__atomic_file *f);
/* fsync, close, rename over final_path, fsync the directory; on failure
 * the temporary file is removed and the destination is untouched. */
lm_status lm__atomic_commit(struct lm__atomic_file *f);
/* Closes and removes the temporary file (if any); frees the paths. */
void lm__atomic_discard(struct lm__atomic_file *f);

/* Writes all of buf at offset, retrying short writes and EINTR. */
int lm__pwrite_all(int fd, const void *buf, size_t n, uint64_t offset);
/* fsync of a file or (dir) a directory, so renames inside it survive a
 * power loss; symlinks are not followed. -1 with errno on failure. */
int lm__fsync_path(const char *path, bool dir);
int lm__fsync_dir(const char *dir);

#endif
