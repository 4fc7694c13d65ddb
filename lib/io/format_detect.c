/* Which entry of the format table a path is: a directory by what it holds,
 * a file by its name, then by its first bytes. */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/formats.h"
#include "io/input_file.h"

/* Enough for every entry's sniff (the safetensors one reads 9 bytes). */
#define HEAD_BYTES 16

static bool can(const struct lm__format *f, enum lm__format_need need)
{
    return ((need & LM_FORMAT_MODEL) && f->read_into) ||
           ((need & LM_FORMAT_LORA) && f->read_lora);
}

static const char *needed(enum lm__format_need need)
{
    return need == LM_FORMAT_LORA ? "a LoRA adapter" : "a model";
}

/* A format was found that cannot do what is asked: say what it is. */
static lm_status wrong_kind(lm_context *ctx, const char *path,
                            const struct lm__format *f,
                            enum lm__format_need need)
{
    return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                "'%s' is a %s, which holds %s, not %s", path,
                                f->name,
                                f->read_into ? "a model" : "a LoRA adapter",
                                needed(need));
}

static lm_status detect_dir(lm_context *ctx, const char *path,
                            enum lm__format_need need,
                            const struct lm__format **format, char **file)
{
    const struct lm__format *other = NULL; /* found, but cannot do `need` */
    for (size_t i = 0; lm__formats[i]; i++) {
        const struct lm__format *f = lm__formats[i];
        if (!f->in_dir)
            continue;
        char *found = NULL;
        lm_status st = f->in_dir(ctx, path, &found);
        if (st == LM_ERR_NOT_FOUND)
            continue;
        if (st != LM_OK)
            return st;
        if (can(f, need)) {
            *format = f;
            *file = found;
            return LM_OK;
        }
        lm_free(ctx, found);
        if (!other)
            other = f;
    }
    if (other)
        return lm_context_set_error(ctx, LM_ERR_NOT_FOUND,
                                    "directory '%s' holds a %s, not %s",
                                    path, other->name, needed(need));
    return lm_context_set_error(ctx, LM_ERR_NOT_FOUND,
                                "directory '%s' has neither "
                                "model.safetensors.index.json nor "
                                "model.safetensors (nor adapter_config.json "
                                "or a single .gguf file)", path);
}

static bool has_suffix(const char *path, const char *const *suffixes)
{
    size_t n = strlen(path);
    for (size_t k = 0; suffixes && suffixes[k]; k++) {
        size_t m = strlen(suffixes[k]);
        if (n >= m && !strcmp(path + n - m, suffixes[k]))
            return true;
    }
    return false;
}

/* The first bytes of a regular file (a FIFO or device is refused here,
 * by name, before anything could block on it). */
static lm_status read_head(lm_context *ctx, const char *path,
                           unsigned char *head, size_t *n)
{
    int fd;
    struct stat st;
    LM_TRY(lm__open_input(ctx, NULL, path, &fd, &st));
    ssize_t got;
    do
        got = read(fd, head, HEAD_BYTES);
    while (got < 0 && errno == EINTR);
    int err = errno;
    close(fd);
    if (got < 0)
        return lm_context_set_error(ctx, LM_ERR_IO, "cannot read '%s': %s",
                                    path, strerror(err));
    *n = (size_t)got;
    return LM_OK;
}

static lm_status detect_file(lm_context *ctx, const char *path,
                             const struct lm__format **format)
{
    for (size_t i = 0; lm__formats[i]; i++)
        if (has_suffix(path, lm__formats[i]->suffixes)) {
            *format = lm__formats[i];
            return LM_OK;
        }
    unsigned char head[HEAD_BYTES];
    size_t n = 0;
    LM_TRY(read_head(ctx, path, head, &n));
    const struct lm__format *match = NULL;
    for (size_t i = 0; lm__formats[i]; i++) {
        const struct lm__format *f = lm__formats[i];
        if (!f->sniff || !f->sniff(head, n))
            continue;
        if (match) /* the sniffs are disjoint; keep it that way */
            return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                        "'%s': ambiguous contents (%s or "
                                        "%s); rename it with the format's "
                                        "extension", path, match->name,
                                        f->name);
        match = f;
    }
    if (!match)
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "'%s': unknown model format (neither "
                                    "its name nor its first bytes say "
                                    "safetensors, GGUF or npz)", path);
    *format = match;
    return LM_OK;
}

lm_status lm__format_detect(lm_context *ctx, const char *path,
                            enum lm__format_need need,
                            const struct lm__format **format, char **file)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return lm_context_set_error(ctx, LM_ERR_IO, "cannot open '%s': %s",
                                    path, strerror(errno));
    if (S_ISDIR(st.st_mode))
        return detect_dir(ctx, path, need, format, file);
    const struct lm__format *f = NULL;
    LM_TRY(detect_file(ctx, path, &f));
    if (!can(f, need))
        return wrong_kind(ctx, path, f, need);
    *file = lm__strdup(ctx, path);
    if (!*file)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory opening '%s'", path);
    *format = f;
    return LM_OK;
}
