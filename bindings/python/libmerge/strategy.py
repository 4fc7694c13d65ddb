"""Merge strategies written in Python, for prototyping (lm_register_strategy
through ctypes callbacks).

    def elementwise_max(job):
        return np.max(np.stack(job.deltas), axis=0)     # the merged task vector

    libmerge.register_strategy("py_max", elementwise_max,
                               params=[{"name": "lambda", "default": 1.0}])
    merged = libmerge.merge("py_max", base, [m1, m2])

A registered strategy is added to every context the bindings create from
then on, so `merge`, `search`, `merge_to`, `Merger` and `methods()` see it
like a built-in. The callbacks run on the library's worker threads (holding
the GIL, so Python strategies do not run in parallel). An exception raised
by a callback becomes LM_ERR_CALLBACK with the exception's text in the
library's message, never a crash. A two-pass strategy (one whose result
for a tensor depends on others, like ESM's layer scaling) gives
`prepare_tensor(job)`, run on every tensor first, and `prepared(state)`,
run once before the merges; a load-time Merger then needs the base."""
import ctypes
import math
import threading
import traceback

import numpy as np

from . import _context, _lib
from ._context import Context, L
from ._errors import error_for
from ._tensor import to_numpy

__all__ = ["register_strategy", "unregister_strategy", "Job", "InitInfo"]

LM_ERR_CALLBACK = -11
_TYPES = {"float": 0, "int": 1, "bool": 2, "choice": 3, "string": 4}
_FLAGS = {"per_tensor": 1, "per_model": 2}
ALL_MODELS = ctypes.c_size_t(-1).value

# Registered strategies by name, in registration order. Unregistered ones
# move to _RETIRED: contexts created while they were registered keep
# pointers to their strings and callbacks, so they are never freed.
_REGISTRY = {}
_RETIRED = []
_LOCK = threading.Lock()


def _report(ctx, what, exc):
    """Turn a Python exception into the library's error (LM_ERR_CALLBACK)."""
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    msg = ("%s: %s" % (what, text)).encode("utf-8", "replace")
    return L.lm_context_set_error(ctx, LM_ERR_CALLBACK, b"%s", msg)


class _Params:
    """Reading a plan's parameter values (lm_params_get_*)."""

    def __init__(self, ctx, ptr, types):
        self._ctx, self._ptr, self._types = ctx, ptr, types

    def _check(self, st):
        if st:
            detail = L.lm_context_error(self._ctx)
            raise error_for(st, "%s: %s" % (L.lm_strerror(st).decode(),
                                            (detail or b"").decode(errors="replace")))

    def param(self, name):
        """The value of a declared parameter (its default when unset), typed
        as declared: float, int, bool or str."""
        kind = self._types.get(name, "float")
        key = name.encode()
        if kind == "int":
            out = ctypes.c_int64()
            self._check(L.lm_params_get_int(self._ptr, key, ctypes.byref(out)))
            return out.value
        if kind == "bool":
            out = ctypes.c_int()
            self._check(L.lm_params_get_bool(self._ptr, key, ctypes.byref(out)))
            return bool(out.value)
        if kind in ("choice", "string"):
            out = ctypes.c_char_p()
            getter = L.lm_params_get_choice if kind == "choice" else L.lm_params_get_string
            self._check(getter(self._ptr, key, ctypes.byref(out)))
            return (out.value or b"").decode()
        out = ctypes.c_double()
        self._check(L.lm_params_get_float(self._ptr, key, ctypes.byref(out)))
        return out.value

    def model_param(self, name, model):
        """A float/int/bool parameter's value for model index `model` (its
        per-model value when the user gave one)."""
        out = ctypes.c_double()
        self._check(L.lm_params_get_model_float(self._ptr, name.encode(), int(model),
                                                ctypes.byref(out)))
        return out.value

    def is_set(self, name):
        """True when the user set the parameter explicitly."""
        return bool(L.lm_params_is_set(self._ptr, name.encode()))

    def log(self, level, message):
        """A message through the context's log callback (0 error .. 3 debug;
        the bindings forward it to the Python logger "libmerge")."""
        L.lm_log(self._ctx, int(level), b"%s", str(message).encode("utf-8", "replace"))


class InitInfo(_Params):
    """What a strategy's `init` callback receives: n_models, weights, the
    context's threads and seed, the plan's parameters (param(name), ...)
    and whether statistics were given (has_stats)."""

    def __init__(self, info, types):
        super().__init__(info.ctx, info.params, types)
        self.n_models = info.n_models
        self.weights = [info.weights[i] for i in range(info.n_models)]
        self.threads = L.lm_context_threads(info.ctx)
        self.seed = L.lm_context_seed(info.ctx)
        self.has_stats = bool(info.stats)


