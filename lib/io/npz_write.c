/* .npz writer: one .npy member per tensor (stored or deflated), a central
 * directory with zip64 records when sizes or offsets need them, written to
 * a temporary file that is fsync'd and renamed only on success. Fixed
 * timestamps keep the output byte-identical across runs. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "io/npy_header.h"
#include "io/atomic_file.h"
#include "libmerge/npz.h"

#define DOS_DATE_1980 0x21u
#define BIG 0xffffffffu

struct writer {
    lm_context *ctx;
    int fd;
    uint64_t at;
    bool failed;
};

struct entry {
    char *name;
    uint32_t crc, method;
    uint64_t csize, usize, local;
};

static void put(struct writer *w, const void *p, size_t n)
{
    const char *c = p;
    while (!w->failed && n) {
        ssize_t k = write(w->fd, c, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            w->failed = true;
            break;
        }
        c += k;
        n -= (size_t)k;
        w->at += (uint64_t)k;
    }
}

static void put16(unsigned char *p, uint32_t v) { p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8); }
static void put32(unsigned char *p, uint32_t v) { put16(p, v & 0xffff); put16(p + 2, v >> 16); }
static void put64(unsigned char *p, uint64_t v) { put32(p, (uint32_t)v); put32(p + 4, (uint32_t)(v >> 32)); }

/* Local header; sizes and CRC are patched in after the data. */
static void local_header(struct writer *w, const struct entry *e,
                         bool zip64)
{
    unsigned char h[30 + 20] = {0};
    size_t nlen = strlen(e->name);
    put32(h, 0x04034b50u);
    put16(h + 4, zip64 ? 45 : 20);
    put16(h + 8, e->method);
    put16(h + 12, DOS_DATE_1980);
    put16(h + 26, (uint32_t)nlen);
    put16(h + 28, zip64 ? 20 : 0);
    put(w, h, 30);
    put(w, e->name, nlen);
    if (zip64) {
        memset(h, 0, 20);
        put16(h, 1);
        put16(h + 2, 16);
        put(w, h, 20);
    }
}

static lm_status patch_local(struct writer *w, const struct entry *e,
                             bool zip64)
{
    unsigned char f[12];
    put32(f, e->crc);
    put32(f + 4, zip64 ? BIG : (uint32_t)e->csize);
    put32(f + 8, zip64 ? BIG : (uint32_t)e->usize);
    if (pwrite(w->fd, f, 12, (off_t)(e->local + 14)) != 12)
        w->failed = true;
    if (zip64) {
        unsigned char x[16];
        put64(x, e->usize);
        put64(x + 8, e->csize);
        off_t at = (off_t)(e->local + 30 + strlen(e->name) + 4);
        if (pwrite(w->fd, x, 16, at) != 16)
            w->failed = true;
    }
    return LM_OK;
}

/* Stores or deflates `n` bytes, updating the CRC and compressed size. */
static lm_status emit(struct writer *w, z_stream *z, struct entry *e,
                      const unsigned char *p, size_t n, bool last)
{
    e->crc = (uint32_t)crc32(e->crc, p, (uInt)n);
    e->usize += n;
    if (e->method == 0) {
        put(w, p, n);
        e->csize += n;
        return LM_OK;
    }
    unsigned char out[1 << 16];
    z->next_in = (unsigned char *)p;
    z->avail_in = (uInt)n;
    int rc;
    do {
        z->next_out = out;
        z->avail_out = sizeof(out);
        rc = deflate(z, last ? Z_FINISH : Z_NO_FLUSH);
        if (rc == Z_STREAM_ERROR)
            return LM_ERR_INTERNAL;
        size_t have = sizeof(out) - z->avail_out;
        put(w, out, have);
        e->csize += have;
    } while (z->avail_out == 0 || (last && rc != Z_STREAM_END));
    return LM_OK;
}

