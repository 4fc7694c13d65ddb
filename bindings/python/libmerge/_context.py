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

    def check(self, status):
        if status:
            detail = L.lm_context_error(self.ptr).decode(errors="replace")
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
