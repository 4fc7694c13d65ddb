/* .npz reader: the zip central directory (zip64 included) locates each
 * member; stored members are used in place, deflated ones inflated with
 * zlib; every member's CRC-32 is checked before it becomes a tensor. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "io/input_file.h"
#include "io/mapping.h"
#include "io/npy_header.h"
#include "io/formats_read.h"
#include "libmerge/npz.h"

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_EOCD 0x06054b50u
#define SIG_EOCD64 0x06064b50u
#define SIG_LOCATOR64 0x07064b50u

static uint32_t le16(const unsigned char *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static uint32_t le32(const unsigned char *p) { return le16(p) | le16(p + 2) << 16; }
static uint64_t le64(const unsigned char *p) { return le32(p) | (uint64_t)le32(p + 4) << 32; }

struct member {
    char name[512];
    uint32_t method, crc, flags;
    uint64_t csize, usize, local;
};

/* Bytes of the archive a member occupies, from its local header to the
 * end of its data; `cd` is its central-directory entry (for messages). */
struct extent {
    uint64_t begin, end, cd;
};

/* Deflate cannot expand more than 1032:1 (a 258-byte match costs at least
 * two bits), so a larger declared size is a lie told to make the reader
 * allocate. */
#define MAX_DEFLATE_RATIO 1032u

static lm_status bad(lm_context *ctx, const char *path, const char *why)
{
    return lm_context_set_error(ctx, LM_ERR_FORMAT, "%s: %s", path, why);
}

/* Finds the end-of-central-directory record (it ends with a comment of at
 * most 65535 bytes) and the directory's offset and entry count. */
static lm_status find_directory(lm_context *ctx, const char *path,
                                const unsigned char *z, size_t len,
                                uint64_t *cd_off, uint64_t *entries)
{
    if (len < 22)
        return bad(ctx, path, "too short for a zip archive (truncated?)");
    size_t lowest = len > 22 + 65535 ? len - 22 - 65535 : 0;
    for (size_t at = len - 22 + 1; at-- > lowest;) {
        if (le32(z + at) != SIG_EOCD)
            continue;
        *entries = le16(z + at + 10);
        *cd_off = le32(z + at + 16);
        if (*cd_off != 0xffffffffu && *entries != 0xffffu)
            return LM_OK;
        /* zip64: the locator sits just before the EOCD. */
        if (at < 20 || le32(z + at - 20) != SIG_LOCATOR64)
            return bad(ctx, path, "zip64 archive without its locator");
        uint64_t rec = le64(z + at - 20 + 8);
        if (rec > len - 56 || le32(z + rec) != SIG_EOCD64)
            return bad(ctx, path, "bad zip64 end-of-directory record");
        *entries = le64(z + rec + 32);
        *cd_off = le64(z + rec + 48);
        return LM_OK;
    }
    return bad(ctx, path, "not a zip archive (no end-of-directory record)");
}

/* Zip64 extra field: the 64-bit values replace the 32-bit fields that are
 * 0xffffffff, in the order usize, csize, local offset. */
static bool apply_zip64(const unsigned char *x, size_t n, struct member *m,
                        bool big_u, bool big_c, bool big_o)
{
    while (n >= 4) {
        uint32_t id = le16(x), sz = le16(x + 2);
        if (sz > n - 4)
            return false;
        if (id == 1) {
            const unsigned char *v = x + 4, *end = x + 4 + sz;
            if (big_u) { if (end - v < 8) return false; m->usize = le64(v); v += 8; }
            if (big_c) { if (end - v < 8) return false; m->csize = le64(v); v += 8; }
            if (big_o) { if (end - v < 8) return false; m->local = le64(v); }
            return true;
        }
        x += 4 + sz;
        n -= 4 + sz;
    }
    return !big_u && !big_c && !big_o;
}

static lm_status read_central(lm_context *ctx, const char *path,
                              const unsigned char *z, size_t len,
                              uint64_t *at, struct member *m)
{
    if (*at > len || len - *at < 46 || le32(z + *at) != SIG_CENTRAL)
        return bad(ctx, path, "corrupt zip central directory");
    const unsigned char *h = z + *at;
    m->flags = le16(h + 8);
    m->method = le16(h + 10);
    m->crc = le32(h + 16);
    m->csize = le32(h + 20);
    m->usize = le32(h + 24);
    uint32_t nlen = le16(h + 28), xlen = le16(h + 30), clen = le16(h + 32);
    m->local = le32(h + 42);
    if ((uint64_t)nlen + xlen + clen > len - *at - 46)
        return bad(ctx, path, "corrupt zip central directory");
    if (nlen == 0 || nlen >= sizeof(m->name) || memchr(h + 46, 0, nlen))
        return bad(ctx, path, "a zip member has an invalid name");
    memcpy(m->name, h + 46, nlen);
    m->name[nlen] = '\0';
    if (!apply_zip64(h + 46 + nlen, xlen, m, m->usize == 0xffffffffu,
                     m->csize == 0xffffffffu, m->local == 0xffffffffu))
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: member '%s' has a bad zip64 field",
                                    path, m->name);
    *at += 46 + (uint64_t)nlen + xlen + clen;
    return LM_OK;
}

