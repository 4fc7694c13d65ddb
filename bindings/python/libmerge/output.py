"""merge_to: a merge streamed into files on disk (lm_plan_execute_to with a
file sink) or into a Python callable (a sink vtable of ctypes callbacks),
one tensor at a time, with memory bounded by a few tensors per
thread whatever the model's size. Nothing appears under the destination
unless every tensor was written (temporary names, fsync, rename)."""
import ctypes
import os

import numpy as np

from . import _lib
from ._context import Context, L, options
from ._merge import configure
from ._plan import Plan, check_weights
from ._tensor import _CODE_NUMPY, BF16, BFloat16Array, is_ml_dtypes_bf16
from .stats import Stats

__all__ = ["merge_to"]


def _strings(values, keep):
    arr = (ctypes.c_char_p * max(len(values), 1))(*[v.encode() for v in values])
    keep.append(arr)
    return arr


def _sink(ctx, dest, plan, metadata, shard_bytes, keep):
    """(lm_file_sink, lm_output_dir or None) for `dest`: a ".safetensors"
    or ".gguf" file, else a model directory committed as a whole."""
    keys, values = list(metadata), [str(metadata[k]) for k in metadata]
    sink = ctypes.c_void_p()
    path = os.fsencode(dest)
    if dest.endswith(".gguf"):
        opts = options(_lib._GgufOptions)
        opts.metadata_keys, opts.metadata_values = _strings(keys, keep), _strings(values, keep)
        opts.n_metadata = len(keys)
        ctx.check(L.lm_gguf_sink_create(ctx.ptr, path, ctypes.byref(opts), ctypes.byref(sink)))
        return sink, None
    opts = options(_lib._SafetensorsSinkOptions)
    opts.metadata_keys, opts.metadata_values = _strings(keys, keep), _strings(values, keep)
    opts.n_metadata = len(keys)
    opts.max_shard_bytes = int(shard_bytes)
    if dest.endswith(".safetensors") and not shard_bytes:
        ctx.check(L.lm_safetensors_sink_create(ctx.ptr, path, ctypes.byref(opts),
                                               ctypes.byref(sink)))
        return sink, None
    return None, opts


class _PySink:
    """An lm_sink_vtable calling fn(name, array) as each tensor completes
    (from the library's worker threads, under the GIL, in any order)."""

    def __init__(self, fn, base):
        self.fn, self.base, self.errors, self.outputs = fn, base, [], []

        def begin(outputs, n, user):
            for i in range(n):
                d = outputs[i].contents
                self.outputs.append((d.name.decode(), d.dtype,
                                     tuple(d.shape[k] for k in range(d.ndim)), d.nbytes))
            return 0

        def write(index, data, nbytes, user):
            try:
                name, code, shape, size = self.outputs[index]
                array = np.empty(shape, dtype=_CODE_NUMPY[code])
                if nbytes != size or nbytes != array.nbytes:
                    raise RuntimeError("tensor %r: %d bytes written, %d declared"
                                       % (name, nbytes, size))
                ctypes.memmove(array.ctypes.data, data, nbytes)
                if code == BF16:
                    like = self.base.get(name)
                    array = (array.view(like.dtype) if isinstance(like, np.ndarray) and
                             is_ml_dtypes_bf16(like.dtype) else array.view(BFloat16Array))
                self.fn(name, array)
                return 0
            except BaseException as e:  # re-raised after the execution
                self.errors.append(e)
                return LM_ERR_CALLBACK

        def end(commit, user):
            return 0

        self.callbacks = (_lib.SINK_BEGIN_FN(begin), _lib.SINK_WRITE_FN(write),
                          _lib.SINK_END_FN(end))
        vt = _lib._SinkVtable()
        vt.struct_size = ctypes.sizeof(_lib._SinkVtable)
        vt.begin, vt.write, vt.end = self.callbacks
        self.vtable = vt


LM_ERR_CALLBACK = -11


