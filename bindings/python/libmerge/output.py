"""merge_to: a merge streamed into files on disk (lm_plan_execute_to with a
file sink), one tensor at a time, with memory bounded by a few tensors per
thread whatever the model's size. Nothing appears under the destination
unless every tensor was written (temporary names, fsync, rename)."""
import ctypes
import os

from . import _lib
from ._context import Context, L, options
from ._merge import configure
from ._plan import Plan, check_weights
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


def merge_to(dest, method, base, models, *, metadata=None, shard_bytes=0, overwrite=False,
             inputs=(), stats=None, weights=None, threads=0, seed=0, **kwargs):
    """Merge as `libmerge.merge` (same arguments, including its options
    purify, nonfinite, rows, transposed, out_dtype, tie, projections and
    progress) and stream the result into `dest`:

    - "NAME.safetensors": one safetensors file;
    - "NAME.gguf": one GGUF file;
    - anything else: a model directory holding model.safetensors, or
      safetensors shards of at most `shard_bytes` data bytes each and
      model.safetensors.index.json; it appears complete or not at all, and
      replaces an existing non-empty directory only with overwrite=True.
      `inputs` lists files or directories the output must never touch.

    metadata: string key/values written into the file(s).
    Returns the list of files written (final paths)."""
    dest = os.fspath(dest)
    models, weights = check_weights(models, weights)
    if stats is not None and not isinstance(stats, Stats):
        raise TypeError("stats must be a libmerge.Stats")
    option_names = ("purify", "nonfinite", "rows", "transposed", "out_dtype", "tie",
                    "projections", "progress")
    opts = {k: kwargs.pop(k) for k in option_names if k in kwargs}
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
