"""The bindings take option defaults from the library (lm_*_options_init),
and their ctypes mirrors have the C structs' sizes (the init functions
write struct_size = sizeof in C)."""
import ctypes
import math

import pytest

import libmerge
from libmerge import _lib


@pytest.mark.parametrize("fn", sorted(_lib.OPTIONS_INIT))
def test_mirror_has_the_c_size(fn):
    struct = _lib.OPTIONS_INIT[fn]
    opts = _lib.options(libmerge._L, struct)
    assert opts.struct_size == ctypes.sizeof(struct), fn


def test_defaults_come_from_c():
    p = _lib.options(libmerge._L, _lib._PurifyOptions)
    assert (p.keep, p.allocation, p.epsilon, p.tolerance, p.polarize,
            p.max_prune_factor) == (0.97, 0, 0.1, 5e-2, 0.0, 1.5)
    n = _lib.options(libmerge._L, _lib._NscOptions)
    assert (n.init, n.lr, n.beta1, n.beta2, n.adam_eps, n.weight_decay, n.ridge) == \
        (-1.0, 1e-3, 0.9, 0.999, 1e-8, 0.01, 1e-8)
    assert (n.lambda_min, n.lambda_max, n.trust_radius) == (0.0, math.inf, math.inf)
    s = _lib.options(libmerge._L, _lib._NscSpsaOptions)
    assert (s.steps, s.perturbation, s.lr, s.first_step) == (100, 0.05, 1e-3, 0)
    c = _lib.options(libmerge._L, _lib._ContextOptions)
    assert (c.n_threads, c.seed, c.log_level) == (0, 0, 1)
    sp = _lib.options(libmerge._L, _lib._StatsSplitOptions)
    assert (sp.heldout_fraction, sp.folds) == (0.0, 0)
    cv = _lib.options(libmerge._L, _lib._PurifyCvOptions)
    assert not cv.candidates and cv.n_candidates == 0 and not cv.scale


def test_stats_parts_are_read_only_views():
    s = libmerge.Stats(folds=2)
    with pytest.raises(AttributeError):
        s.heldout = libmerge.Stats()
    fold = s.folds[0]
    del s  # the fold keeps its owner alive
    assert len(fold) == 0


def test_split_errors_come_from_c():
    with pytest.raises(libmerge.OutOfRangeError, match=r"\[0, 1\)"):
        libmerge.Stats(heldout_fraction=1.0)
    with pytest.raises(ValueError, match="at least 2"):
        libmerge.Stats(folds=-3)


def test_cv_without_heldout_rows_is_an_invalid_argument():
    import numpy as np
    base = {"w": np.zeros((4, 4), np.float32)}
    models = [{"w": np.eye(4, dtype=np.float32)}]
    stats = libmerge.Stats()
    stats.observe(0, "w", np.ones((3, 4), np.float32))
    with pytest.raises(libmerge.InvalidArgumentError, match="held-out"):
        libmerge.merge("task_arithmetic", base, models, stats=stats, purify={"keep": "cv"})
    with pytest.raises(ValueError, match="at least 2"):
        libmerge.merge("task_arithmetic", base, models, stats=stats,
                       purify={"keep": "cv", "folds": [stats]})
