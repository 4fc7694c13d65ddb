/* What the fused paths share (core/fused.c: linear rules,
 * core/fused_sparse.c: sparse rules). Not installed. */
#ifndef LM_CORE_FUSED_PRIVATE_H
#define LM_CORE_FUSED_PRIVATE_H

#include "core/file_source.h"
#include "core/linear_rule.h"
#include "core/lora_private.h"
#include "core/plan_private.h"
#include "core/simd.h"
#include "core/sparse_rule.h"

/* Elements per block: the block's buffers stay in L2 while every input
 * streams through them once. */
#define LM__FUSED_BLOCK 2048
/* Elements per parallel item: one tensor is split only when threads are
 * idle (the last tensors of a merge). */
#define LM__FUSED_CHUNK ((size_t)LM__FUSED_BLOCK * 256)
/* More models than this go the plain path (fixed arrays). */
#define LM__FUSED_MAX_MODELS 64
/* An item or block that needs the plain path (a non-finite value, a
 * selection the streaming pass could not settle). */
#define LM__FUSED_DECLINE ((lm_status)1)

#define LM__SAME_BASE 1

/* Where a task vector comes from. */
enum lm__fused_slot {
    LM__SLOT_MODEL,   /* model - base, element by element */
    LM__SLOT_ADAPTER, /* an adapter's update, formed a row block at a time */
    LM__SLOT_ZERO     /* an adapter that does not target the tensor */
};

struct lm__fused {
    lm_context *ctx;
    struct lm__linear_rule rule;
    const struct lm__sparse_rule *sparse; /* else the linear rule */
    const double *w;
    size_t k;
    const void *base;
    lm_dtype base_dt;
    const void *in[LM__FUSED_MAX_MODELS];
    lm_dtype in_dt[LM__FUSED_MAX_MODELS];
    /* The base's and the MODEL slots' files, read about 1 MiB of all
     * inputs at a time (fd -1: straight from base / in[m]). */
    struct lm__file_source base_src, src[LM__FUSED_MAX_MODELS];
    /* A MODEL slot read from the same bytes of the same file as the base
     * (LM__SAME_BASE) or as an earlier slot j (LM__SAME_BASE + 1 + j) —
     * a config listing the base among its models, as mergekit's linear
     * and average examples do — takes that input's read instead of its
     * own (0: its own read). */
    unsigned short same_as[LM__FUSED_MAX_MODELS];
    enum lm__fused_slot slot[LM__FUSED_MAX_MODELS];
    struct lm__lora_factors lora[LM__FUSED_MAX_MODELS]; /* ADAPTER slots */
    /* With adapters the tensor goes by row blocks of block_rows (the
     * plain path's lm__lora_delta blocks), cols elements per row. */
    bool by_rows;
    size_t cols, block_rows;
    bool wide;  /* an input is f64: the plain path's "wide" merge */
    bool check; /* non-finite values decline (the plain path reports) */
    const struct lm__simd *simd; /* the kernels, picked once per tensor */
    size_t n;
    void *dst; /* NULL: the output goes to sink's write_range by reads */
    lm_dtype out_dt;
    const lm_sink_vtable *sink;
    size_t sink_index;
};

/* A block's L2-resident buffers (f32 and f64). */
struct lm__fused_work {
    float *b, *x, *o;
    double *acc, *b64, *x64;
};

/* Where a block finds its inputs and puts its output: element i of the
 * base is element i - base_origin of `base` (origin 0: the tensor itself;
 * else a buffer the current file read filled), and so for each model;
 * element i of the output goes to out[i - out_origin]. */
struct lm__fused_view {
    const void *base;
    size_t base_origin;
    const void *in[LM__FUSED_MAX_MODELS];
    size_t origin[LM__FUSED_MAX_MODELS];
    void *out;
    size_t out_origin;
};

/* The linear merge of block [lo, lo + len) when no input is f64
 * (core/fused_narrow.c), in the build at hand (core/simd.h's
 * fused_narrow). LM_OK, an error or LM__FUSED_DECLINE. */
lm_status LM_SIMD(lm__fused_narrow)(const struct lm__fused *f,
                                   const struct lm__fused_view *io,
                                   struct lm__fused_work *w, size_t lo,
                                   size_t len);

/* Reading file-backed inputs (fused.c, for both fused paths). Elements
 * per read (a multiple of `block`, about 1 MiB of all inputs) and the
 * buffer bytes that takes; then, per read, elements [lo, lo + len) of
 * every input with an open file source into raw, and v pointing at them
 * (other inputs at their tensors; v->out at f->dst). */
size_t lm__fused_read_elems(const struct lm__fused *f, size_t block,
                            size_t *bytes);
void lm__fused_read_inputs(const struct lm__fused *f, char *raw, size_t lo,
                           size_t len, struct lm__fused_view *v);
/* bytes rounded up to a cache line. */
size_t lm__fused_line_up(size_t bytes);
/* Elements [lo, lo + len) of tensor `index`'s output (dtype dt), in
 * `out`, to the sink's write_range; a callback's positive status becomes
 * LM_ERR_CALLBACK. */
lm_status lm__fused_write_range(const lm_sink_vtable *sink, size_t index,
                                lm_dtype dt, const void *out, size_t lo,
                                size_t len);
/* Without an output buffer (f->dst NULL), elements [lo, lo + len) of the
 * output, in `out`, go to the sink's write_range. */
lm_status lm__fused_hand_over(const struct lm__fused *f, const void *out,
                              size_t lo, size_t len);

bool lm__fused_any_nonfinite_f64(const double *x, size_t n);
/* Elements [lo, lo + len) of src as f32 / f64: in place when src already
 * is, else converted into buf (the plain path's conversions; bf16 by
 * simd's kernel). */
const float *lm__fused_load_f32(const struct lm__simd *simd, const void *src,
                                lm_dtype dt, size_t lo, size_t len,
                                float *buf);
const double *lm__fused_load_f64(const void *src, lm_dtype dt, size_t lo,
                                 size_t len, double *buf);
/* False under LIBMERGE_FUSED=0 (the plain path forced). */
bool lm__fused_enabled(void);

/* The fused path of adapters (fused_lora.c): can tensor `name` take it
 * (a linear rule, every task an adapter, a 2-D base with storage)? */
bool lm__fused_lora_eligible(const lm_plan *p, const char *name,
                             const lm_tensor *base);
/* Merge it into dst (out_dt, the base's shape), or with dst NULL hand
 * it to sink's write_range block by block as tensor sink_index; *done
 * false when the plain path must (it then reports the problem). dst may
 * be the base's own storage. */
lm_status lm__fused_lora_merge(lm_plan *p, void *state, const char *name,
                               const lm_tensor *base, void *dst,
                               lm_dtype out_dt, const lm_sink_vtable *sink,
                               size_t sink_index, bool *done);

/* The sparse-rule merge of one tensor into f->dst (fused_sparse.c):
 * LM__FUSED_DECLINE when the plain path must do it. */
lm_status lm__fused_sparse_run(const struct lm__fused *f);

#endif
