/* libmerge: sinks, where a plan execution's merged tensors go.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LIBMERGE_SINK_H
#define LIBMERGE_SINK_H

#include "libmerge/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Description of one output tensor, handed to a sink before merging.
 * Versioned like an options struct: struct_size (filled by whoever builds
 * the descriptor, sizeof(lm_tensor_desc) of its header) comes first and
 * fields are only appended, so a sink reads a field only when struct_size
 * covers it. Sinks receive an array of pointers to descriptors rather
 * than an array of descriptors, so that the element stride never depends
 * on which header the sink was compiled with. */
typedef struct lm_tensor_desc {
    uint32_t struct_size;
    const char *name;
    lm_dtype dtype;
    int ndim;
    int64_t shape[LM_MAX_DIMS];
    size_t nbytes;
} lm_tensor_desc;

/* Where merged tensors go (lm_plan_execute_to). Fill with designated
 * initialisers and set struct_size = sizeof(lm_sink_vtable). Every
 * callback takes `user` (the vtable's field) last, as every libmerge
 * callback does.
 *
 * begin:  once, before any tensor, with every output (in base order):
 *         outputs[i] describes output i, valid during the call. Lets a
 *         file sink lay out its header. Required.
 * buffer: optional; returns where tensor `index`'s `nbytes` output bytes
 *         should be written (e.g. inside an output mapping), or NULL to let
 *         the library use a scratch buffer and call `write`.
 * write:  tensor `index` is complete (in `data`, valid during the call).
 *         Called from worker threads, concurrently and in any order.
 *         Required.
 * end:    once, last, whenever begin succeeded; `commit` is 1 when every
 *         tensor was written, 0 when the execution failed or was cancelled
 *         (the sink must then leave nothing that looks complete). Its
 *         status is returned by lm_plan_execute_to when commit is 1.
 *         Required.
 * write_range: optional, read only when struct_size covers it; bytes
 *         [offset, offset + nbytes) of tensor `index`'s output. When set,
 *         the library may hand a tensor over in ranges as it merges them
 *         (instead of one `write` of the whole tensor), so it never holds
 *         a whole output tensor: the ranges of a tensor cover it, each
 *         range once, from worker threads, concurrently and in any order,
 *         and `write` is then not called for that tensor. Should a tensor
 *         be redone after some of its ranges were written (the fast path
 *         hands it to the general one, e.g. on a non-finite value), the
 *         whole tensor then comes through `write`, after every range call
 *         for it has returned: the last bytes written are the final ones.
 *         `buffer` takes precedence for the tensors it returns memory for.
 *         Added in 0.2 (appended; sinks built against older headers have
 *         a smaller struct_size and never receive it). A sink that wraps
 *         another by copying its vtable (lm_file_sink_vtable's, say) and
 *         replacing callbacks and `user` must replace or clear
 *         write_range too, or it is called with the wrapper's `user`. */
typedef struct lm_sink_vtable {
    uint32_t struct_size;
    lm_status (*begin)(const lm_tensor_desc *const *outputs, size_t n,
                       void *user);
    void *(*buffer)(size_t index, void *user);
    lm_status (*write)(size_t index, const void *data, size_t nbytes,
                       void *user);
    lm_status (*end)(int commit, void *user);
    void *user;
    lm_status (*write_range)(size_t index, uint64_t offset, const void *data,
                             size_t nbytes, void *user);
} lm_sink_vtable;

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_SINK_H */