def _merge_to_callable(fn, method, base, models, stats, weights, threads, seed, opts,
                       params):
    sink = _PySink(fn, base)
    with Context(threads, seed) as ctx:
        plan = Plan(ctx, method, base, models, weights, stats, params)
        try:
            configure(ctx, plan, base, stats, **opts)
            st = L.lm_plan_execute_to(plan.ptr, ctypes.byref(sink.vtable))
            if sink.errors:
                raise sink.errors[0]
            plan.reraise()
            ctx.check(st)
        finally:
            plan.close()


def merge_to(dest, method, base, models, *, metadata=None, shard_bytes=0, overwrite=False,
             inputs=(), stats=None, weights=None, threads=0, seed=0, **kwargs):
    """Merge as `libmerge.merge` (same arguments, including its options
    purify, nonfinite, rows, transposed, out_dtype, tie, projections and
    progress) and stream the result into `dest`:

    - "NAME.safetensors": one safetensors file;
    - "NAME.gguf": one GGUF file;
    - a callable fn(name, array): each merged tensor as soon as it is
      complete, from the library's worker threads (under the GIL) in any
      order, so a host can store or upload it without the whole model in
      memory; an exception it raises stops the merge and is re-raised;
    - anything else: a model directory holding model.safetensors, or
      safetensors shards of at most `shard_bytes` data bytes each and
      model.safetensors.index.json; it appears complete or not at all, and
      replaces an existing non-empty directory only with overwrite=True.
      `inputs` lists files or directories the output must never touch.

    metadata: string key/values written into the file(s).
    Returns the list of files written (final paths; [] for a callable)."""
    models, weights = check_weights(models, weights)
    if stats is not None and not isinstance(stats, Stats):
        raise TypeError("stats must be a libmerge.Stats")
    option_names = ("purify", "nonfinite", "rows", "transposed", "out_dtype", "tie",
                    "projections", "progress", "subspaces")
    opts = {k: kwargs.pop(k) for k in option_names if k in kwargs}
    if callable(dest):
        _merge_to_callable(dest, method, base, models, stats, weights, threads, seed, opts,
                           kwargs)
        return []
    dest = os.fspath(dest)
    keep = []
    sink, odir = None, None
    with Context(threads, seed) as ctx:
        plan = Plan(ctx, method, base, models, weights, stats, kwargs)
        try:
            configure(ctx, plan, base, stats, **opts)
            sink, dir_opts = _sink(ctx, dest, plan, metadata or {}, shard_bytes, keep)
            if sink is None:
                o = options(_lib._OutputDirOptions)
                o.overwrite = 1 if overwrite else 0
                o.inputs = _strings([os.fspath(i) for i in inputs], keep)
                o.n_inputs = len(inputs)
                odir = ctypes.c_void_p()
                ctx.check(L.lm_output_dir_begin(ctx.ptr, os.fsencode(dest), ctypes.byref(o),
                                                ctypes.byref(odir)))
                staging = L.lm_output_dir_path(odir)
                sink = ctypes.c_void_p()
                # The base (plan's first model) decides the format: in memory,
                # that is safetensors.
                ctx.check(L.lm_file_sink_create_for(ctx.ptr, staging, plan._owned[0],
                                                    ctypes.byref(dir_opts), ctypes.byref(sink)))
            st = L.lm_plan_execute_to(plan.ptr, L.lm_file_sink_vtable(sink))
            plan.reraise()
            ctx.check(st)
            files = [os.fsdecode(L.lm_file_sink_file_at(sink, i))
                     for i in range(L.lm_file_sink_file_count(sink))]
            if odir:
                ctx.check(L.lm_output_dir_commit(odir))
                stage = os.fsdecode(staging)
                files = [os.path.join(dest, os.path.relpath(f, stage)) for f in files]
            return files
        finally:
            L.lm_file_sink_destroy(sink)
            if odir:
                L.lm_output_dir_destroy(odir)
            plan.close()
