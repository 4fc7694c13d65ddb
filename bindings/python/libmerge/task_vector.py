"""TaskVector: a task's change to a base model (fine-tuned minus base), as
a mapping of f32 numpy deltas that `merge` and `search` accept in place of
a fine-tuned model (lm_plan_add_task_vector).

    tv = libmerge.TaskVector(base, finetuned)      # deltas computed in C
    forget = -tv                                   # negation: forgetting
    merged = libmerge.merge("task_arithmetic", base, [m1, forget])
    tv.save("math.safetensors"); tv = libmerge.TaskVector.load("math.safetensors")

Scaling and negation are the library's (lm_task_vector_scale: each value
times the factor in f64, rounded once to f32); sums for analogies are plain
elementwise f32 on the arrays. A TaskVector may hold fewer tensors than the
base, and the library counts the missing ones as zero for that task."""
import ctypes

import numpy as np

from ._context import Context, L
from ._models import build_model, model_to_dict
from ._tensor import to_numpy


class TaskVector:
    """name -> float32 delta array. Build with TaskVector(base, finetuned)
    or TaskVector.from_deltas(mapping)."""

    def __init__(self, base, finetuned):
        keep = []
        out = ctypes.c_void_p()
        tv = ctypes.c_void_p()
        b = f = None
        with Context() as ctx:
            try:
                b = build_model(ctx, base, "base", keep)
                f = build_model(ctx, finetuned, "finetuned", keep)
                ctx.check(L.lm_task_vector_create(ctx.ptr, b, f, ctypes.byref(tv)))
                ctx.check(L.lm_task_vector_to_model(tv, ctypes.byref(out)))
                names = {L.lm_model_name_at(out, i).decode(): None
                         for i in range(L.lm_model_count(out))}
                self.deltas = model_to_dict(out, names)
            finally:
                for m in (out, b, f):
                    if m:
                        L.lm_model_destroy(m)
                if tv:
                    L.lm_task_vector_destroy(tv)

    @classmethod
    def from_deltas(cls, deltas):
        """A TaskVector holding float32 copies of `deltas`."""
        tv = cls.__new__(cls)
        tv.deltas = {str(k): np.array(v, dtype=np.float32) for k, v in deltas.items()}
        if not tv.deltas:
            raise ValueError("a task vector needs at least one tensor")
        return tv

    @classmethod
    def from_lora(cls, adapter, base):
        """The dense task vector scale * B @ A of a `libmerge.LoraAdapter`
        for every tensor it targets, shaped like `base`'s tensors
        (lm_task_vector_from_lora)."""
        keep = []
        with Context() as ctx:
            lora = adapter._to_c(ctx, keep)
            b = tv = None
            try:
                b = build_model(ctx, base, "base", keep)
                tv = ctypes.c_void_p()
                ctx.check(L.lm_task_vector_from_lora(ctx.ptr, lora, b, ctypes.byref(tv)))
                return cls.from_deltas(_read(ctx, tv))
            finally:
                if tv:
                    L.lm_task_vector_destroy(tv)
                if b:
                    L.lm_model_destroy(b)
                L.lm_lora_destroy(lora)

    @classmethod
    def load(cls, path):
        """Read deltas saved by save() (any format libmerge.load reads)."""
        from .files import load
        return cls.from_deltas(load(path))

    def save(self, path):
        """Write the deltas (format by extension, as libmerge.save)."""
        from .files import save
        save(path, self.deltas)

    def __neg__(self):
        return self * -1.0

    def __mul__(self, factor):
        if not isinstance(factor, (int, float, np.number)):
            return NotImplemented
        keep = []
        with Context(threads=1) as ctx:
            model = build_model(ctx, self.deltas, "task vector", keep)
            tv = ctypes.c_void_p()
            try:
                # The handle copies the deltas; scaling it leaves self alone.
                ctx.check(L.lm_task_vector_from_model(ctx.ptr, model, ctypes.byref(tv)))
                ctx.check(L.lm_task_vector_scale(tv, float(factor)))
                return TaskVector.from_deltas(_read(ctx, tv))
            finally:
                if tv:
                    L.lm_task_vector_destroy(tv)
                L.lm_model_destroy(model)

    __rmul__ = __mul__

    def __add__(self, other):
        if not isinstance(other, TaskVector):
            return NotImplemented
        out = dict(self.deltas)
        for k, v in other.deltas.items():
            out[k] = out[k] + v if k in out else v
        return TaskVector.from_deltas(out)

    def __sub__(self, other):
        return self + (-other)

    def __len__(self):
        return len(self.deltas)

    def __repr__(self):
        return "TaskVector(%d tensors)" % len(self.deltas)


def _read(ctx, tv):
    """name -> float32 copy of every delta of an lm_task_vector."""
    out = {}
    for i in range(L.lm_task_vector_count(tv)):
        name = L.lm_task_vector_name_at(tv, i)
        t = ctypes.c_void_p()
        ctx.check(L.lm_task_vector_find(tv, name, ctypes.byref(t)))
        out[name.decode()] = to_numpy(L, t, None)
    return out


def add_to_plan(ctx, plan, tv, weight, what, keep, owned):
    """lm_plan_add_task_vector for a TaskVector: its deltas wrapped (no
    copy) into a model, turned into an lm_task_vector the plan borrows;
    `owned` collects (destructor, pointer) pairs for the plan's close()."""
    model = build_model(ctx, tv.deltas, what, keep)
    owned.append((L.lm_model_destroy, model))
    handle = ctypes.c_void_p()
    ctx.check(L.lm_task_vector_from_model(ctx.ptr, model, ctypes.byref(handle)))
    owned.append((L.lm_task_vector_destroy, handle))
    ctx.check(L.lm_plan_add_task_vector(plan, handle, weight))
