/* A merge input read with pread() from the file it was mapped from,
 * rather than through the mapping. Not installed.
 *
 * Why: streaming a page-cache mapping costs page-table work (populating
 * it, TLB misses on 4 KiB pages, dropping the pages again) that a read()
 * copy into a small reused buffer does not; under virtualisation, where
 * page-table updates trap, the copy was measured 1.5-2x faster
 * (docs/benchmarks/perf_elementwise.md). The bytes are the same: the file
 * is reopened only when it is still the file that was mapped (device,
 * inode, size), and any failure falls back to the mapping.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LM_CORE_FILE_SOURCE_H
#define LM_CORE_FILE_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/internal.h"

struct lm__file_source {
    int fd;             /* -1: read the mapping */
    uint64_t offset;    /* of the tensor's first byte in the file */
    const char *mapped; /* the tensor's bytes in the mapping */
    uint64_t dev, ino;  /* the open file's, checked at open */
};

/* Opens t's file when its model can say where t lies (fd -1 otherwise,
 * or when LIBMERGE_PREAD=0). Never fails: the mapping is the fallback. */
void lm__file_source_open(const lm_model *model, const lm_tensor *t,
                          struct lm__file_source *s);
/* Bytes [off, off + len) of the tensor into dst: read from the file, or
 * copied from the mapping when there is no file or a read fails. */
void lm__file_source_read(const struct lm__file_source *s, size_t off,
                          size_t len, void *dst);
/* Is the file open (else reads copy from the mapping)? */
static inline bool lm__file_source_open_ok(const struct lm__file_source *s)
{
    return s->fd >= 0;
}
void lm__file_source_close(struct lm__file_source *s);

#endif
