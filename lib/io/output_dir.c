/* Output directories committed in one step; see libmerge/output.h.
 *
 * Everything is written into a hidden staging directory beside the
 * destination, on the same file system, so that the commit is a rename:
 * onto a missing or empty destination with rename(2), onto an existing
 * one (overwrite) by exchanging the two directories with renameat2's
 * RENAME_EXCHANGE, so that no reader can see a mix of the old and new
 * files. Where the file system cannot exchange, the old directory is
 * first renamed aside: the destination is then briefly absent, never
 * mixed. */
/* renameat2 and RENAME_EXCHANGE are Linux extensions. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/internal.h"
#include "io/atomic_file.h"
#include "io/path_overlap.h"
#include "io/tree.h"
#include "io/paths.h"
#include "libmerge/output.h"

struct lm_output_dir {
    lm_context *ctx;
    char *dest;
    char *staging;
    int overwrite;
    char **inputs;
    size_t n_inputs;
    char **created; /* parent directories begin made, outermost first */
    size_t n_created;
    bool committed;
};

void lm_output_dir_options_init(lm_output_dir_options *options)
{
    if (options)
        *options = (lm_output_dir_options)LM_OUTPUT_DIR_OPTIONS_INIT;
}

const char *lm_output_dir_path(const lm_output_dir *dir)
{
    return dir ? dir->staging : NULL;
}

static lm_status oom(lm_context *ctx, const char *dest)
{
    return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                "out of memory preparing output '%s'", dest);
}

/* LM_OK when `dest` may receive the output: absent, an empty directory,
 * or (overwrite) any directory; *entries receives how many entries it
 * holds (0 when absent). */
static lm_status check_dest(lm_output_dir *o, size_t *entries)
{
    lm_context *ctx = o->ctx;
    for (size_t i = 0; i < o->n_inputs; i++)
        LM_TRY(lm__check_overlap(ctx, o->dest, o->inputs[i]));
    struct stat st;
    *entries = 0;
    if (lstat(o->dest, &st) != 0) {
        if (errno == ENOENT)
            return LM_OK;
        return lm_context_set_error(ctx, LM_ERR_IO, "cannot use '%s': %s",
                                    o->dest, strerror(errno));
    }
    if (!S_ISDIR(st.st_mode))
        return lm_context_set_error(ctx, LM_ERR_EXISTS,
                                    "output '%s' exists and is not a "
                                    "directory", o->dest);
    size_t count;
    char *first;
    LM_TRY(lm__dir_entries(ctx, o->dest, &count, &first));
    *entries = count;
    lm_status status = LM_OK;
    if (count && !o->overwrite)
        status = lm_context_set_error(
            ctx, LM_ERR_EXISTS,
            "output directory '%s' is not empty (it holds '%s'%s): choose "
            "a new directory, or overwrite to replace it as a whole",
            o->dest, first ? first : "?", count > 1 ? " and more" : "");
    lm_free(ctx, first);
    return status;
}

/* mkdir -p of dest's missing parents, remembered so that a failed run
 * leaves none of them behind. */
static lm_status make_parents(lm_output_dir *o)
{
    char *p = lm__strdup(o->ctx, o->dest);
    if (!p)
        return oom(o->ctx, o->dest);
    size_t cap = 0;
    lm_status st = LM_OK;
    char *last = strrchr(p, '/');
    for (char *s = strchr(p + 1, '/'); st == LM_OK && s && s <= last;
         s = strchr(s + 1, '/')) {
        *s = '\0';
        if (mkdir(p, 0777) == 0) {
            char **room = lm__reserve(o->ctx, o->created, &cap, o->n_created,
                                      sizeof(char *), 4);
            char *copy = room ? lm__strdup(o->ctx, p) : NULL;
            if (room)
                o->created = room;
            if (copy)
                o->created[o->n_created++] = copy;
            else
                st = oom(o->ctx, o->dest);
        } else if (errno != EEXIST) {
            st = lm_context_set_error(o->ctx, LM_ERR_IO,
                                      "cannot create directory '%s': %s", p,
                                      strerror(errno));
        }
        *s = '/';
    }
    lm_free(o->ctx, p);
    return st;
}

/* `.NAME.lmerge-XXXXXX` beside dest, made with mkdir so that the new
 * directory gets the caller's umask like any other (mkdtemp's is 0700). */
