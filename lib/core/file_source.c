/* Merge inputs read with pread() (core/file_source.h). */
#define _DEFAULT_SOURCE /* pread */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/file_source.h"

/* LIBMERGE_PREAD=0 reads every input through its mapping (A/B runs and
 * tests; documented in docs/architecture.md). */
static bool pread_enabled(void)
{
    const char *e = getenv("LIBMERGE_PREAD");
    return !(e && strcmp(e, "0") == 0);
}

void lm__file_source_open(const lm_model *model, const lm_tensor *t,
                          struct lm__file_source *s)
{
    *s = (struct lm__file_source){.fd = -1, .mapped = t->data};
    struct lm__file_range r;
    if (!model || !model->file_range || !pread_enabled() ||
        !model->file_range(model->resource, t, &r))
        return;
    int fd = open(r.path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    struct stat st;
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_dev != r.dev ||
        (uint64_t)st.st_ino != r.ino || (uint64_t)st.st_size != r.size) {
        close(fd);
        return;
    }
    s->fd = fd;
    s->offset = r.offset;
    s->dev = r.dev;
    s->ino = r.ino;
    atomic_fetch_add(&model->ctx->file_inputs, 1);
}

void lm__file_source_read(const struct lm__file_source *s, size_t off,
                          size_t len, void *dst)
{
    size_t got = 0;
    while (s->fd >= 0 && got < len) {
        ssize_t n = pread(s->fd, (char *)dst + got, len - got,
                          (off_t)(s->offset + off + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    if (got < len)
        memcpy((char *)dst + got, s->mapped + off + got, len - got);
}

void lm__file_source_close(struct lm__file_source *s)
{
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
}
