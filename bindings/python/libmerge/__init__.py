"""libmerge: merge fine-tuned models without retraining (ctypes bindings).

    import libmerge
    merged = libmerge.merge("task_arithmetic", base, [m1, m2], **{"lambda": 0.5})

`base` and each model map tensor names to numpy arrays (float32, float16,
float64 or bfloat16); the result maps the base's names to new arrays of the
base's shapes and dtypes. The shared library is found through
$LIBMERGE_LIBRARY or the system loader (libmerge.so.1).

The package only checks arguments and marshals them; every merge decision
(held-out splits, K folds, keep="cv" tuning) is the C library's. Modules:
_lib (loading, prototypes), _context (context, logging), _tensor and _bf16
(arrays), _models and _plan (models and plans), _merge (merge, search,
methods), purify, subspace, stats, files, nsc, task_vector, projector, strategy
(strategies written in Python), merger (load-time Merger), output
(merge_to: streaming into files), torch (optional).
"""
# Imported for compatibility: these names were reachable as libmerge.X in 0.1.
import ctypes  # noqa: F401
import logging  # noqa: F401
import math  # noqa: F401
import numbers  # noqa: F401
import os  # noqa: F401

import numpy as np  # noqa: F401

from . import _lib
from ._context import Context as _Context, L as _L, version
from ._errors import (DtypeError, Error, InvalidArgumentError,
                      NonFiniteError, NotFoundError, OutOfRangeError,
                      ShapeError, error_for)
from ._tensor import BF16, F32, F64, BFloat16Array, prepare, to_numpy
from ._bf16 import from_bfloat16, to_bfloat16
from ._models import build_model as _build_model, model_to_dict as _model_to_dict
from .purify import DEFAULT_KEEP_CANDIDATES
from .stats import Stats
from ._merge import merge, method_info, methods, search

__all__ = ["merge", "search", "methods", "method_info", "version", "Stats",
           "BFloat16Array", "to_bfloat16", "from_bfloat16", "Error",
           "InvalidArgumentError", "ShapeError", "DtypeError",
           "NotFoundError", "OutOfRangeError", "NonFiniteError"]

__version__ = version()

from .nsc import NSC, LoraAdapter  # noqa: E402  (needs _L and _Context)
from .files import load, save  # noqa: E402
from .task_vector import TaskVector  # noqa: E402
from .projector import Projector  # noqa: E402
from .strategy import register_strategy, unregister_strategy  # noqa: E402
from .merger import Merger  # noqa: E402
from .output import merge_to  # noqa: E402
from .subspace import Subspace  # noqa: E402

__all__ += ["NSC", "LoraAdapter", "load", "save", "TaskVector", "Merger", "merge_to",
            "register_strategy", "unregister_strategy", "Projector", "Subspace"]
