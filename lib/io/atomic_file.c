/* Single files committed by rename; see atomic_file.h. */
/* mkostemp (O_CLOEXEC on the temporary file) is a GNU extension. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/internal.h"
#include "io/atomic_file.h"
#include "io/paths.h"

int lm__pwrite_all(int fd, const void *buf, size_t n, uint64_t offset)
{
    const char *p = buf;
    while (n) {
        ssize_t w = pwrite(fd, p, n, (off_t)offset);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
        offset += (uint64_t)w;
    }
    return 0;
}

int lm__fsync_path(const char *path, bool dir)
{
    /* O_NONBLOCK: a FIFO that took a regular file's place cannot hang us. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW |
                            (dir ? O_DIRECTORY : O_NONBLOCK));
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

int lm__fsync_dir(const char *dir)
{
    return lm__fsync_path(dir, true);
}

lm_status lm__atomic_open(lm_context *ctx, const char *final_path,
                          struct lm__atomic_file *f)
{
    *f = (struct lm__atomic_file){ctx, NULL, NULL, -1};
    const char *base = strrchr(final_path, '/');
    base = base ? base + 1 : final_path;
    char *dir = lm__dir_of(ctx, final_path);
    size_t n = (dir ? strlen(dir) : 0) + strlen(base) + 16;
    f->final_path = lm__strdup(ctx, final_path);
    f->tmp_path = dir && f->final_path ? lm_alloc(ctx, n) : NULL;
    if (!f->tmp_path) {
        lm_free(ctx, dir);
        lm__atomic_discard(f);
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory opening '%s'",
                                    final_path);
    }
    snprintf(f->tmp_path, n, "%s/.%s.tmp.XXXXXX", dir, base);
    lm_free(ctx, dir);
    f->fd = mkostemp(f->tmp_path, O_CLOEXEC);
    if (f->fd < 0) {
        lm_status st = lm_context_set_error(
            ctx, LM_ERR_IO, "cannot create a temporary file for '%s': %s",
            final_path, strerror(errno));
        lm_free(ctx, f->tmp_path);
        f->tmp_path = NULL;
        lm__atomic_discard(f);
        return st;
    }
    fchmod(f->fd, 0644);
    return LM_OK;
}

lm_status lm__atomic_commit(struct lm__atomic_file *f)
{
    /* Allocated before the rename: once the file is in place, nothing may
     * fail for lack of memory (the caller would report an error for an
     * output that exists). */
    char *dir = lm__dir_of(f->ctx, f->final_path);
    if (!dir) {
        lm_status st = lm_context_set_error(f->ctx, LM_ERR_OUT_OF_MEMORY,
                                            "out of memory committing '%s'",
                                            f->final_path);
        lm__atomic_discard(f);
        return st;
    }
    const char *what = "cannot flush";
    bool ok = fsync(f->fd) == 0;
    int saved = errno;
    if (close(f->fd) && ok) {
        ok = false;
        saved = errno;
    }
    f->fd = -1;
    if (ok && rename(f->tmp_path, f->final_path)) {
        what = "cannot rename into place";
        ok = false;
        saved = errno;
    }
    if (!ok) {
        lm_status st = lm_context_set_error(f->ctx, LM_ERR_IO, "%s '%s': %s",
                                            what, f->final_path,
                                            strerror(saved));
        lm_free(f->ctx, dir);
        lm__atomic_discard(f);
        return st;
    }
    lm_free(f->ctx, f->tmp_path);
    f->tmp_path = NULL;
    lm_status st = LM_OK;
    if (lm__fsync_dir(dir))
        st = lm_context_set_error(f->ctx, LM_ERR_IO,
                                  "cannot sync directory '%s': %s", dir,
                                  strerror(errno));
    lm_free(f->ctx, dir);
    lm__atomic_discard(f);
    return st;
}

void lm__atomic_discard(struct lm__atomic_file *f)
{
    if (f->fd >= 0)
        close(f->fd);
    f->fd = -1;
    if (f->tmp_path) {
        unlink(f->tmp_path);
        lm_free(f->ctx, f->tmp_path);
        f->tmp_path = NULL;
    }
    lm_free(f->ctx, f->final_path);
    f->final_path = NULL;
}
