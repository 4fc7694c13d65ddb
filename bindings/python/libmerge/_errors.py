"""Exceptions carrying libmerge's status and detailed message."""

STATUS_NAMES = {
    0: "LM_OK", -1: "LM_ERR_INVALID_ARGUMENT", -2: "LM_ERR_OUT_OF_MEMORY",
    -3: "LM_ERR_SHAPE", -4: "LM_ERR_DTYPE", -5: "LM_ERR_NOT_FOUND",
    -6: "LM_ERR_EXISTS", -7: "LM_ERR_OUT_OF_RANGE", -8: "LM_ERR_IO",
    -9: "LM_ERR_FORMAT", -10: "LM_ERR_LINALG", -11: "LM_ERR_CALLBACK",
    -12: "LM_ERR_UNSUPPORTED", -13: "LM_ERR_NONFINITE", -14: "LM_ERR_ABI",
    -15: "LM_ERR_STATE", -16: "LM_ERR_CANCELLED", -17: "LM_ERR_INTERNAL",
}


class Error(Exception):
    """A libmerge call failed. `status` is the lm_status code,
    `status_name` its C name; the message is the library's detailed
    message (which tensor, parameter, model or file)."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.status_name = STATUS_NAMES.get(status, "unknown status %d" % status)


class InvalidArgumentError(Error, ValueError):
    """LM_ERR_INVALID_ARGUMENT."""


class ShapeError(Error, ValueError):
    """LM_ERR_SHAPE: shapes disagree."""


class DtypeError(Error, TypeError):
    """LM_ERR_DTYPE: unsupported or mismatched dtype."""


class NotFoundError(Error, LookupError):
    """LM_ERR_NOT_FOUND: no such method, parameter or tensor."""


class OutOfRangeError(Error, ValueError):
    """LM_ERR_OUT_OF_RANGE: a value outside its documented range."""


class NonFiniteError(Error, ValueError):
    """LM_ERR_NONFINITE: NaN or Inf."""


_BY_STATUS = {-1: InvalidArgumentError, -3: ShapeError, -4: DtypeError,
              -5: NotFoundError, -7: OutOfRangeError, -13: NonFiniteError}


def error_for(status, message):
    """The exception instance for a failing status."""
    return _BY_STATUS.get(status, Error)(status, message)
