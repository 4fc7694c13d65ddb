/* Directory-tree walks; see tree.h. Recursion depth follows the tree's,
 * which for staging and model directories is one or two levels. */
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/internal.h"
#include "io/atomic_file.h"
#include "io/tree.h"
#include "io/paths.h"

static bool dot_entry(const char *name)
{
    return !strcmp(name, ".") || !strcmp(name, "..");
}

lm_status lm__tree_sync(lm_context *ctx, const char *root)
{
    DIR *d = opendir(root);
    if (!d)
        return lm_context_set_error(ctx, LM_ERR_IO, "cannot list '%s': %s",
                                    root, strerror(errno));
    lm_status st = LM_OK;
    for (struct dirent *e; st == LM_OK && (e = readdir(d));) {
        if (dot_entry(e->d_name))
            continue;
        char *path = lm__path_join(ctx, root, e->d_name);
        struct stat s;
        if (!path)
            st = lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                      "out of memory listing '%s'", root);
        else if (lstat(path, &s))
            st = lm_context_set_error(ctx, LM_ERR_IO, "cannot stat '%s': %s",
                                      path, strerror(errno));
        else if (S_ISDIR(s.st_mode))
            st = lm__tree_sync(ctx, path);
        else if (S_ISREG(s.st_mode) && lm__fsync_path(path, false))
            st = lm_context_set_error(ctx, LM_ERR_IO, "cannot flush '%s': %s",
                                      path, strerror(errno));
        lm_free(ctx, path);
    }
    closedir(d);
    if (st == LM_OK && lm__fsync_path(root, true))
        st = lm_context_set_error(ctx, LM_ERR_IO,
                                  "cannot sync directory '%s': %s", root,
                                  strerror(errno));
    return st;
}

void lm__tree_remove(lm_context *ctx, const char *root)
{
    struct stat s;
    if (lstat(root, &s))
        return;
    if (!S_ISDIR(s.st_mode)) {
        unlink(root);
        return;
    }
    DIR *d = opendir(root);
    for (struct dirent *e; d && (e = readdir(d));) {
        if (dot_entry(e->d_name))
            continue;
        char *path = lm__path_join(ctx, root, e->d_name);
        if (path)
            lm__tree_remove(ctx, path);
        lm_free(ctx, path);
    }
    if (d)
        closedir(d);
    rmdir(root);
}

lm_status lm__dir_entries(lm_context *ctx, const char *dir, size_t *count,
                          char **first)
{
    *count = 0;
    *first = NULL;
    DIR *d = opendir(dir);
    if (!d)
        return lm_context_set_error(ctx, LM_ERR_IO, "cannot list '%s': %s",
                                    dir, strerror(errno));
    for (struct dirent *e; (e = readdir(d));) {
        if (dot_entry(e->d_name))
            continue;
        if (!*first)
            *first = lm__strdup(ctx, e->d_name);
        ++*count;
    }
    closedir(d);
    return LM_OK;
}
