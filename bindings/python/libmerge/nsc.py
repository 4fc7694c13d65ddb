"""NSC (null-space compression) LoRA merging: adapters and the optimiser
state. The PyTorch driver is `libmerge.torch.nsc_merge`; see
docs/methods/nsc.md."""
import ctypes
import os

import numpy as np

from . import _Context, _L, _lib
from ._context import options
from ._errors import error_for as _error_for
from ._tensor import prepare, to_numpy

__all__ = ["LoraAdapter", "NSC"]  # merge_with_forward: experimental, by module


def _wrap(ctx, array, keep):
    """An lm_tensor viewing `array` (kept alive through `keep`)."""
    array, code = prepare("tensor", array)
    keep.append(array)
    shape = (ctypes.c_int64 * array.ndim)(*array.shape)
    t = ctypes.c_void_p()
    ctx.check(_L.lm_tensor_wrap(ctx.ptr, code, array.ndim, shape,
                                ctypes.c_void_p(array.ctypes.data),
                                array.nbytes, ctypes.byref(t)))
    return t


class LoraAdapter:
    """One task's LoRA update: `factors` maps a base tensor name
    ("<module>.weight") to (A [r, in], B [out, r], scale), the update being
    scale * B @ A."""

    def __init__(self, factors, *, transposed=()):
        """transposed: targets whose base tensor is stored [in, out] (GPT-2
        Conv1D): the update is added as (scale * B @ A)^T there
        (lm_lora_set_transposed)."""
        self.factors = {}
        for target, (a, b, scale) in factors.items():
            a, b = np.asarray(a), np.asarray(b)
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
                raise ValueError("LoRA factors for %r: A must be [r, in] and B "
                                 "[out, r], got %s and %s" % (target, a.shape, b.shape))
            self.factors[target] = (a, b, float(scale))
        self.transposed = set(transposed)
        unknown = self.transposed - set(self.factors)
        if unknown:
            raise ValueError("transposed names targets the adapter lacks: %s" % sorted(unknown))

    @classmethod
    def _from_c(cls, lora):
        factors, transposed = {}, []
        for i in range(_L.lm_lora_count(lora)):
            name = ctypes.c_char_p()
            a, b = ctypes.c_void_p(), ctypes.c_void_p()
            scale = ctypes.c_double()
            st = _L.lm_lora_at(lora, i, ctypes.byref(name), ctypes.byref(a),
                               ctypes.byref(b), ctypes.byref(scale))
            if st:
                raise _error_for(st, "LoRA adapter entry %d: %s" % (i, _L.lm_strerror(st).decode()))
            factors[name.value.decode()] = (to_numpy(_L, a, None),
                                            to_numpy(_L, b, None), scale.value)
            if _L.lm_lora_is_transposed(lora, name.value):
                transposed.append(name.value.decode())
        return cls(factors, transposed=transposed)

    @classmethod
    def _read(cls, reader, path):
        with _Context(threads=1) as ctx:
            lora = ctypes.c_void_p()
            ctx.check(reader(ctx.ptr, os.fsencode(str(path)), ctypes.byref(lora)))
            try:
                return cls._from_c(lora)
            finally:
                _L.lm_lora_destroy(lora)

    @classmethod
    def from_peft(cls, path):
        """Read a PEFT adapter directory (adapter_config.json +
        adapter_model.safetensors) with libmerge's reader."""
        return cls._read(_L.lm_peft_read, path)

    @classmethod
    def load(cls, path, *, format=None):
        """Read an adapter in any format libmerge reads (lm_lora_open: a
        PEFT directory or a llama.cpp GGUF adapter); format="gguf" reads
        `path` as a GGUF adapter whatever its name (lm_gguf_read_lora),
        format="peft" as a PEFT directory."""
        readers = {None: _L.lm_lora_open, "gguf": _L.lm_gguf_read_lora,
                   "peft": _L.lm_peft_read}
        if format not in readers:
            raise ValueError("format must be None, 'gguf' or 'peft'")
        return cls._read(readers[format], path)

    def _to_c(self, ctx, keep):
        lora = ctypes.c_void_p()
        ctx.check(_L.lm_lora_create(ctx.ptr, ctypes.byref(lora)))
        try:
            for target, (a, b, scale) in self.factors.items():
                ta, tb = _wrap(ctx, a, keep), _wrap(ctx, b, keep)
                st = _L.lm_lora_add(lora, target.encode(), ta, tb, scale)
                if st:
                    _L.lm_tensor_destroy(ta)
                    _L.lm_tensor_destroy(tb)
                    ctx.check(st)
            for target in sorted(getattr(self, "transposed", ())):
                ctx.check(_L.lm_lora_set_transposed(lora, target.encode(), 1))
        except BaseException:
            _L.lm_lora_destroy(lora)
            raise
        return lora