def _f32(ptr, numel, shape):
    if numel == 0:
        return np.zeros(shape, dtype=np.float32)
    return np.ctypeslib.as_array(ptr, shape=(numel,)).reshape(shape)


class Job(_Params):
    """One tensor to merge, as numpy views valid during the call only:
    name, shape, base, deltas (one float32 task vector per model),
    weights, seed, out (the merged task vector, zero on entry), state (what
    init returned), lora(t) (task t's factors when it is a LoRA adapter),
    and the parameters as this tensor sees them (param, model_param,
    is_set)."""

    def __init__(self, job, state, types):
        super().__init__(job.ctx, job.params, types)
        self._job = job
        self.state = state
        self.name = job.name.decode()
        self.shape = tuple(job.shape[i] for i in range(job.ndim))
        self.seed = job.seed
        self.n_models = job.n_models
        self.weights = [job.weights[i] for i in range(job.n_models)]
        self.base = _f32(job.base, job.numel, self.shape)
        self.deltas = [_f32(job.deltas[i], job.numel, self.shape)
                       for i in range(job.n_models)]
        self.out = _f32(job.out, job.numel, self.shape)

    def lora(self, t):
        """(A, B, scale) copies when task t was added as a LoRA adapter
        that targets this tensor (lm_lora_find), else None."""
        if not self._job.loras or not self._job.loras[t]:
            return None
        a, b = ctypes.c_void_p(), ctypes.c_void_p()
        scale = ctypes.c_double()
        st = L.lm_lora_find(self._job.loras[t], self._job.name, ctypes.byref(a),
                            ctypes.byref(b), ctypes.byref(scale))
        if st == -5:  # LM_ERR_NOT_FOUND: the adapter leaves this tensor alone
            return None
        self._check(st)
        return to_numpy(L, a, None), to_numpy(L, b, None), scale.value


def _param_desc(p):
    """An lm_param_desc from a dict shaped like method_info()'s entries."""
    if isinstance(p, str):
        p = {"name": p}
    unknown = set(p) - {"name", "type", "default", "min", "max", "choices", "help",
                        "per_tensor", "per_model"}
    if unknown:
        raise ValueError("parameter %r: unknown keys %s" % (p.get("name"), sorted(unknown)))
    kind = p.get("type", "float")
    if kind not in _TYPES:
        raise ValueError("parameter %r: type must be one of %s" % (p.get("name"), list(_TYPES)))
    d = _lib._ParamDesc()
    d.struct_size = ctypes.sizeof(_lib._ParamDesc)
    d.name = str(p["name"]).encode()
    d.type = _TYPES[kind]
    default = p.get("default", 0.0)
    d.default_value = 0.0 if kind in ("choice", "string") else float(default)
    d.min_value = float(p.get("min", -math.inf) if p.get("min") is not None else -math.inf)
    d.max_value = float(p.get("max", math.inf) if p.get("max") is not None else math.inf)
    choices = p.get("choices")
    d.choices = "|".join(choices).encode() if choices else None
    d.help = str(p.get("help", "")).encode()
    d.flags = sum(bit for key, bit in _FLAGS.items() if p.get(key))
    return d, kind


