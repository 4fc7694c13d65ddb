"""Building an lm_plan from Python arguments (marshalling only)."""
import ctypes
import numbers

import numpy as np

from ._context import L
from ._models import build_model
from .nsc import LoraAdapter
from .task_vector import TaskVector, add_to_plan


ALL_MODELS = ctypes.c_size_t(-1).value


def _set_for(ctx, plan, name, value, tensor, n_models):
    """A number, or one number per model, for one tensor (None: all)."""
    key = name.encode()
    t = None if tensor is None else tensor.encode()
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != n_models:
            raise ValueError("parameter %r%s: %d values for %d models" % (
                name, "" if tensor is None else " of %r" % tensor,
                len(value), n_models))
        for m, v in enumerate(value):
            ctx.check(L.lm_plan_set_float_for(plan, key, float(v), t, m))
    else:
        ctx.check(L.lm_plan_set_float_for(plan, key, float(value), t,
                                          ALL_MODELS))


def set_param(ctx, plan, name, value, n_models=0):
    """A strategy parameter by its Python type: bool, number or str; a list
    (one number per model) or a dict (tensor name -> number or per-model
    list) sets per-model / per-tensor values (lm_plan_set_float_for)."""
    key = name.encode()
    if isinstance(value, (list, tuple, np.ndarray)):
        _set_for(ctx, plan, name, value, None, n_models)
    elif isinstance(value, dict):
        for tensor, v in value.items():
            _set_for(ctx, plan, name, v, str(tensor), n_models)
    elif isinstance(value, (bool, np.bool_)):
        ctx.check(L.lm_plan_set_string(plan, key,
                                       b"true" if value else b"false"))
    elif isinstance(value, numbers.Real):
        ctx.check(L.lm_plan_set_float(plan, key, float(value)))
    elif isinstance(value, str):
        ctx.check(L.lm_plan_set_string(plan, key, value.encode()))
    else:
        raise TypeError("parameter %r: expected a number, bool or str, got "
                        "%s" % (name, type(value).__name__))


def check_weights(models, weights):
    """The models as a list and one float weight per model (default 1.0)."""
    models = list(models)
    weights = [1.0] * len(models) if weights is None else [float(w) for w in weights]
    if len(weights) != len(models):
        raise ValueError("weights has %d entries for %d models" %
                         (len(weights), len(models)))
    return models, weights


class Plan:
    """An lm_plan with its base, models and statistics, destroyed (with the
    models it wraps) by close()."""

    def __init__(self, ctx, method, base, models, weights, stats, params):
        self.ctx = ctx
        self.ptr = ctypes.c_void_p()
        self._keep, self._owned, self._handles = [], [], []
        self.errors = []  # exceptions raised by Python callbacks during a call
        try:
            ctx.check(L.lm_plan_create(ctx.ptr, method.encode(), ctypes.byref(self.ptr)))
            # A load-time merger may go without a base (libmerge.Merger).
            if base is not None:
                self._add(build_model(ctx, base, "base", self._keep))
                ctx.check(L.lm_plan_set_base(self.ptr, self._owned[-1]))
            for i, (m, w) in enumerate(zip(models, weights)):
                if isinstance(m, LoraAdapter):
                    # Kept factored; the plan borrows the lm_lora.
                    lora = m._to_c(ctx, self._keep)
                    self._handles.append((L.lm_lora_destroy, lora))
                    ctx.check(L.lm_plan_add_lora(self.ptr, lora, w))
                    continue
                if isinstance(m, TaskVector):
                    add_to_plan(ctx, self.ptr, m, w, "task vector %d" % i,
                                self._keep, self._handles)
                    continue
                self._add(build_model(ctx, m, "model %d" % i, self._keep))
                ctx.check(L.lm_plan_add_model(self.ptr, self._owned[-1], w))
            # After the models: per-model values name them by index.
            for name, value in params.items():
                set_param(ctx, self.ptr, name, value, len(models))
            if stats is not None:
                ctx.check(L.lm_plan_set_stats(self.ptr, stats._ptr))
        except BaseException:
            self.close()
            raise

    def reraise(self):
        """Raise the first exception a Python callback raised."""
        if self.errors:
            e, self.errors = self.errors[0], []
            raise e

    def _add(self, model):
        self._owned.append(model)

    def close(self):
        if self.ptr:
            L.lm_plan_destroy(self.ptr)
            self.ptr = None
        for m in self._owned:
            L.lm_model_destroy(m)
        self._owned = []
        # Task vectors after the plan that borrowed them, each before the
        # model its deltas wrap.
        for destroy, handle in reversed(self._handles):
            destroy(handle)
        self._handles = []
