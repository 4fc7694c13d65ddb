/* Input files are checked to be regular files before a blocking open: an
 * open() of a FIFO with no writer waits forever, and devices or sockets
 * are never model files. */
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "io/regular_file.h"

const char *lm__file_kind(mode_t mode)
{
    if (S_ISREG(mode))
        return NULL;
    if (S_ISFIFO(mode))
        return "a FIFO";
    if (S_ISDIR(mode))
        return "a directory";
    if (S_ISCHR(mode))
        return "a character device";
    if (S_ISBLK(mode))
        return "a block device";
    if (S_ISSOCK(mode))
        return "a socket";
    if (S_ISLNK(mode))
        return "a symbolic link";
    return "not a regular file";
}

int lm__open_regular(const char *path, struct stat *st, const char **kind)
{
    *kind = NULL;
    if (stat(path, st) != 0)
        return -1;
    if ((*kind = lm__file_kind(st->st_mode)) != NULL)
        return -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return -1;
    if (fstat(fd, st) != 0 || (*kind = lm__file_kind(st->st_mode)) != NULL) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    /* Regular files ignore O_NONBLOCK, but clear it so stdio and read()
     * behave as usual for whoever uses the descriptor. */
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0)
        fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    return fd;
}