class _Strategy:
    """A vtable whose callbacks call Python, and everything it points to
    (kept referenced for as long as any context may use them)."""

    def __init__(self, name, merge_tensor, params, description, init, fini,
                 prepare_tensor=None, prepared=None):
        self.name = name
        descs = [_param_desc(p) for p in params]
        self.types = {d.name.decode(): kind for d, kind in descs}
        self.params = (_lib._ParamDesc * max(len(descs), 1))(*[d for d, _ in descs])
        self.states = {}
        self.next_state = 1
        self.state_lock = threading.Lock()
        self.py_merge, self.py_init, self.py_fini = merge_tensor, init, fini

        def c_init(info_p, state_p, user):
            info = info_p.contents
            try:
                state = self.py_init(InitInfo(info, self.types)) if self.py_init else None
            except BaseException as e:
                return _report(info.ctx, "python strategy %r: init" % self.name, e)
            with self.state_lock:
                key = self.next_state
                self.next_state += 1
                self.states[key] = state
            state_p[0] = key
            return 0

        def c_merge(state_key, job_p, user):
            job = job_p.contents
            try:
                state = self.states.get(state_key) if state_key else None
                j = Job(job, state, self.types)
                result = self.py_merge(j)
                if result is not None:
                    result = np.asarray(result, dtype=np.float32)
                    if result.shape != j.shape:
                        raise ValueError("returned shape %s, the tensor is %s"
                                         % (result.shape, j.shape))
                    j.out[...] = result
            except BaseException as e:
                return _report(job.ctx, "python strategy %r on tensor %r" %
                               (self.name, job.name.decode(errors="replace")), e)
            return 0

        def c_prepare(state_key, job_p, user):
            job = job_p.contents
            try:
                prepare_tensor(Job(job, self.states.get(state_key), self.types))
            except BaseException as e:
                return _report(job.ctx, "python strategy %r: prepare_tensor on %r" %
                               (self.name, job.name.decode(errors="replace")), e)
            return 0

        # The prepared callback has no context to report through: its
        # exception is kept and becomes LM_ERR_CALLBACK, named by the library.
        def c_prepared(state_key, user):
            try:
                if prepared is not None:
                    prepared(self.states.get(state_key))
            except BaseException:
                _context._logger.exception("python strategy %r: prepared", self.name)
                return LM_ERR_CALLBACK
            return 0

        def c_fini(state_key, user):
            with self.state_lock:
                state = self.states.pop(state_key, None) if state_key else None
            if self.py_fini:
                try:
                    self.py_fini(state)
                except BaseException:
                    # fini cannot report a status; the exception is logged.
                    _context._logger.exception("python strategy %r: fini", self.name)

        self.callbacks = (_lib.STRATEGY_INIT_FN(c_init), _lib.STRATEGY_MERGE_FN(c_merge),
                          _lib.STRATEGY_FINI_FN(c_fini))
        if prepare_tensor is not None:
            self.two_pass = (_lib.STRATEGY_MERGE_FN(c_prepare),
                             _lib.STRATEGY_PREPARED_FN(c_prepared))
        self.name_b, self.description_b = name.encode(), description.encode()
        vt = _lib._FullStrategyVtable()
        vt.struct_size = ctypes.sizeof(_lib._FullStrategyVtable)
        vt.abi_version = _lib.STRATEGY_ABI_VERSION
        vt.name, vt.description = self.name_b, self.description_b
        vt.params = self.params
        vt.n_params = len(descs)
        vt.init, vt.merge_tensor, vt.fini = self.callbacks
        if prepare_tensor is not None:
            vt.prepare_tensor, vt.prepared = self.two_pass
        self.vtable = vt

    def register(self, ctx_ptr):
        return L.lm_register_strategy(ctx_ptr, ctypes.byref(self.vtable))


def _register_all(ctx):
    """Context-creation hook: every registered Python strategy."""
    with _LOCK:
        strategies = list(_REGISTRY.values())
    for s in strategies:
        ctx.check(s.register(ctx.ptr))


_context.CREATE_HOOKS.append(_register_all)


def register_strategy(name, merge_tensor, *, params=(), description="", init=None,
                      fini=None, prepare_tensor=None, prepared=None):
    """Register a strategy written in Python under `name` ([a-z0-9_]+, not
    a built-in's name) for every context created from now on.

    merge_tensor(job) -> array or None: fill job.out (or return an array
    of job.shape) with the merged *task vector* for one tensor; the library
    adds the base and converts to the output dtype. See `Job`.
    params: parameter declarations, dicts with the keys of method_info()'s
    (name, type "float"|"int"|"bool"|"choice"|"string", default, min, max,
    choices, help, per_tensor, per_model) or bare names (floats).
    init(info) -> state: optional, once per execution (see `InitInfo`);
    job.state is what it returned. fini(state): optional, after execution.
    prepare_tensor(job), prepared(state): optional first pass over every
    tensor (job.out unused there) and a step between the passes, for
    strategies whose result for one tensor depends on others; they update
    the state (calls are serialised by the GIL).

    The library validates the table now (bad name, name taken, bad
    parameter table raise libmerge.Error)."""
    if not callable(merge_tensor):
        raise TypeError("merge_tensor must be callable")
    if prepared is not None and prepare_tensor is None:
        raise TypeError("prepared needs prepare_tensor")
    s = _Strategy(str(name), merge_tensor, list(params), str(description), init, fini,
                  prepare_tensor, prepared)
    with _LOCK:
        if s.name in _REGISTRY:
            raise error_for(-6, "a Python strategy named %r is already registered" % s.name)
    with Context() as ctx:  # validated against the built-ins and the others
        ctx.check(s.register(ctx.ptr))
    with _LOCK:
        _REGISTRY[s.name] = s


def unregister_strategy(name):
    """Stop adding strategy `name` to new contexts (contexts alive keep
    it). Raises NotFoundError when no Python strategy has that name."""
    with _LOCK:
        s = _REGISTRY.pop(name, None)
        if s is None:
            raise error_for(-5, "no Python strategy named %r" % name)
        _RETIRED.append(s)