/* The member's data inside the mapping, after its local header. */
static lm_status locate(lm_context *ctx, const char *path,
                        const unsigned char *z, size_t len,
                        const struct member *m, const unsigned char **data,
                        uint64_t *data_end)
{
    if (m->local > len || len - m->local < 30 ||
        le32(z + m->local) != SIG_LOCAL)
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: member '%s' has no local header",
                                    path, m->name);
    uint64_t start = m->local + 30 + le16(z + m->local + 26) +
                     le16(z + m->local + 28);
    if (start > len || m->csize > len - start)
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: member '%s' runs past the end of "
                                    "the archive (truncated?)", path, m->name);
    *data = z + start;
    if (data_end)
        *data_end = start + m->csize;
    return LM_OK;
}

static lm_status inflate_member(lm_context *ctx, const char *path,
                                const struct member *m,
                                const unsigned char *src, unsigned char *dst)
{
    z_stream s;
    memset(&s, 0, sizeof(s));
    if (inflateInit2(&s, -MAX_WBITS) != Z_OK)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "%s: out of memory inflating member "
                                    "'%s'", path, m->name);
    int rc = Z_OK;
    uint64_t in_left = m->csize, out_left = m->usize;
    s.next_in = (unsigned char *)src;
    s.next_out = dst;
    while (rc == Z_OK) {
        uInt in_chunk = in_left > (1u << 30) ? 1u << 30 : (uInt)in_left;
        uInt out_chunk = out_left > (1u << 30) ? 1u << 30 : (uInt)out_left;
        s.avail_in = in_chunk;
        s.avail_out = out_chunk;
        rc = inflate(&s, Z_NO_FLUSH);
        in_left -= in_chunk - s.avail_in;
        out_left -= out_chunk - s.avail_out;
        if (rc == Z_OK && !in_chunk && !out_chunk)
            rc = Z_BUF_ERROR;
        if (rc == Z_BUF_ERROR && !out_left && !in_left)
            rc = Z_DATA_ERROR;
    }
    inflateEnd(&s);
    if (rc != Z_STREAM_END || out_left)
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: member '%s' does not inflate to its "
                                    "declared %" PRIu64 " bytes", path,
                                    m->name, m->usize);
    return LM_OK;
}

static uint32_t crc_of(const unsigned char *p, uint64_t n)
{
    uLong crc = crc32(0L, Z_NULL, 0);
    while (n) {
        uInt chunk = n > (1u << 30) ? 1u << 30 : (uInt)n;
        crc = crc32(crc, p, chunk);
        p += chunk;
        n -= chunk;
    }
    return (uint32_t)crc;
}

/* Everything about a member that can be checked from the directory,
 * before anything is allocated for it. */
static lm_status check_member(lm_context *ctx, const char *path,
                              const struct member *m)
{
    size_t nlen = strlen(m->name);
    if (nlen < 5 || strcmp(m->name + nlen - 4, ".npy"))
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: member '%s' is not an .npy array",
                                    path, m->name);
    if (m->flags & 1)
        return lm_context_set_error(ctx, LM_ERR_UNSUPPORTED,
                                    "%s: member '%s' is encrypted", path,
                                    m->name);
    if (m->method != 0 && m->method != 8)
        return lm_context_set_error(ctx, LM_ERR_UNSUPPORTED,
                                    "%s: member '%s' uses zip compression "
                                    "method %u (stored and deflate only)",
                                    path, m->name, m->method);
    if (m->method == 0 && m->csize != m->usize)
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: stored member '%s' has different "
                                    "sizes", path, m->name);
    if (m->method == 8 && (m->csize > UINT64_MAX / MAX_DEFLATE_RATIO ||
                           m->usize > m->csize * MAX_DEFLATE_RATIO))
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: member '%s' declares %" PRIu64
                                    " bytes from %" PRIu64 " compressed, "
                                    "beyond deflate's maximum ratio of %u:1",
                                    path, m->name, m->usize, m->csize,
                                    MAX_DEFLATE_RATIO);
    return LM_OK;
}