def _f32_rows(z):
    z = np.asarray(z)
    return np.ascontiguousarray(z.reshape(-1, z.shape[-1]), dtype=np.float32)


class NSC:
    """The coefficients lambda[module][task] of W0 + sum_k lambda_k s_k B_k A_k
    and their optimiser (AdamW, released defaults: init 0.4, weight decay
    0.01). Modules are named like the adapters' targets ("<module>.weight").
    Not thread-safe across methods that change coefficients."""

    def __init__(self, adapters, *, init=None, lr=None, betas=None,
                 weight_decay=None, eps=None, ridge=None, lambda_min=None,
                 lambda_max=None, trust_radius=None, seed=0):
        """Options left at None take the library's defaults
        (lm_nsc_options_init: lr 1e-3, betas (0.9, 0.999), weight decay
        0.01, eps 1e-8, ridge 1e-8; init None = the released 0.4). The
        safeguards (not in the released code): every update is projected
        onto [lambda_min, lambda_max] (default [0, inf)) and onto
        init +- trust_radius (default inf); lambda_min=-inf is the
        released, unconstrained optimiser."""
        adapters = [a if isinstance(a, LoraAdapter) else LoraAdapter.from_peft(a)
                    if isinstance(a, (str, bytes)) or hasattr(a, "__fspath__")
                    else LoraAdapter(a) for a in adapters]
        self._ctx = _Context(threads=1, seed=seed)
        self._ptr = ctypes.c_void_p()
        opts = options(_lib._NscOptions)
        given = {"init": init, "lr": lr, "adam_eps": eps, "weight_decay": weight_decay,
                 "ridge": ridge, "lambda_min": lambda_min, "lambda_max": lambda_max,
                 "trust_radius": trust_radius,
                 "beta1": None if betas is None else betas[0],
                 "beta2": None if betas is None else betas[1]}
        for field, value in given.items():
            if value is not None:
                setattr(opts, field, float(value))
        keep, loras = [], []
        try:
            for a in adapters:
                loras.append(a._to_c(self._ctx, keep))
            arr = (ctypes.c_void_p * len(loras))(*[l.value for l in loras])
            self._ctx.check(_L.lm_nsc_create(self._ctx.ptr, arr, len(loras),
                                             ctypes.byref(opts), ctypes.byref(self._ptr)))
        finally:
            for l in loras:
                _L.lm_lora_destroy(l)
        self._describe()

    @classmethod
    def _borrow(cls, ptr, ctx):
        """A view of an lm_nsc the library owns (a plan's optimiser, inside
        its forward callback): usable for the call, never destroyed here."""
        nsc = cls.__new__(cls)
        nsc._ptr, nsc._ctx, nsc._borrowed = ctypes.c_void_p(ptr), ctx, True
        nsc._describe()
        return nsc

    def _describe(self):
        self.n_tasks = _L.lm_nsc_task_count(self._ptr)
        self.modules = []
        self._shapes = {}
        for i in range(_L.lm_nsc_module_count(self._ptr)):
            d_out, d_in = ctypes.c_int64(), ctypes.c_int64()
            name = _L.lm_nsc_module_at(self._ptr, i, ctypes.byref(d_out),
                                         ctypes.byref(d_in)).decode()
            self.modules.append(name)
            self._shapes[name] = (d_out.value, d_in.value)

    def close(self):
        if getattr(self, "_borrowed", False):
            self._ptr = None
            return
        if getattr(self, "_ptr", None):
            _L.lm_nsc_destroy(self._ptr)
            self._ptr = None
        if getattr(self, "_ctx", None):
            self._ctx.close()

    def __del__(self):
        self.close()

    def _module(self, name):
        index = ctypes.c_size_t()
        if _L.lm_nsc_module_find(self._ptr, str(name).encode(), ctypes.byref(index)):
            _L.lm_context_clear_error(self._ctx.ptr)
            raise KeyError("NSC: no adapter targets %r (modules: %s)" %
                           (name, ", ".join(self.modules)))
        return index.value

    def shape(self, module):
        return self._shapes[self.modules[self._module(module)]]

    def lambdas(self, module):
        out = (ctypes.c_double * self.n_tasks)()
        self._ctx.check(_L.lm_nsc_get_lambdas(self._ptr, self._module(module), out))
        return np.array(out[:])

    def set_lambdas(self, module, values):
        values = (ctypes.c_double * self.n_tasks)(*[float(v) for v in values])
        self._ctx.check(_L.lm_nsc_set_lambdas(self._ptr, self._module(module), values))

    def set_frozen(self, module, frozen=True):
        """Freeze a module's coefficients: no SPSA perturbation, no update
        (for modules whose gradient is exactly zero)."""
        self._ctx.check(_L.lm_nsc_set_frozen(self._ptr, self._module(module), int(bool(frozen))))

    def ratio(self, task, module, z, grad_scale=None):
        """Mean null-space ratio of task's A over the rows of z (..., d_in);
        with grad_scale, also grad_scale * d(mean)/dz (float32, z's shape)."""
        shape = np.shape(z)
        rows = _f32_rows(z)
        mean = ctypes.c_double()
        grad = np.empty_like(rows) if grad_scale is not None else None
        self._ctx.check(_L.lm_nsc_ratio(
            self._ptr, int(task), self._module(module), ctypes.c_void_p(rows.ctypes.data),
            rows.shape[0], rows.shape[1], ctypes.byref(mean),
            ctypes.c_void_p(grad.ctypes.data) if grad is not None else None,
            float(grad_scale or 0.0)))
        return mean.value if grad is None else (mean.value, grad.reshape(shape))

    def materialize(self, module, base, out=None):
        """W0 + sum_k lambda_k s_k B_k A_k as a new float32 array, or written
        into `out` (a C-contiguous float32/float64/bfloat16 array)."""
        keep = []
        if out is None:
            out = np.empty(self.shape(module), np.float32)
        if not out.flags.c_contiguous:
            raise ValueError("materialize: out must be C-contiguous")
        tb = _wrap(self._ctx, np.asarray(base), keep)
        to = _wrap(self._ctx, out, keep)
        try:
            self._ctx.check(_L.lm_nsc_materialize(self._ptr, self._module(module), tb, to))
        finally:
            _L.lm_tensor_destroy(tb)
            _L.lm_tensor_destroy(to)
        return out

    def accumulate(self, module, weight_grad):
        """Adds dL/dlambda from the weight gradient dL/dW (d_out, d_in) of a
        module to the pending step; returns the per-task values."""
        keep = []
        g = _wrap(self._ctx, np.ascontiguousarray(weight_grad, dtype=np.float32), keep)
        out = (ctypes.c_double * self.n_tasks)()
        try:
            self._ctx.check(_L.lm_nsc_accumulate(self._ptr, self._module(module), g, out))
        finally:
            _L.lm_tensor_destroy(g)
        return np.array(out[:])

    def step(self):
        """One AdamW step from the accumulated gradients (then cleared)."""
        self._ctx.check(_L.lm_nsc_step(self._ptr))

    def save_coefficients(self, path, task_names=None):
        """Write the coefficients as a table (JSON, docs/methods/nsc.md)
        that merge("nsc", ..., coefficients=path) and `lmerge run` read
        back (lm_nsc_save_coefficients); task_names: one string per task
        (default "task0", ...)."""
        names = None
        if task_names is not None:
            task_names = [str(n) for n in task_names]
            if len(task_names) != self.n_tasks:
                raise ValueError("save_coefficients: %d task names for %d tasks" %
                                 (len(task_names), self.n_tasks))
            names = (ctypes.c_char_p * self.n_tasks)(*[n.encode() for n in task_names])
        self._ctx.check(_L.lm_nsc_save_coefficients(self._ptr, str(path).encode(), names))

    def load_coefficients(self, path):
        """Replace every coefficient with a table's (lm_nsc_load_coefficients:
        it must list exactly these modules and tasks)."""
        self._ctx.check(_L.lm_nsc_load_coefficients(self._ptr, str(path).encode()))

    def observe(self, task, module, z):
        """Inside an `spsa` evaluation: report inputs z of a module."""
        rows = _f32_rows(z)
        self._ctx.check(_L.lm_nsc_observe(self._ptr, int(task), self._module(module),
                                          ctypes.c_void_p(rows.ctypes.data),
                                          rows.shape[0], rows.shape[1]))

    def spsa(self, evaluate, *, steps=None, perturbation=None, lr=None, first_step=0):
        """Gradient-free optimisation: evaluate(task, step) must run the
        merged model (materialize the modules first) on one unlabeled batch
        of `task` and call self.observe(task, module, inputs) at the target
        modules. Returns (objective before, objective after, curve).
        Options left at None take the library's defaults
        (lm_nsc_spsa_options_init: 100 steps, perturbation 0.05, lr 1e-3).
        `first_step` numbers the steps (and their perturbations) from
        there, so a run can continue in chunks."""
        errors = []

        def on_eval(nsc, task, step, user):
            try:
                evaluate(int(task), int(step))
            except BaseException as e:  # re-raised after the C call
                errors.append(e)
                return 1
            return 0

        callback = _lib.NSC_EVAL_FN(on_eval)
        opts = options(_lib._NscSpsaOptions)
        if steps is not None:
            opts.steps = int(steps)
        if perturbation is not None:
            opts.perturbation = float(perturbation)
        if lr is not None:
            opts.lr = float(lr)
        opts.first_step = int(first_step)
        steps = opts.steps
        first, last = ctypes.c_double(), ctypes.c_double()
        curve = (ctypes.c_double * max(int(steps), 1))()
        st = _L.lm_nsc_spsa(self._ptr, ctypes.byref(opts), callback, None,
                            ctypes.byref(first), ctypes.byref(last), curve)
        if errors:
            raise errors[0]
        self._ctx.check(st)
        return first.value, last.value, list(curve[:int(steps)])


