/* Dense tensors: owned or wrapping caller memory. */
#include <string.h>

#include "core/tensor_private.h"

size_t lm__numel_checked(int ndim, const int64_t *shape, bool *overflow)
{
    size_t n = 1;
    *overflow = false;
    for (int i = 0; i < ndim; i++) {
        uint64_t d = (uint64_t)shape[i];
        if (d && n > SIZE_MAX / d) {
            *overflow = true;
            return 0;
        }
        n *= (size_t)d;
    }
    return n;
}

bool lm__same_shape(const lm_tensor *a, const lm_tensor *b)
{
    if (a->ndim != b->ndim)
        return false;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d])
            return false;
    return true;
}

static lm_status check_shape(lm_context *ctx, lm_dtype dtype, int ndim,
                             const int64_t *shape, size_t *numel)
{
    if (!lm_dtype_size(dtype))
        return lm_context_set_error(ctx, LM_ERR_DTYPE,
                                    "tensor: unknown dtype %d", (int)dtype);
    if (ndim < 0 || ndim > LM_MAX_DIMS)
        return lm_context_set_error(ctx, LM_ERR_SHAPE,
                                    "tensor: ndim %d outside 0..%d", ndim,
                                    LM_MAX_DIMS);
    if (ndim > 0 && !shape)
        return lm_context_set_error(ctx, LM_ERR_INVALID_ARGUMENT,
                                    "tensor: shape is NULL for ndim %d", ndim);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0)
            return lm_context_set_error(ctx, LM_ERR_SHAPE,
                                        "tensor: dimension %d is negative "
                                        "(%lld)", i, (long long)shape[i]);
    bool overflow;
    size_t n = lm__numel_checked(ndim, shape, &overflow);
    if (overflow || n > SIZE_MAX / lm_dtype_size(dtype))
        return lm_context_set_error(ctx, LM_ERR_SHAPE,
                                    "tensor: byte size overflows size_t");
    *numel = n;
    return LM_OK;
}

static lm_status lazy_access(const lm_tensor *t)
{
    return lm_context_set_error(t->ctx, LM_ERR_STATE,
                                "tensor '%s' is lazy (host-provided): it "
                                "has no elements to access", t->lazy_name);
}

static lm_status new_tensor(lm_context *ctx, lm_dtype dtype, int ndim,
                            const int64_t *shape, size_t numel,
                            lm_tensor **out)
{
    lm_tensor *t = lm__calloc(ctx, 1, sizeof(*t));
    if (!t)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "tensor: out of memory");
    t->ctx = ctx;
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    t->numel = numel;
    *out = t;
    return LM_OK;
}

lm_status lm_tensor_create(lm_context *ctx, lm_dtype dtype, int ndim,
                           const int64_t *shape, lm_tensor **out)
{
    if (!ctx || !out)
        return LM_ERR_INVALID_ARGUMENT;
    size_t numel;
    LM_TRY(check_shape(ctx, dtype, ndim, shape, &numel));
    lm_tensor *t = NULL;
    LM_TRY(new_tensor(ctx, dtype, ndim, shape, numel, &t));
    /* Zeroed after asking for huge pages: a merge's output tensors are
     * fresh memory (core/workspace.c). */
    size_t bytes = (numel ? numel : 1) * lm_dtype_size(dtype);
    t->data = lm_alloc(ctx, bytes);
    if (t->data) {
        lm__huge_pages(t->data, bytes);
        memset(t->data, 0, bytes);
    }
    if (!t->data) {
        lm_free(ctx, t);
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "tensor: cannot allocate %zu bytes",
                                    numel * lm_dtype_size(dtype));
    }
    t->owns_data = true;
    *out = t;
    return LM_OK;
}