static lm_status add_member(lm_context *ctx, const char *path,
                            const unsigned char *z, size_t len,
                            const struct member *m, lm_model *model)
{
    size_t nlen = strlen(m->name);
    const unsigned char *src = NULL;
    LM_TRY(locate(ctx, path, z, len, m, &src, NULL));
    size_t what_size = strlen(path) + nlen + 16;
    char *what = lm_alloc(ctx, what_size);
    if (!what)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "%s: out of memory reading member '%s'",
                                    path, m->name);
    snprintf(what, what_size, "%s: member '%s'", path, m->name);
    unsigned char *inflated = NULL;
    lm_status st = LM_OK;
    if (m->method == 8) {
        inflated = lm_alloc(ctx, m->usize ? (size_t)m->usize : 1);
        st = inflated ? inflate_member(ctx, path, m, src, inflated)
                      : lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                             "%s: out of memory reading "
                                             "member '%s' (%" PRIu64
                                             " bytes)", path, m->name,
                                             m->usize);
        src = inflated;
    }
    if (st == LM_OK && crc_of(src, m->usize) != m->crc)
        st = lm_context_set_error(ctx, LM_ERR_FORMAT, "%s: CRC-32 mismatch "
                                  "(corrupt archive)", what);
    lm_dtype dtype = LM_F32;
    int ndim = 0;
    int64_t shape[LM_MAX_DIMS];
    size_t off = 0;
    if (st == LM_OK)
        st = lm__npy_parse(ctx, what, src, (size_t)m->usize, &dtype, &ndim,
                           shape, &off);
    bool overflow = false;
    size_t nbytes = 0;
    if (st == LM_OK) {
        size_t numel = lm__numel_checked(ndim, shape, &overflow);
        overflow = overflow || numel > SIZE_MAX / lm_dtype_size(dtype);
        nbytes = overflow ? 0 : numel * lm_dtype_size(dtype);
        if (overflow)
            st = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                      "%s: the shape overflows (its size in "
                                      "bytes does not fit in 64 bits)", what);
        else if (nbytes != m->usize - off)
            st = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                      "%s: %" PRIu64 " data bytes, but the "
                                      "shape and dtype need %zu", what,
                                      (uint64_t)(m->usize - off), nbytes);
    }
    lm_free(ctx, what);
    char name[512];
    snprintf(name, sizeof(name), "%.*s", (int)(nlen - 4), m->name);
    lm_tensor *t = NULL;
    if (st == LM_OK) {
        if (!inflated && (uintptr_t)(src + off) % lm_dtype_size(dtype) == 0) {
            st = lm_tensor_wrap(ctx, dtype, ndim, shape,
                                (void *)(src + off), nbytes, &t);
        } else {
            st = lm_tensor_create(ctx, dtype, ndim, shape, &t);
            if (st == LM_OK && nbytes)
                memcpy(lm_tensor_data(t), src + off, nbytes);
        }
    }
    lm_free(ctx, inflated);
    if (st == LM_OK && (st = lm_model_add(model, name, t)) != LM_OK) {
        lm_tensor_destroy(t);
        if (st == LM_ERR_EXISTS)
            st = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                      "%s: two members named '%s'", path,
                                      m->name);
    }
    return lm__oom_in(ctx, st, path, "member", m->name);
}

static int by_begin(const void *a, const void *b)
{
    const struct extent *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* Every member checked from the directory, and no two members sharing
 * bytes: ten directory entries pointing at one 200 MB deflate stream
 * would otherwise inflate it ten times. With distinct streams and the
 * ratio bound the members' total size is at most 1032 times the file. */
static lm_status check_members(lm_context *ctx, const char *path,
                               const unsigned char *z, size_t len,
                               uint64_t cd, uint64_t entries,
                               struct extent *ext)
{
    for (uint64_t i = 0; i < entries; i++) {
        struct member m;
        ext[i].cd = cd;
        LM_TRY(read_central(ctx, path, z, len, &cd, &m));
        LM_TRY(check_member(ctx, path, &m));
        const unsigned char *data;
        LM_TRY(locate(ctx, path, z, len, &m, &data, &ext[i].end));
        ext[i].begin = m.local;
    }
    qsort(ext, (size_t)entries, sizeof(*ext), by_begin);
    for (uint64_t i = 1; i < entries; i++) {
        if (ext[i].begin >= ext[i - 1].end)
            continue;
        struct member a, b;
        uint64_t at = ext[i - 1].cd, bt = ext[i].cd;
        LM_TRY(read_central(ctx, path, z, len, &at, &a));
        LM_TRY(read_central(ctx, path, z, len, &bt, &b));
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: members '%s' and '%s' overlap in "
                                    "the archive (shared or overlapping "
                                    "data)", path, a.name, b.name);
    }
    return LM_OK;
}

static lm_status parse(lm_context *ctx, const char *path,
                       const struct lm_mapping *map, lm_model *model)
{
    const unsigned char *z = map->addr;
    uint64_t cd = 0, entries = 0;
    LM_TRY(find_directory(ctx, path, z, map->len, &cd, &entries));
    if (entries > map->len / 46)
        return bad(ctx, path, "zip entry count larger than the file allows");
    if (entries == 0)
        return bad(ctx, path, "the archive holds no arrays (an empty model)");
    struct extent *ext = lm__calloc(ctx, (size_t)entries, sizeof(*ext));
    if (!ext)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "%s: out of memory for %" PRIu64
                                    " members", path, entries);
    lm_status st = check_members(ctx, path, z, map->len, cd, entries, ext);
    lm_free(ctx, ext);
    for (uint64_t i = 0; st == LM_OK && i < entries; i++) {
        struct member m;
        st = read_central(ctx, path, z, map->len, &cd, &m);
        if (st == LM_OK)
            st = add_member(ctx, path, z, map->len, &m, model);
    }
    return st;
}

lm_status lm__npz_read_into(lm_context *ctx, const char *path,
                            lm_model *model)
{
    return lm__map_and_parse(ctx, path, model, parse);
}

lm_status lm_npz_read(lm_context *ctx, const char *path, lm_model **out)
{
    return lm__read_model(ctx, path, out, parse);
}
