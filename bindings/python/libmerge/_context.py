"""The loaded library (`L`), its version, and lm_context for the duration
of a call, with libmerge's log messages forwarded to the Python logger
"libmerge"."""
import ctypes
import logging

from . import _lib
from ._errors import error_for

L = _lib.load()

_logger = logging.getLogger("libmerge")
_PY_LEVELS = {1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}


def version():
    """Version string of the loaded shared library."""
    return L.lm_version_string().decode()


def _forward_log(level, message, user):
    # Errors are raised as exceptions by Context.check; logging them too
    # would report every failure twice.
    if level in _PY_LEVELS:
        _logger.log(_PY_LEVELS[level], "%s", message.decode(errors="replace"))


_LOG_CALLBACK = _lib.LOG_FN(_forward_log)


def _lm_log_level():
    """The libmerge level matching the "libmerge" logger's threshold, so
    messages nobody will see are not even formatted."""
    effective = _logger.getEffectiveLevel()
    for lm_level in (3, 2, 1):
        if effective <= _PY_LEVELS[lm_level]:
            return lm_level
    return 0


# Called with every new Context (e.g. to register strategies written in
# Python, libmerge.strategy).
CREATE_HOOKS = []


def options(struct):
    """A new options struct with the library's defaults (lm_*_options_init)."""
    return _lib.options(L, struct)


class Context:
    """An lm_context for the duration of a `with` block."""

    def __init__(self, threads=0, seed=0):
        opts = options(_lib._ContextOptions)
        opts.n_threads = int(threads)
        opts.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        opts.log = ctypes.cast(_LOG_CALLBACK, ctypes.c_void_p)
        opts.log_level = _lm_log_level()
        self.ptr = ctypes.c_void_p()
        st = L.lm_context_create(ctypes.byref(opts), ctypes.byref(self.ptr))
        if st:
            raise error_for(st, "libmerge: cannot create a context: %s" %
                            L.lm_strerror(st).decode())
        try:
            for hook in CREATE_HOOKS:
                hook(self)
        except BaseException:
            self.close()
            raise

    def threads(self):
        """Worker threads of this context (lm_context_threads)."""
        return L.lm_context_threads(self.ptr)

    def check(self, status):
        """Raise the exception for a failing status with the context's
        detailed message, then clear it (a later failure never shows a
        stale message). The message is copied (lm_context_copy_error) and
        used only when it belongs to this status."""
        if status:
            detail = ""
            if L.lm_context_error_status(self.ptr) == status:
                n = L.lm_context_copy_error(self.ptr, None, 0)
                buf = ctypes.create_string_buffer(n + 1)
                L.lm_context_copy_error(self.ptr, buf, n + 1)
                detail = buf.value.decode(errors="replace")
            L.lm_context_clear_error(self.ptr)
            text = L.lm_strerror(status).decode()
            raise error_for(status, "%s: %s" % (text, detail) if detail
                            else text)

    def close(self):
        if self.ptr:
            L.lm_context_destroy(self.ptr)
            self.ptr = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