lm_status lm_tensor_wrap(lm_context *ctx, lm_dtype dtype, int ndim,
                         const int64_t *shape, void *data, size_t nbytes,
                         lm_tensor **out)
{
    if (!ctx || !out)
        return LM_ERR_INVALID_ARGUMENT;
    size_t numel;
    LM_TRY(check_shape(ctx, dtype, ndim, shape, &numel));
    size_t want = numel * lm_dtype_size(dtype);
    if (nbytes != want)
        return lm_context_set_error(ctx, LM_ERR_SHAPE,
                                    "tensor: wrap of %zu bytes but shape x "
                                    "%s needs %zu", nbytes,
                                    lm_dtype_name(dtype), want);
    if (!data && want)
        return lm_context_set_error(ctx, LM_ERR_INVALID_ARGUMENT,
                                    "tensor: wrap of NULL data");
    if (data && (uintptr_t)data % lm_dtype_size(dtype))
        return lm_context_set_error(ctx, LM_ERR_INVALID_ARGUMENT,
                                    "tensor: wrapped data is not aligned to "
                                    "its %zu-byte elements",
                                    lm_dtype_size(dtype));
    lm_tensor *t = NULL;
    LM_TRY(new_tensor(ctx, dtype, ndim, shape, numel, &t));
    t->data = data;
    t->owns_data = false;
    *out = t;
    return LM_OK;
}

lm_status lm_tensor_clone(lm_context *ctx, const lm_tensor *src,
                          lm_tensor **out)
{
    if (!ctx || !src || !out)
        return LM_ERR_INVALID_ARGUMENT;
    if (src->lazy_read)
        return lazy_access(src);
    lm_tensor *t = NULL;
    LM_TRY(lm_tensor_create(ctx, src->dtype, src->ndim, src->shape, &t));
    if (src->numel)
        memcpy(t->data, src->data, lm_tensor_nbytes(src));
    *out = t;
    return LM_OK;
}

void lm_tensor_destroy(lm_tensor *t)
{
    if (!t)
        return;
    if (t->owns_data)
        lm_free(t->ctx, t->data);
    lm_free(t->ctx, t);
}

lm_dtype lm_tensor_dtype(const lm_tensor *t) { return t ? t->dtype : LM_F32; }
int lm_tensor_ndim(const lm_tensor *t) { return t ? t->ndim : 0; }

int64_t lm_tensor_dim(const lm_tensor *t, int i)
{
    if (!t || i < 0 || i >= t->ndim)
        return -1;
    return t->shape[i];
}

const int64_t *lm_tensor_shape(const lm_tensor *t) { return t ? t->shape : NULL; }
size_t lm_tensor_numel(const lm_tensor *t) { return t ? t->numel : 0; }

size_t lm_tensor_nbytes(const lm_tensor *t)
{
    return t ? t->numel * lm_dtype_size(t->dtype) : 0;
}

void *lm_tensor_data(lm_tensor *t) { return t ? t->data : NULL; }
const void *lm_tensor_cdata(const lm_tensor *t) { return t ? t->data : NULL; }
int lm_tensor_is_wrapped(const lm_tensor *t) { return t && !t->owns_data; }

lm_status lm_tensor_get(const lm_tensor *t, size_t index, double *out)
{
    if (!t || !out)
        return LM_ERR_INVALID_ARGUMENT;
    if (t->lazy_read)
        return lazy_access(t);
    if (index >= t->numel)
        return lm_context_set_error(t->ctx, LM_ERR_OUT_OF_RANGE,
                                    "tensor: index %zu >= numel %zu", index,
                                    t->numel);
    return lm_convert((const char *)t->data + index * lm_dtype_size(t->dtype),
                      t->dtype, out, LM_F64, 1);
}

lm_status lm_tensor_set(lm_tensor *t, size_t index, double value)
{
    if (!t)
        return LM_ERR_INVALID_ARGUMENT;
    if (t->lazy_read)
        return lazy_access(t);
    if (index >= t->numel)
        return lm_context_set_error(t->ctx, LM_ERR_OUT_OF_RANGE,
                                    "tensor: index %zu >= numel %zu", index,
                                    t->numel);
    return lm_convert(&value, LM_F64,
                      (char *)t->data + index * lm_dtype_size(t->dtype),
                      t->dtype, 1);
}

lm_status lm_tensor_get_at(const lm_tensor *t, const int64_t *indices,
                           double *out)
{
    if (!t || (!indices && t->ndim) || !out)
        return LM_ERR_INVALID_ARGUMENT;
    if (t->lazy_read)
        return lazy_access(t);
    size_t flat = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (indices[i] < 0 || indices[i] >= t->shape[i])
            return lm_context_set_error(t->ctx, LM_ERR_OUT_OF_RANGE,
                                        "tensor: index %lld outside "
                                        "dimension %d of size %lld",
                                        (long long)indices[i], i,
                                        (long long)t->shape[i]);
        flat = flat * (size_t)t->shape[i] + (size_t)indices[i];
    }
    return lm_tensor_get(t, flat, out);
}

