"""Subspace: a user's subspace in place of the one ESM or purification
builds from activation statistics (lm_plan_set_subspace).

    # task 0's essential subspace for one layer: top 8 eigenvectors of G
    s = libmerge.Subspace("esm", r"^blocks\\.0\\.fc\\.weight$", G, basis="eigen",
                          rank=8, model=0)
    merged = libmerge.merge("esm", base, models, stats=stats, subspaces=[s])

`matrix` is a libmerge.Projector, or the projector is built from it
(Projector.from_array, lm_projector_from_tensor): its top `rank` singular vectors ("left" /
"right") or eigenvectors ("eigen", a symmetric matrix), or with rank 0 the
fewest capturing `energy` of it. An orthonormal basis Q (d_out x r) given
with basis="left" is used as it is, every direction with strength 1. Both
users need an output-side basis (dimension = the tensor's rows); see
docs/methods/esm.md and docs/methods/purify.md, "User subspaces"."""
import ctypes

import numpy as np

from ._context import L
from .projector import Projector

ALL_MODELS = ctypes.c_size_t(-1).value
_USERS = {"esm": 0, "purify": 1}        # lm_subspace_user


class Subspace:
    """use: "esm" or "purify"; pattern: regex searched in tensor names
    (anchor with ^...$); matrix: a libmerge.Projector, or a 2-D array the
    basis is computed from (Projector.from_array with basis, rank,
    energy); model: the task's index, or None for every task."""

    def __init__(self, use, pattern, matrix, *, basis="left", rank=0,
                 energy=0.0, model=None):
        if use not in _USERS:
            raise ValueError("use must be one of %s, got %r" % (", ".join(_USERS), use))
        self.use, self.pattern = use, str(pattern)
        self.model = None if model is None else int(model)
        if isinstance(matrix, Projector):
            self.projector = matrix
        else:
            matrix = np.asarray(matrix, dtype=np.float64)
            if matrix.ndim != 2:
                raise ValueError("subspace %r: matrix must be 2-D, got shape %s"
                                 % (pattern, matrix.shape))
            self.projector = Projector.from_array(matrix, basis, rank=rank, energy=energy)

    def __repr__(self):
        return "Subspace(%r, %r, projector %d x %d, model=%r)" % (
            self.use, self.pattern, self.projector.dim, self.projector.rank, self.model)


def apply(ctx, plan, subspaces, keep):
    """lm_plan_set_subspace for each Subspace; the projectors, which the
    plan borrows, are appended to `keep`."""
    for s in subspaces:
        if not isinstance(s, Subspace):
            raise TypeError("subspaces must hold libmerge.Subspace objects, got %s"
                            % type(s).__name__)
        keep.append(s.projector)
        model = ALL_MODELS if s.model is None else s.model
        ctx.check(L.lm_plan_set_subspace(plan, _USERS[s.use], s.pattern.encode(),
                                         model, s.projector._ptr))