static lm_status make_staging(lm_output_dir *o)
{
    char *parent = lm__dir_of(o->ctx, o->dest);
    const char *base = strrchr(o->dest, '/');
    base = base ? base + 1 : o->dest;
    size_t n = (parent ? strlen(parent) : 0) + strlen(base) + 32;
    o->staging = parent ? lm_alloc(o->ctx, n) : NULL;
    if (!o->staging) {
        lm_free(o->ctx, parent);
        return oom(o->ctx, o->dest);
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t seed = lm__mix64((uint64_t)ts.tv_nsec ^
                              ((uint64_t)getpid() << 32) ^ (uintptr_t)o);
    int err = EEXIST;
    for (int attempt = 0; attempt < 100 && err == EEXIST; attempt++) {
        seed = lm__mix64(seed);
        snprintf(o->staging, n, "%s/.%s.lmerge-%06llx", parent, base,
                 (unsigned long long)(seed & 0xffffff));
        err = mkdir(o->staging, 0777) ? errno : 0;
    }
    lm_free(o->ctx, parent);
    if (err) {
        lm_status st = lm_context_set_error(
            o->ctx, LM_ERR_IO, "cannot create a staging directory for '%s': %s",
            o->dest, strerror(err));
        lm_free(o->ctx, o->staging);
        o->staging = NULL;
        return st;
    }
    return LM_OK;
}

static lm_status copy_options(lm_output_dir *o,
                              const lm_output_dir_options *options)
{
    lm_output_dir_options opts = LM_OUTPUT_DIR_OPTIONS_INIT;
    if (options) {
        if (options->struct_size < sizeof(uint32_t) + sizeof(int))
            return lm_context_set_error(o->ctx, LM_ERR_ABI,
                                        "output dir: options struct_size %u "
                                        "too small", options->struct_size);
        memcpy(&opts, options, options->struct_size < sizeof(opts)
                                   ? options->struct_size
                                   : sizeof(opts));
    }
    o->overwrite = opts.overwrite;
    if (opts.n_inputs && !opts.inputs)
        return lm_context_set_error(o->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "output dir: n_inputs without inputs");
    o->inputs = lm__calloc(o->ctx, opts.n_inputs ? opts.n_inputs : 1,
                           sizeof(char *));
    if (!o->inputs)
        return oom(o->ctx, o->dest);
    for (size_t i = 0; i < opts.n_inputs; i++) {
        if (!(o->inputs[i] = lm__strdup(o->ctx, opts.inputs[i])))
            return oom(o->ctx, o->dest);
        o->n_inputs = i + 1;
    }
    return LM_OK;
}

/* dest without trailing slashes, resolved through a symlink so that the commit replaces the directory, not the link. */
static lm_status set_dest(lm_output_dir *o, const char *dest)
{
    size_t n = strlen(dest);
    while (n > 1 && dest[n - 1] == '/')
        n--;
    o->dest = lm_alloc(o->ctx, n + 1);
    if (!o->dest)
        return oom(o->ctx, dest);
    memcpy(o->dest, dest, n);
    o->dest[n] = '\0';
    if (!strcmp(o->dest, "/") || !strcmp(o->dest, ".") ||
        !strcmp(o->dest, ".."))
        return lm_context_set_error(o->ctx, LM_ERR_INVALID_ARGUMENT,
                                    "output directory '%s': give a directory "
                                    "by name", dest);
    struct stat st;
    if (lstat(o->dest, &st) == 0 && S_ISLNK(st.st_mode)) {
        char *real = realpath(o->dest, NULL);
        if (!real)
            return lm_context_set_error(o->ctx, LM_ERR_IO,
                                        "output '%s' is a symlink that "
                                        "cannot be followed: %s",
                                        o->dest, strerror(errno));
        char *copy = lm__strdup(o->ctx, real);
        free(real);
        if (!copy)
            return oom(o->ctx, dest);
        lm_free(o->ctx, o->dest);
        o->dest = copy;
    }
    return LM_OK;
}

lm_status lm_output_dir_begin(lm_context *ctx, const char *dest,
                              const lm_output_dir_options *options,
                              lm_output_dir **out)
{
    if (!ctx || !dest || !*dest || !out)
        return LM_ERR_INVALID_ARGUMENT;
    *out = NULL;
    lm_output_dir *o = lm__calloc(ctx, 1, sizeof(*o));
    if (!o)
        return oom(ctx, dest);
    o->ctx = ctx;
    size_t entries;
    lm_status st = set_dest(o, dest);
    if (st == LM_OK)
        st = copy_options(o, options);
    if (st == LM_OK)
        st = check_dest(o, &entries);
    if (st == LM_OK)
        st = make_parents(o);
    if (st == LM_OK)
        st = make_staging(o);
    if (st != LM_OK) {
        lm_output_dir_destroy(o);
        return st;
    }
    *out = o;
    return LM_OK;
}

/* Moves the staging directory onto an existing, non-empty dest. */
static lm_status replace_dest(lm_output_dir *o)
{
    if (renameat2(AT_FDCWD, o->staging, AT_FDCWD, o->dest,
                  RENAME_EXCHANGE) == 0) {
        lm__tree_remove(o->ctx, o->staging); /* now the old contents */
        return LM_OK;
    }
    if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
        return lm_context_set_error(o->ctx, LM_ERR_IO,
                                    "cannot replace '%s': %s", o->dest,
                                    strerror(errno));
    size_t n = strlen(o->staging) + 8;
    char *aside = lm_alloc(o->ctx, n);
    if (!aside)
        return oom(o->ctx, o->dest);
    snprintf(aside, n, "%s.old", o->staging);
    lm_status st = LM_OK;
    if (rename(o->dest, aside))
        st = lm_context_set_error(o->ctx, LM_ERR_IO,
                                  "cannot move '%s' aside: %s", o->dest,
                                  strerror(errno));
    else if (rename(o->staging, o->dest)) {
        st = lm_context_set_error(o->ctx, LM_ERR_IO,
                                  "cannot rename '%s' into place: %s",
                                  o->dest, strerror(errno));
        rename(aside, o->dest);
    } else {
        lm__tree_remove(o->ctx, aside);
    }
    lm_free(o->ctx, aside);
    return st;
}

lm_status lm_output_dir_commit(lm_output_dir *o)
{
    if (!o)
        return LM_ERR_INVALID_ARGUMENT;
    if (o->committed || !o->staging)
        return lm_context_set_error(o->ctx, LM_ERR_STATE,
                                    "output '%s' already committed", o->dest);
    LM_TRY(lm__tree_sync(o->ctx, o->staging));
    size_t count;
    LM_TRY(check_dest(o, &count));
    /* Allocated before the rename: once the output is in place, nothing
     * may fail for lack of memory (the caller would report an error for
     * an output that exists). */
    char *parent = lm__dir_of(o->ctx, o->dest);
    if (!parent)
        return oom(o->ctx, o->dest);
    lm_status st = LM_OK;
    if (count) {
        st = replace_dest(o);
    } else if (rename(o->staging, o->dest)) {
        st = lm_context_set_error(o->ctx,
                                  errno == ENOTEMPTY || errno == EEXIST
                                      ? LM_ERR_EXISTS
                                      : LM_ERR_IO,
                                  "cannot rename the output into '%s': %s",
                                  o->dest, strerror(errno));
    }
    if (st != LM_OK) {
        lm_free(o->ctx, parent);
        return st;
    }
    o->committed = true;
    if (lm__fsync_dir(parent))
        st = lm_context_set_error(o->ctx, LM_ERR_IO,
                                  "cannot sync directory '%s': %s", parent,
                                  strerror(errno));
    lm_free(o->ctx, parent);
    return st;
}

void lm_output_dir_destroy(lm_output_dir *o)
{
    if (!o)
        return;
    lm_context *ctx = o->ctx;
    if (!o->committed) {
        if (o->staging)
            lm__tree_remove(ctx, o->staging);
        for (size_t i = o->n_created; i-- > 0;)
            rmdir(o->created[i]);
    }
    for (size_t i = 0; i < o->n_created; i++)
        lm_free(ctx, o->created[i]);
    lm_free(ctx, o->created);
    for (size_t i = 0; i < o->n_inputs; i++)
        lm_free(ctx, o->inputs[i]);
    lm_free(ctx, o->inputs);
    lm_free(ctx, o->staging);
    lm_free(ctx, o->dest);
    lm_free(ctx, o);
}
