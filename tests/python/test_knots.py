"""knots on LoRA-like (low-rank) task vectors against reference.py's
numpy implementation: max |diff| <= 1e-4 * max |ref|."""
import numpy as np
import pytest

import libmerge
import reference as ref

RNG = np.random.default_rng(9)
M, N, T, R = 96, 80, 4, 8


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("merge,params", [("ties", {"density": 0.3}), ("ta", {})])
def test_knots_matches_reference(merge, params, flip):
    base = {"q": (0.02 * RNG.standard_normal((M, N))).astype(np.float32),
            "bias": np.zeros(M, np.float32)}
    taus = [(RNG.standard_normal((M, R)) @ RNG.standard_normal((R, N)) * 0.05).astype(np.float32)
            for _ in range(T)]
    models = [{"q": base["q"] + t, "bias": base["bias"] + 0.01 * (i + 1)}
              for i, t in enumerate(taus)]
    taus = [m["q"] - base["q"] for m in models]
    w = [1.0, 0.5, 1.5, 1.0]
    ref.FLIP_RNG = np.random.default_rng(2) if flip else None
    try:
        want = ref.knots(taus, w, merge=merge, lam=0.6, **params)
    finally:
        ref.FLIP_RNG = None
    out = libmerge.merge("knots", base, models, weights=w, merge=merge, **{"lambda": 0.6}, **params)
    got = out["q"].astype(np.float64) - base["q"]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    bias_want = 0.6 * sum(wi * (m["bias"] - base["bias"]).astype(np.float64) for wi, m in zip(w, models))
    np.testing.assert_allclose(out["bias"], bias_want, rtol=1e-5, atol=1e-7)
