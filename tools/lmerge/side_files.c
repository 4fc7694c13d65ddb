/* Copying the base model's non-weight files (config.json, tokenizer
 * files, ...) next to the merged weights. They are copied into the
 * output's staging directory, so they need no temporary names of their
 * own: the whole directory is committed (flushed and renamed) at once. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "commands.h"
#include "io/regular_file.h"

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Weights and their indexes are produced by the merge, never copied. */
static bool is_weight_file(const char *name)
{
    static const char *suffixes[] = {".safetensors", ".bin", ".pt", ".pth",
                                     ".gguf", ".npz", ".index.json", ".ckpt"};
    for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++)
        if (ends_with(name, suffixes[i]))
            return true;
    return false;
}

/* Written for the merge itself (out_files.c): the donor's model card
 * describes the donor, not the merge (mergekit writes its own card too). */
static bool is_generated(const char *name)
{
    return !strcmp(name, "README.md") || !strcmp(name, "mergekit_config.yml") ||
           !strcmp(name, "config.json");
}

static int copy_file(const char *src, const char *dst_dir, const char *name,
                     char *err, size_t err_size)
{
    char dst[4096];
    if ((size_t)snprintf(dst, sizeof(dst), "%s/%s", dst_dir, name) >=
        sizeof(dst)) {
        snprintf(err, err_size, "path too long: '%s/%s'", dst_dir, name);
        return -1;
    }
    struct stat st;
    const char *kind;
    int in = lm__open_regular(src, &st, &kind);
    int out = in >= 0 ? open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
                             0666)
                      : -1;
    bool ok = in >= 0 && out >= 0;
    char buf[65536];
    while (ok) {
        ssize_t n = read(in, buf, sizeof(buf));
        if (n == 0)
            break;
        if (n < 0) {
            ok = errno == EINTR;
            continue;
        }
        for (ssize_t off = 0; ok && off < n;) {
            ssize_t w = write(out, buf + off, (size_t)(n - off));
            ok = w > 0 || (w < 0 && errno == EINTR);
            off += w > 0 ? w : 0;
        }
    }
    int saved = errno;
    if (in >= 0)
        close(in);
    if (out >= 0 && close(out) && ok) {
        ok = false;
        saved = errno;
    }
    if (!ok) {
        snprintf(err, err_size, "cannot copy '%s' to '%s': %s%s", src, dst,
                 kind ? kind : strerror(saved),
                 kind ? ", not a regular file" : "");
        return -1;
    }
    return 0;
}

int lmerge_copy_side_files(const char *base_path, const char *out_dir,
                           char *err, size_t err_size)
{
    struct stat st;
    if (stat(base_path, &st) || !S_ISDIR(st.st_mode))
        return 0; /* a single weights file has no side files */
    DIR *d = opendir(base_path);
    if (!d) {
        snprintf(err, err_size, "cannot list '%s': %s", base_path,
                 strerror(errno));
        return -1;
    }
    int rc = 0;
    for (struct dirent *e; rc == 0 && (e = readdir(d));) {
        if (e->d_name[0] == '.' || is_weight_file(e->d_name) ||
            is_generated(e->d_name))
            continue;
        char src[4096];
        snprintf(src, sizeof(src), "%s/%s", base_path, e->d_name);
        /* stat follows links (Hugging Face cache snapshots are links to
         * blobs); FIFOs, sockets and devices are not side files. */
        if (stat(src, &st) || !S_ISREG(st.st_mode))
            continue;
        rc = copy_file(src, out_dir, e->d_name, err, err_size);
    }
    closedir(d);
    return rc;
}
