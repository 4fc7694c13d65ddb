"""TaskVector: a task's change to a base model (fine-tuned minus base), as
a mapping of f32 numpy deltas that `merge` and `search` accept in place of
a fine-tuned model (lm_plan_add_task_vector).

    tv = libmerge.TaskVector(base, finetuned)      # deltas computed in C
    forget = -tv                                   # negation: forgetting
    merged = libmerge.merge("task_arithmetic", base, [m1, forget])
    tv.save("math.safetensors"); tv = libmerge.TaskVector.load("math.safetensors")

Arithmetic (negation, scaling, sums for analogies) is plain elementwise f32
on the arrays; a TaskVector may hold fewer tensors than the base, and the
library counts the missing ones as zero for that task."""
import ctypes

import numpy as np

from ._context import Context, L
from ._models import build_model, model_to_dict


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
        f = np.float32(factor)
        if not np.isfinite(f):
            raise ValueError("scale %r is not finite" % (factor,))
        return TaskVector.from_deltas({k: v * f for k, v in self.deltas.items()})

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
