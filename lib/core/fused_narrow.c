/* The fused linear merge of one block of inputs of no f64 (core/fused.c
 * runs it): built once per instruction set and picked at run time
 * (core/simd.h).
 * Every instruction set gives the same bits: the same correctly rounded
 * operations in the same order per element, never contracted into FMAs
 * (-ffp-contract=off), only more elements per instruction. */
#include "core/fused_private.h"
#include "core/fused_simd.h"
#include "core/simd.h"

/* acc += wt * d for an adapter's task vector d (zero when the adapter
 * does not target the tensor, as lm__lora_delta's memset). */
static lm_status add_adapter(const struct lm__fused *f, struct lm__fused_work *w, size_t t,
                             size_t lo, size_t len, double *restrict acc)
{
    double wt = f->w[t];
    if (f->slot[t] == LM__SLOT_ZERO) {
        const float zero = 0.0f;
        for (size_t j = 0; j < len; j++)
            acc[j] += wt * (double)zero;
        return LM_OK;
    }
    const float *d = w->x;
    lm__lora_rows(&f->lora[t], lo / f->cols, len / f->cols, w->x);
    if (f->check && lm__simd_any_nonfinite_f32(d, len))
        return LM__FUSED_DECLINE;
    for (size_t j = 0; j < len; j++)
        acc[j] += wt * (double)d[j];
    return LM_OK;
}

/* Inputs of no f64: as tensor_merge.c's load_inputs + run_strategy. With
 * adapters, [lo, lo + len) is a whole row block. */
lm_status LM_SIMD(lm__fused_narrow)(const struct lm__fused *f,
                                   const struct lm__fused_view *io,
                                   struct lm__fused_work *w, size_t lo,
                                   size_t len)
{
    const float *b = lm__simd_load_f32(io->base, f->base_dt,
                                        lo - io->base_origin, len, w->b);
    if (f->check && lm__simd_any_nonfinite_f32(b, len))
        return LM__FUSED_DECLINE;
    double *restrict acc = w->acc;
    lm__simd_acc_init(&f->rule, b, acc, len);
    for (size_t t = 0; t < f->k; t++) {
        if (f->slot[t] != LM__SLOT_MODEL) {
            LM_TRY(add_adapter(f, w, t, lo, len, acc));
            continue;
        }
        const float *x = lm__simd_load_f32(io->in[t], f->in_dt[t],
                                            lo - io->origin[t], len, w->x);
        if (f->check && lm__simd_any_nonfinite_f32(x, len))
            return LM__FUSED_DECLINE;
        double wt = f->w[t];
        for (size_t j = 0; j < len; j++) {
            float d = x[j] - b[j]; /* the task vector, rounded to f32 */
            acc[j] += wt * (double)d;
        }
    }
    char *dst = (char *)io->out +
                (lo - io->out_origin) * lm_dtype_size(f->out_dt);
    float *o = f->out_dt == LM_F32 ? (float *)dst : w->o;
    double mul = f->rule.mul, div = f->rule.div;
    for (size_t j = 0; j < len; j++) {
        float merged = (float)(mul * (acc[j] / div));
        o[j] = merged + b[j];
    }
    if (f->check && lm__simd_any_nonfinite_f32(o, len))
        return LM__FUSED_DECLINE;
    if (o == w->o && f->out_dt == LM_BF16)
        lm__simd_f32_to_bf16(o, (uint16_t *)dst, len);
    else if (o == w->o)
        lm_convert(o, LM_F32, dst, f->out_dt, len);
    return LM_OK;
}