/* One read through the host's callback. A failure names the tensor and
 * keeps the message the host set with lm_context_set_error during the
 * call (if any), else the status's own text. */
static lm_status host_read(lm_context *ctx, const lm_tensor *t, void *raw,
                           size_t nbytes)
{
    uint64_t serial = lm__error_serial(ctx);
    lm_status st = t->lazy_read(t->lazy_name, raw, nbytes, t->lazy_user);
    if (st == LM_OK)
        return LM_OK;
    if (st > 0)
        st = LM_ERR_CALLBACK;
    char *host = lm__error_set_since(ctx, serial);
    lm_context_set_error(ctx, st, "reading tensor '%s' from the host "
                         "callback failed: %s", t->lazy_name,
                         host ? host : lm_strerror(st));
    lm_free(ctx, host);
    return st;
}

lm_status lm__read_f32(lm_context *ctx, const lm_tensor *t, float *dst)
{
    if (!t->lazy_read)
        return lm_convert(t->data, t->dtype, dst, LM_F32, t->numel);
    size_t nbytes = t->numel * lm_dtype_size(t->dtype);
    /* An f32 tensor is read in place; narrower dtypes are read into the
     * tail of dst and widened forwards, which never overwrites unread
     * input; f64 needs a scratch buffer. */
    void *raw;
    if (t->dtype == LM_F32)
        raw = dst;
    else if (t->dtype == LM_F64)
        raw = lm_alloc(ctx, nbytes);
    else
        raw = (char *)dst + t->numel * sizeof(float) - nbytes;
    if (!raw)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory reading tensor '%s'",
                                    t->lazy_name);
    lm_status st = host_read(ctx, t, raw, nbytes);
    if (st == LM_OK && t->dtype != LM_F32) {
        if (t->dtype == LM_F64) {
            lm_convert(raw, LM_F64, dst, LM_F32, t->numel);
        } else {
            const uint16_t *h = raw;
            for (size_t i = 0; i < t->numel; i++)
                dst[i] = t->dtype == LM_F16 ? lm_f16_to_f32(h[i])
                                            : lm_bf16_to_f32(h[i]);
        }
    }
    if (t->dtype == LM_F64)
        lm_free(ctx, raw);
    return st;
}


lm_status lm__read_f64(lm_context *ctx, const lm_tensor *t, double *dst)
{
    if (!t->lazy_read)
        return lm_convert(t->data, t->dtype, dst, LM_F64, t->numel);
    size_t nbytes = t->numel * lm_dtype_size(t->dtype);
    /* Every dtype is at most 8 bytes: read into the tail of dst and
     * widen forwards (f64 in place). */
    void *raw = (char *)dst + t->numel * sizeof(double) - nbytes;
    LM_TRY(host_read(ctx, t, raw, nbytes));
    if (t->dtype == LM_F64)
        return LM_OK;
    size_t w = lm_dtype_size(t->dtype);
    for (size_t i = 0; i < t->numel; i++) {
        float v;
        if (t->dtype == LM_F32)
            memcpy(&v, (char *)raw + i * w, sizeof(v));
        else {
            uint16_t h;
            memcpy(&h, (char *)raw + i * w, sizeof(h));
            v = t->dtype == LM_F16 ? lm_f16_to_f32(h) : lm_bf16_to_f32(h);
        }
        dst[i] = v;
    }
    return LM_OK;
}

lm_status lm__tensor_create_lazy(lm_context *ctx, lm_dtype dtype, int ndim,
                                 const int64_t *shape, lm_tensor_read_fn read,
                                 void *user, lm_tensor **out)
{
    size_t numel;
    LM_TRY(check_shape(ctx, dtype, ndim, shape, &numel));
    lm_tensor *t = NULL;
    LM_TRY(new_tensor(ctx, dtype, ndim, shape, numel, &t));
    t->lazy_read = read;
    t->lazy_user = user;
    t->lazy_name = "";
    *out = t;
    return LM_OK;
}
