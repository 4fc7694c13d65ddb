/* lm_stats files: "LMSTATS1", u32 version (1), u32 zero, u64 key count,
 * then per key: u64 model, u32 name length, name bytes, u64 d_in,
 * u64 n_rows, the upper triangle of X^T X row by row as f64; finally a
 * CRC-32 (zlib) of everything before it. All little-endian. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "io/atomic_file.h"
#include "io/input_file.h"
#include "stats/stats_internal.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "lm_stats files are written in host order; add byte swapping"
#endif

static const char MAGIC[8] = {'L', 'M', 'S', 'T', 'A', 'T', 'S', '1'};
#define MAX_NAME 4096

struct writer {
    FILE *f;
    uLong crc;
    bool ok;
};

static void put(struct writer *w, const void *p, size_t n)
{
    if (w->ok && fwrite(p, 1, n, w->f) != n)
        w->ok = false;
    w->crc = crc32(w->crc, p, (uInt)n);
}

lm_status lm__stats_save_file(const lm_stats *s, const char *path)
{
    struct lm__atomic_file file;
    LM_TRY(lm__atomic_open(s->ctx, path, &file));
    struct writer w = {fdopen(file.fd, "wb"), crc32(0L, Z_NULL, 0), true};
    if (!w.f) {
        lm__atomic_discard(&file);
        return lm_context_set_error(s->ctx, LM_ERR_OUT_OF_MEMORY,
                                    "stats: out of memory writing '%s'", path);
    }
    file.fd = dup(fileno(w.f)); /* the atomic file syncs and closes its own */
    uint32_t version = 1, zero = 0;
    uint64_t count = s->count;
    put(&w, MAGIC, 8);
    put(&w, &version, 4);
    put(&w, &zero, 4);
    put(&w, &count, 8);
    for (size_t i = 0; i < s->count; i++) {
        struct lm_stats_entry *e = s->entries[i];
        pthread_mutex_lock(&e->lock);
        uint64_t model = e->model, d = e->d_in, rows = e->n_rows;
        uint32_t len = (uint32_t)strlen(e->name);
        put(&w, &model, 8);
        put(&w, &len, 4);
        put(&w, e->name, len);
        put(&w, &d, 8);
        put(&w, &rows, 8);
        for (size_t r = 0; r < e->d_in; r++)
            put(&w, e->gram + r * e->d_in + r, (e->d_in - r) * sizeof(double));
        pthread_mutex_unlock(&e->lock);
    }
    uint32_t crc = (uint32_t)w.crc;
    if (w.ok && fwrite(&crc, 1, 4, w.f) != 4)
        w.ok = false;
    w.ok = w.ok && fflush(w.f) == 0;
    int saved = errno;
    if (fclose(w.f))
        w.ok = false;
    if (w.ok && file.fd >= 0)
        return lm__atomic_commit(&file);
    lm__atomic_discard(&file);
    return lm_context_set_error(s->ctx, LM_ERR_IO,
                                "stats: cannot write '%s': %s", path,
                                strerror(saved ? saved : EIO));
}

struct reader {
    const unsigned char *p, *end;
    const char *path;
    lm_context *ctx;
};

static lm_status take(struct reader *r, void *dst, size_t n, const char *what)
{
    if ((size_t)(r->end - r->p) < n)
        return lm_context_set_error(r->ctx, LM_ERR_FORMAT,
                                    "stats file '%s': truncated while "
                                    "reading %s", r->path, what);
    memcpy(dst, r->p, n);
    r->p += n;
    return LM_OK;
}