def merge_with_forward(base, adapters, evaluate, *, weights=None, steps=None,
                       perturbation=None, lr=None, init=None, threads=0, seed=0,
                       coefficients=None):
    """Merge LoRA `adapters` (LoraAdapter, PEFT directories or factor dicts)
    into `base` with the "nsc" strategy, the plan running NSC's gradient-free
    optimiser itself before merging (lm_plan_set_nsc_forward):
    evaluate(nsc, task, step) gets an NSC view and must materialize the
    modules it needs, run the model on one batch of `task` and report the
    target modules' inputs with nsc.observe(task, module, inputs). Options
    left at None take the library's defaults (lm_nsc_spsa_options_init,
    lm_nsc_options_init). Returns the merged dict; `coefficients`: a path
    where the optimised table is saved."""
    from ._context import Context
    from ._models import model_to_dict
    from ._plan import Plan, check_weights
    adapters = [a if isinstance(a, LoraAdapter) else LoraAdapter.from_peft(a)
                if isinstance(a, (str, bytes)) or hasattr(a, "__fspath__")
                else LoraAdapter(a) for a in adapters]
    adapters, weights = check_weights(adapters, weights)
    errors = []
    with Context(threads, seed) as ctx:
        def on_eval(nsc_ptr, task, step, user):
            try:
                view = NSC._borrow(nsc_ptr, ctx)
                evaluate(view, int(task), int(step))
            except BaseException as e:  # re-raised after the C call
                errors.append(e)
                return 1
            return 0

        callback = _lib.NSC_EVAL_FN(on_eval)
        opts = options(_lib._NscOptions)
        if init is not None:
            opts.init = float(init)
        spsa = options(_lib._NscSpsaOptions)
        for field, value in (("steps", steps), ("perturbation", perturbation), ("lr", lr)):
            if value is not None:
                setattr(spsa, field, int(value) if field == "steps" else float(value))
        plan = Plan(ctx, "nsc", base, adapters, weights, None, {})
        out = ctypes.c_void_p()
        try:
            ctx.check(_L.lm_plan_set_nsc_forward(plan.ptr, callback, None,
                                                 ctypes.byref(opts), ctypes.byref(spsa)))
            st = _L.lm_plan_execute(plan.ptr, ctypes.byref(out))
            if errors:
                raise errors[0]
            ctx.check(st)
            if coefficients is not None:
                ctx.check(_L.lm_nsc_save_coefficients(_L.lm_plan_nsc(plan.ptr),
                                                      str(coefficients).encode(), None))
            return model_to_dict(out, base)
        finally:
            if out:
                _L.lm_model_destroy(out)
            plan.close()