static lm_status write_member(struct writer *w, const char *name,
                              const lm_tensor *t, bool compress,
                              struct entry *e)
{
    lm_context *ctx = w->ctx;
    lm_dtype out_dtype = t->dtype == LM_BF16 ? LM_F32 : t->dtype;
    char header[1024];
    size_t hlen = lm__npy_format(header, sizeof(header), out_dtype, t->ndim,
                                 t->shape);
    if (!hlen)
        return lm_context_set_error(ctx, LM_ERR_SHAPE,
                                    "npz: cannot describe tensor '%s'", name);
    size_t numel = lm_tensor_numel(t),
           nbytes = numel * lm_dtype_size(out_dtype);
    e->name = lm_alloc(ctx, strlen(name) + 5);
    if (!e->name)
        return LM_ERR_OUT_OF_MEMORY;
    snprintf(e->name, strlen(name) + 5, "%s.npy", name);
    e->method = compress ? 8 : 0;
    e->crc = (uint32_t)crc32(0L, Z_NULL, 0);
    e->local = w->at;
    bool zip64 = (uint64_t)hlen + nbytes >= 0xffff0000u;
    local_header(w, e, zip64);
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (compress && deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED,
                                 -MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return LM_ERR_OUT_OF_MEMORY;
    lm_status st = emit(w, &z, e, (const unsigned char *)header, hlen, !nbytes);
    /* Data in 1 MiB slices, converted to the output dtype on the way. */
    size_t slice = (1u << 20) / lm_dtype_size(out_dtype);
    unsigned char *buf = out_dtype != t->dtype
                             ? lm_alloc(ctx, slice * lm_dtype_size(out_dtype))
                             : NULL;
    if (out_dtype != t->dtype && !buf)
        st = LM_ERR_OUT_OF_MEMORY;
    const unsigned char *src = lm_tensor_cdata(t);
    for (size_t i = 0; st == LM_OK && i < numel; i += slice) {
        size_t k = numel - i < slice ? numel - i : slice;
        const unsigned char *p = src + i * lm_dtype_size(t->dtype);
        if (buf) {
            st = lm_convert(p, t->dtype, buf, out_dtype, k);
            p = buf;
        }
        if (st == LM_OK)
            st = emit(w, &z, e, p, k * lm_dtype_size(out_dtype),
                      i + k == numel);
    }
    lm_free(ctx, buf);
    if (compress)
        deflateEnd(&z);
    if (st == LM_OK)
        st = patch_local(w, e, zip64);
    return st;
}

static void central_directory(struct writer *w, const struct entry *e,
                              size_t n)
{
    uint64_t start = w->at;
    for (size_t i = 0; i < n; i++) {
        bool big = e[i].usize >= BIG || e[i].csize >= BIG || e[i].local >= BIG;
        unsigned char h[46] = {0}, x[28] = {0};
        size_t nlen = strlen(e[i].name);
        put32(h, 0x02014b50u);
        put16(h + 4, 45);
        put16(h + 6, big ? 45 : 20);
        put16(h + 10, e[i].method);
        put16(h + 14, DOS_DATE_1980);
        put32(h + 16, e[i].crc);
        put32(h + 20, big ? BIG : (uint32_t)e[i].csize);
        put32(h + 24, big ? BIG : (uint32_t)e[i].usize);
        put16(h + 28, (uint32_t)nlen);
        put16(h + 30, big ? 28 : 0);
        put32(h + 38, 0644u << 16);
        put32(h + 42, big ? BIG : (uint32_t)e[i].local);
        put(w, h, 46);
        put(w, e[i].name, nlen);
        if (big) {
            put16(x, 1);
            put16(x + 2, 24);
            put64(x + 4, e[i].usize);
            put64(x + 12, e[i].csize);
            put64(x + 20, e[i].local);
            put(w, x, 28);
        }
    }
    uint64_t size = w->at - start, end64 = w->at;
    bool zip64 = n >= 0xffff || start >= BIG || size >= BIG;
    if (zip64) {
        unsigned char r[56] = {0}, l[20] = {0};
        put32(r, 0x06064b50u);
        put64(r + 4, 44);
        put16(r + 12, 45);
        put16(r + 14, 45);
        put64(r + 24, n);
        put64(r + 32, n);
        put64(r + 40, size);
        put64(r + 48, start);
        put(w, r, 56);
        put32(l, 0x07064b50u);
        put64(l + 8, end64);
        put32(l + 16, 1);
        put(w, l, 20);
    }
    unsigned char eocd[22] = {0};
    put32(eocd, 0x06054b50u);
    put16(eocd + 8, zip64 ? 0xffff : (uint32_t)n);
    put16(eocd + 10, zip64 ? 0xffff : (uint32_t)n);
    put32(eocd + 12, zip64 ? BIG : (uint32_t)size);
    put32(eocd + 16, zip64 ? BIG : (uint32_t)start);
    put(w, eocd, 22);
}

lm_status lm_npz_write(lm_context *ctx, const lm_model *model,
                       const char *path, const lm_npz_options *options)
{
    if (!ctx || !model || !path || !*path)
        return LM_ERR_INVALID_ARGUMENT;
    lm_npz_options o = LM_NPZ_OPTIONS_INIT;
    if (options) {
        if (options->struct_size < sizeof(o))
            return lm_context_set_error(ctx, LM_ERR_ABI, "npz: options "
                                        "struct_size %u too small",
                                        options->struct_size);
        o = *options;
    }
    size_t n = lm_model_count(model);
    for (size_t i = 0; i < n; i++)
        if (lm_model_at(model, i)->lazy_read)
            return lm_context_set_error(ctx, LM_ERR_UNSUPPORTED,
                                        "npz: cannot write lazy tensor '%s'",
                                        lm_model_name_at(model, i));
    struct entry *e = lm__calloc(ctx, n ? n : 1, sizeof(*e));
    if (!e)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "npz: out of memory writing '%s'", path);
    struct lm__atomic_file file;
    lm_status st = lm__atomic_open(ctx, path, &file);
    struct writer w = {ctx, file.fd, 0, false};
    for (size_t i = 0; st == LM_OK && i < n; i++)
        st = write_member(&w, lm_model_name_at(model, i),
                          lm_model_at(model, i), o.compress != 0, &e[i]);
    if (st == LM_OK)
        central_directory(&w, e, n);
    if (st == LM_OK && w.failed)
        st = lm_context_set_error(ctx, LM_ERR_IO, "npz: cannot write '%s': "
                                  "%s", path, strerror(errno ? errno : EIO));
    if (st == LM_OK)
        st = lm__atomic_commit(&file);
    else
        lm__atomic_discard(&file);
    for (size_t i = 0; i < n; i++)
        lm_free(ctx, e[i].name);
    lm_free(ctx, e);
    return st;
}
