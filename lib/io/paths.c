/* Paths in the context's memory; see paths.h. */
#include <stdio.h>
#include <string.h>

#include "core/internal.h"
#include "io/paths.h"

char *lm__path_join(lm_context *ctx, const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = lm_alloc(ctx, n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

char *lm__dir_of(lm_context *ctx, const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return lm__strdup(ctx, ".");
    size_t n = slash == path ? 1 : (size_t)(slash - path);
    char *d = lm_alloc(ctx, n + 1);
    if (d) {
        memcpy(d, path, n);
        d[n] = '\0';
    }
    return d;
}