static lm_status parse(struct reader *r, lm_stats *s)
{
    char magic[8];
    uint32_t version = 0, zero = 0;
    uint64_t count = 0;
    LM_TRY(take(r, magic, 8, "the magic"));
    if (memcmp(magic, MAGIC, 8))
        return lm_context_set_error(r->ctx, LM_ERR_FORMAT,
                                    "'%s' is not an lm_stats file (bad "
                                    "magic)", r->path);
    LM_TRY(take(r, &version, 4, "the version"));
    LM_TRY(take(r, &zero, 4, "the header"));
    if (version != 1)
        return lm_context_set_error(r->ctx, LM_ERR_FORMAT,
                                    "stats file '%s': version %u is not "
                                    "supported (expected 1)", r->path,
                                    version);
    LM_TRY(take(r, &count, 8, "the key count"));
    if (count > (uint64_t)(r->end - r->p) / 28)
        return lm_context_set_error(r->ctx, LM_ERR_FORMAT,
                                    "stats file '%s': key count %llu does "
                                    "not fit in the file", r->path,
                                    (unsigned long long)count);
    for (uint64_t i = 0; i < count; i++) {
        uint64_t model = 0, d = 0, rows = 0;
        uint32_t len = 0;
        char name[MAX_NAME + 1];
        LM_TRY(take(r, &model, 8, "a key"));
        LM_TRY(take(r, &len, 4, "a name length"));
        if (len == 0 || len > MAX_NAME)
            return lm_context_set_error(r->ctx, LM_ERR_FORMAT,
                                        "stats file '%s': key %llu has a "
                                        "name length of %u", r->path,
                                        (unsigned long long)i, len);
        LM_TRY(take(r, name, len, "a name"));
        name[len] = '\0';
        LM_TRY(take(r, &d, 8, "d_in"));
        LM_TRY(take(r, &rows, 8, "the row count"));
        uint64_t tri = d * (d + 1) / 2;
        if (d == 0 || d > (1u << 20) ||
            tri > (uint64_t)(r->end - r->p) / sizeof(double))
            return lm_context_set_error(r->ctx, LM_ERR_FORMAT,
                                        "stats file '%s': '%s' has d_in "
                                        "%llu, which does not fit in the "
                                        "file", r->path, name,
                                        (unsigned long long)d);
        if (lm__stats_entry(s, (size_t)model, name, (size_t)d, false))
            return lm_context_set_error(r->ctx, LM_ERR_FORMAT,
                                        "stats file '%s': key '%s' of model "
                                        "%llu appears twice", r->path, name,
                                        (unsigned long long)model);
        struct lm_stats_entry *e =
            lm__stats_entry(s, (size_t)model, name, (size_t)d, true);
        if (!e)
            return lm_context_error_status(r->ctx);
        for (size_t row = 0; row < d; row++)
            LM_TRY(take(r, e->gram + row * d + row, (d - row) * sizeof(double),
                        "a Gram matrix"));
        for (size_t k = 0; k < d * d; k++)
            if (!isfinite(e->gram[k]))
                return lm_context_set_error(r->ctx, LM_ERR_FORMAT,
                                            "stats file '%s': '%s' holds a "
                                            "non-finite value", r->path,
                                            name);
        for (size_t a = 0; a < d; a++)
            for (size_t b = a + 1; b < d; b++)
                e->gram[b * d + a] = e->gram[a * d + b];
        e->n_rows = rows;
    }
    if (r->p != r->end)
        return lm_context_set_error(r->ctx, LM_ERR_FORMAT,
                                    "stats file '%s': %zu unexpected bytes "
                                    "after the last key", r->path,
                                    (size_t)(r->end - r->p));
    return LM_OK;
}

lm_status lm__stats_load_file(lm_context *ctx, const char *path,
                              lm_stats **out)
{
    /* Regular files only (a FIFO would block the open forever). */
    char *text = NULL;
    size_t size = 0;
    lm_status status = lm__read_input(ctx, "stats", path, SIZE_MAX - 1,
                                      &text, &size);
    if (status != LM_OK)
        return status;
    unsigned char *buf = (unsigned char *)text;
    if (size < 4)
        status = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                      "stats file '%s' is too short", path);
    if (status == LM_OK && (size < 8 || memcmp(buf, MAGIC, 8) != 0))
        status = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                      "'%s' is not an lm_stats file (bad "
                                      "magic)", path);
    if (status == LM_OK) {
        uint32_t stored;
        memcpy(&stored, buf + size - 4, 4);
        uLong crc = crc32(crc32(0L, Z_NULL, 0), buf, (uInt)(size - 4));
        if ((uint32_t)crc != stored)
            status = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                          "stats file '%s': checksum "
                                          "mismatch (corrupt or truncated)",
                                          path);
    }
    lm_stats *s = NULL;
    if (status == LM_OK)
        status = lm_stats_create(ctx, &s);
    if (status == LM_OK) {
        struct reader r = {buf, buf + size - 4, path, ctx};
        status = parse(&r, s);
    }
    lm_free(ctx, buf);
    if (status != LM_OK) {
        lm_stats_destroy(s);
        return status;
    }
    *out = s;
    return LM_OK;
}
