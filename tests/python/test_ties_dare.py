"""ties, dare_linear and dare_ties against numpy references (reference.py),
on 512x768 layers with 8 low-rank-plus-noise task vectors. Tolerance: the
library works in f32 with f64 sums, so max |diff| <= 1e-5 * max |ref|
(within the issue's 1e-4 relative bound)."""
import numpy as np
import pytest

import libmerge
import reference as ref

RNG = np.random.default_rng(3)
SHAPE = (512, 768)
T = 8


def models(weights=None):
    base = {"w": (0.02 * RNG.standard_normal(SHAPE)).astype(np.float32),
            "b": (0.02 * RNG.standard_normal(SHAPE[0])).astype(np.float32)}
    taus = ref.low_rank_tasks(RNG, SHAPE, T)
    bias = [(0.01 * RNG.standard_normal(SHAPE[0])).astype(np.float32) for _ in range(T)]
    ms = [{"w": base["w"] + t, "b": base["b"] + b} for t, b in zip(taus, bias)]
    # The library sees tau = m - base in f32; use exactly that.
    taus = [m["w"] - base["w"] for m in ms]
    bias = [m["b"] - base["b"] for m in ms]
    return base, ms, taus, bias


def close(got, want):
    err = np.abs(got.astype(np.float64) - want).max()
    assert err <= 1e-5 * np.abs(want).max() + 1e-7, err


@pytest.mark.parametrize("opts", [
    {},                                                        # paper / PEFT
    {"consensus": "count"},
    {"divide": "weights", "weights_in_election": True},         # mergekit
])
def test_ties(opts):
    base, ms, taus, bias = models()
    w = list(RNG.uniform(0.5, 1.5, T))
    out = libmerge.merge("ties", base, ms, weights=w, density=0.3, **{"lambda": 0.7}, **opts)
    kw = {"consensus": opts.get("consensus", "sum"), "divide": opts.get("divide", "count"),
          "weights_in_election": opts.get("weights_in_election", False)}
    close(out["w"] - base["w"], ref.ties(taus, w, 0.3, 0.7, **kw))
    close(out["b"] - base["b"], ref.ties(bias, w, 0.3, 0.7, **kw))


def test_ties_density_one_is_disjoint_mean():
    base, ms, taus, _ = models()
    out = libmerge.merge("ties", base, ms, density=1.0)
    close(out["w"] - base["w"], ref.sign_merge(taus, [1.0] * T))


def test_top_k_keeps_exactly_k_with_ties():
    base = {"w": np.zeros(10, np.float32)}
    m = {"w": np.array([1, -1, 1, 2, 0.5, -1, 1, 0, 0, 0], np.float32)}
    out = libmerge.merge("ties", base, [m], density=0.3)["w"]
    # k = 3: 2, then the first two of the four |1|s by index.
    assert list(out) == [1, -1, 0, 2, 0, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("seed", [0, 17])
def test_dare_linear_and_ties_reproduce_the_documented_rng(seed):
    base, ms, taus, bias = models()
    w = [1.0] * T
    out = libmerge.merge("dare_linear", base, ms, seed=seed, density=0.2, **{"lambda": 0.5})
    dropped = ref.dare(taus, w, "w", seed, 0.2)
    close(out["w"] - base["w"], 0.5 * sum(d.astype(np.float64) for d in dropped))
    out = libmerge.merge("dare_ties", base, ms, seed=seed, density=0.2)
    close(out["b"] - base["b"], ref.sign_merge(ref.dare(bias, w, "b", seed, 0.2), w))


def test_dare_statistics_and_determinism():
    base, ms, taus, _ = models()
    a = libmerge.merge("dare_linear", base, ms[:1], seed=5, density=0.25, threads=1)
    b = libmerge.merge("dare_linear", base, ms[:1], seed=5, density=0.25, threads=2)
    c = libmerge.merge("dare_linear", base, ms[:1], seed=6, density=0.25)
    assert a["w"].tobytes() == b["w"].tobytes()
    assert a["w"].tobytes() != c["w"].tobytes()
    kept = np.count_nonzero(a["w"] - base["w"]) / a["w"].size
    # Binomial(393216, 0.25): 5 standard deviations is 0.0035.
    assert abs(kept - 0.25) < 0.0035
    no_rescale = libmerge.merge("dare_linear", base, ms[:1], seed=5, density=0.25, rescale=False)
    delta = a["w"] - base["w"]
    nz = delta != 0
    np.testing.assert_allclose((no_rescale["w"] - base["w"])[nz], delta[nz] * 0.25,
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method,params", [
    ("ties", {"density": 0.0}), ("ties", {"density": 1.5}),
    ("dare_ties", {"consensus": "median"}), ("dare_linear", {"density": -1}),
])
def test_parameter_ranges(method, params):
    base, ms, _, _ = models()
    with pytest.raises(libmerge.OutOfRangeError):
        libmerge.merge(method, base, ms[:2], **params)
