"""Projector: an orthonormal basis of a subspace (lm_projector), built from
a matrix (SVD / eigendecomposition) or from activation statistics (PCA of a
layer's inputs), applied to vectors or, inside a merge, to task vectors
(`merge(..., projections=[...])`, lm_plan_add_projection).

    p = libmerge.Projector.from_stats(stats, 0, "fc1.weight", energy=0.9)
    merged = libmerge.merge("task_arithmetic", base, models,
                            projections=[("^fc1\\\\.weight$", p)])
"""
import ctypes

import numpy as np

from ._context import Context, L
from ._tensor import prepare

__all__ = ["Projector"]

_BASES = ["left", "right", "eigen"]       # lm_basis order
_SIDES = ["rows", "columns"]              # lm_projection_side order
_MODES = ["keep", "remove"]               # lm_projection_mode order
ALL_MODELS = ctypes.c_size_t(-1).value


class Projector:
    """An orthonormal basis P (dim x rank). Immutable; thread-safe."""

    def __init__(self, _ptr, _ctx):
        self._ptr, self._ctx = _ptr, _ctx

    @classmethod
    def from_array(cls, a, basis="left", *, rank=0, energy=0.0):
        """Top directions of the 2-D array `a`: "left" (or "right") singular
        vectors, or "eigen"vectors of a symmetric `a`. rank > 0 keeps that
        many; rank 0 with 0 < energy <= 1 the fewest capturing that
        fraction of the energy; both 0 keep all."""
        if basis not in _BASES:
            raise ValueError("basis must be one of %s" % _BASES)
        ctx = Context(threads=1)
        try:
            array, code = prepare("projector input", a)
            shape = (ctypes.c_int64 * max(array.ndim, 1))(*array.shape)
            t = ctypes.c_void_p()
            ctx.check(L.lm_tensor_wrap(ctx.ptr, code, array.ndim, shape,
                                       ctypes.c_void_p(array.ctypes.data), array.nbytes,
                                       ctypes.byref(t)))
            ptr = ctypes.c_void_p()
            try:
                ctx.check(L.lm_projector_from_tensor(ctx.ptr, t, _BASES.index(basis),
                                                     int(rank), float(energy),
                                                     ctypes.byref(ptr)))
            finally:
                L.lm_tensor_destroy(t)
        except BaseException:
            ctx.close()
            raise
        return cls(ptr, ctx)

    @classmethod
    def from_stats(cls, stats, model, name, *, rank=0, energy=0.0):
        """PCA of the inputs of layer `name` of model `model` in a
        libmerge.Stats: eigenvectors of X^T X / n (same rank/energy rules)."""
        ctx = Context(threads=1)
        ptr = ctypes.c_void_p()
        try:
            ctx.check(L.lm_projector_from_stats(ctx.ptr, stats._ptr, int(model),
                                                name.encode(), int(rank), float(energy),
                                                ctypes.byref(ptr)))
        except BaseException:
            ctx.close()
            raise
        return cls(ptr, ctx)

    @property
    def dim(self):
        return L.lm_projector_dim(self._ptr)

    @property
    def rank(self):
        return L.lm_projector_rank(self._ptr)

    @property
    def energy(self):
        """Fraction of the energy the kept directions capture."""
        return L.lm_projector_energy(self._ptr)

    @property
    def basis(self):
        """A float64 copy of the basis, dim x rank (orthonormal columns)."""
        out = np.empty((self.dim, self.rank), dtype=np.float64)
        if out.size:
            ctypes.memmove(out.ctypes.data, L.lm_projector_basis(self._ptr), out.nbytes)
        return out

    @property
    def values(self):
        """The kept singular values / eigenvalues (descending), float64."""
        out = np.empty(self.rank, dtype=np.float64)
        if out.size:
            ctypes.memmove(out.ctypes.data, L.lm_projector_values(self._ptr), out.nbytes)
        return out

    def _apply(self, fn, x):
        x = np.asarray(x)
        flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1] if x.ndim else 1)
        if x.ndim == 0 or flat.shape[1] != self.dim:
            raise ValueError("vectors of length %d expected, got shape %s"
                             % (self.dim, x.shape))
        out = np.empty_like(flat)
        self._ctx.check(fn(self._ptr, ctypes.c_void_p(flat.ctypes.data), flat.shape[0],
                           ctypes.c_void_p(out.ctypes.data)))
        return out.reshape(x.shape)

    def project(self, x):
        """P P^T x for every vector in the last dimension of x (float32)."""
        return self._apply(L.lm_projector_project, x)

    def complement(self, x):
        """x - P P^T x for every vector in the last dimension (float32)."""
        return self._apply(L.lm_projector_complement, x)

    def close(self):
        if getattr(self, "_ptr", None):
            L.lm_projector_destroy(self._ptr)
            self._ptr = None
        if getattr(self, "_ctx", None) is not None:
            self._ctx.close()
            self._ctx = None

    __del__ = close

    def __repr__(self):
        return "Projector(dim=%d, rank=%d, energy=%.4g)" % (self.dim, self.rank, self.energy)


def add_projections(ctx, plan, projections, keep):
    """lm_plan_add_projection for each rule: a tuple (pattern, projector[,
    side[, mode[, model]]]) or a dict with those keys; side "rows"
    (default) or "columns", mode "keep" (default) or "remove", model an
    index or None (all). The projectors are appended to `keep`."""
    for rule in projections:
        if isinstance(rule, dict):
            rule = dict(rule)
            args = (rule.pop("pattern"), rule.pop("projector"), rule.pop("side", "rows"),
                    rule.pop("mode", "keep"), rule.pop("model", None))
            if rule:
                raise ValueError("projection rule: unknown keys %s" % sorted(rule))
        else:
            args = tuple(rule) + ("rows", "keep", None)[len(rule) - 2:]
        pattern, proj, side, mode, model = args
        if not isinstance(proj, Projector):
            raise TypeError("projection %r: expected a libmerge.Projector" % (pattern,))
        if side not in _SIDES or mode not in _MODES:
            raise ValueError("projection %r: side must be one of %s and mode one of %s"
                             % (pattern, _SIDES, _MODES))
        keep.append(proj)
        ctx.check(L.lm_plan_add_projection(plan, pattern.encode(),
                                           ALL_MODELS if model is None else int(model),
                                           proj._ptr, _SIDES.index(side), _MODES.index(mode)))
