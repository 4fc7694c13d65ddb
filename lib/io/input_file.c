/* Opening and reading the library's input files. Every reader goes
 * through here so none of them can block on a FIFO or read a device. */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "io/input_file.h"
#include "io/regular_file.h"

lm_status lm__open_input(lm_context *ctx, const char *what, const char *path,
                         int *fd, struct stat *st)
{
    const char *kind;
    const char *sep = what ? ": " : "";
    what = what ? what : "";
    int f = lm__open_regular(path, st, &kind);
    if (f >= 0) {
        *fd = f;
        return LM_OK;
    }
    if (!kind)
        return lm_context_set_error(ctx, LM_ERR_IO, "%s%scannot open '%s': %s",
                                    what, sep, path, strerror(errno));
    if (!strncmp(kind, "not ", 4))
        return lm_context_set_error(ctx, LM_ERR_IO, "%s%s'%s' is %s", what,
                                    sep, path, kind);
    return lm_context_set_error(ctx, LM_ERR_IO,
                                "%s%s'%s' is %s, not a regular file", what,
                                sep, path, kind);
}

lm_status lm__read_input(lm_context *ctx, const char *what, const char *path,
                         size_t max, char **buf, size_t *len)
{
    int fd;
    struct stat st;
    LM_TRY(lm__open_input(ctx, what, path, &fd, &st));
    const char *sep = what ? ": " : "";
    what = what ? what : "";
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s%s'%s' is %lld bytes (at most %zu)",
                                    what, sep, path, (long long)st.st_size,
                                    max);
    }
    size_t n = (size_t)st.st_size;
    char *text = lm_alloc(ctx, n + 1);
    if (!text) {
        close(fd);
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "%s%sout of memory reading '%s' (%zu "
                                    "bytes)", what, sep, path, n);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, text + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : 0;
            close(fd);
            lm_free(ctx, text);
            return lm_context_set_error(ctx, LM_ERR_IO,
                                        "%s%scannot read '%s': %s", what, sep,
                                        path, e ? strerror(e)
                                                : "the file shrank");
        }
        got += (size_t)r;
    }
    close(fd);
    text[n] = '\0';
    *buf = text;
    *len = n;
    return LM_OK;
}

lm_status lm__oom_in(lm_context *ctx, lm_status st, const char *path,
                     const char *kind, const char *name)
{
    if (st != LM_ERR_OUT_OF_MEMORY)
        return st;
    return lm_context_set_error(ctx, st, "%s: out of memory reading %s '%s'",
                                path, kind, name);
}
