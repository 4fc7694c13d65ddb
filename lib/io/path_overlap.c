/* Input/output overlap checks; see path_overlap.h. Paths are resolved
 * with realpath so that symlinks and "a/../b" spellings cannot hide an
 * overlap, then every ancestor is compared by device and inode (string
 * prefixes alone would miss bind mounts and hard-linked paths). */
/* realpath with a NULL buffer is POSIX 2008; the XSI declaration needs
 * _XOPEN_SOURCE on glibc. */
#define _XOPEN_SOURCE 700
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/internal.h"
#include "io/path_overlap.h"

static bool same_inode(const char *a, const char *b)
{
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

/* Truncates an absolute path to its parent; false at "/". */
static bool to_parent(char *p)
{
    char *slash = strrchr(p, '/');
    if (!slash || (slash == p && p[1] == '\0'))
        return false;
    if (slash == p)
        p[1] = '\0';
    else
        *slash = '\0';
    return true;
}

/* True when `ancestor` is `path` or one of its ancestors. */
static bool is_within(const char *path, const char *ancestor)
{
    char *p = strdup(path);
    bool found = false;
    if (!p)
        return false;
    do
        found = same_inode(p, ancestor);
    while (!found && to_parent(p));
    free(p);
    return found;
}

/* realpath of the deepest existing ancestor-or-self of `path`. */
static char *existing_part(const char *path, bool *exists)
{
    char *p = strdup(path);
    *exists = true;
    while (p) {
        char *real = realpath(p, NULL);
        if (real || errno != ENOENT) {
            free(p);
            return real;
        }
        *exists = false;
        char *slash = strrchr(p, '/');
        if (!slash || slash == p) {
            /* a relative name with no existing part: the working directory;
             * an absolute one: the root */
            const char *rest = slash ? "/" : ".";
            free(p);
            return realpath(rest, NULL);
        }
        *slash = '\0';
    }
    return NULL;
}

lm_status lm__check_overlap(lm_context *ctx, const char *dest,
                            const char *input)
{
    struct stat st;
    if (stat(input, &st))
        return LM_OK;
    bool input_is_dir = S_ISDIR(st.st_mode);
    char *in_real = realpath(input, NULL);
    char *in_dir = in_real && !input_is_dir ? strdup(in_real) : in_real;
    if (in_dir && !input_is_dir)
        to_parent(in_dir);
    bool dest_exists;
    char *out = existing_part(dest, &dest_exists);
    lm_status status = LM_OK;
    const char *why = NULL;
    if (!in_dir || !out) {
        status = lm_context_set_error(ctx, LM_ERR_IO,
                                      "cannot resolve '%s' or '%s': %s", dest,
                                      input, strerror(errno));
    } else if (dest_exists && same_inode(out, in_dir)) {
        why = input_is_dir ? "is the input directory"
                           : "is the directory holding the input";
    } else if (input_is_dir && is_within(out, in_dir)) {
        why = "is inside the input directory";
    } else if (dest_exists && is_within(in_real, out)) {
        why = "contains the input";
    }
    if (why)
        status = lm_context_set_error(
            ctx, LM_ERR_INVALID_ARGUMENT,
            "output directory '%s' %s '%s': choose a directory outside "
            "every input",
            dest, why, input);
    if (in_dir != in_real)
        free(in_dir);
    free(in_real);
    free(out);
    return status;
}
