"""Per-tensor and per-model parameter values from Python (a dict of tensor
names, a per-model list; lm_plan_set_float_for underneath): task
arithmetic with a per-tensor lambda and the linear mean with per-tensor
normalize, against numpy's formulas in f64 (rtol 1e-6 of the largest
magnitude: the f32 rounding of the result); slots a strategy does not
read are refused with a message naming them."""
import numpy as np
import pytest

import libmerge

RNG = np.random.default_rng(5)
SHAPES = {"layers.0.mlp.weight": (6, 4), "layers.0.attn.weight": (4, 4),
          "norm.weight": (4,)}


def model():
    return {k: RNG.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def close(got, want):
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6,
                                   atol=1e-6 * float(np.abs(want[k]).max()))


def task_arithmetic(base, models, weights, lam):
    """base + lam[k] * sum_t w_t (m_t - base), per tensor k, in f64."""
    out = {}
    for k in base:
        b = base[k].astype(np.float64)
        s = sum(w * (m[k].astype(np.float64) - b) for m, w in zip(models, weights))
        out[k] = (b + lam[k] * s).astype(np.float32)
    return out


def test_lambda_per_tensor():
    base, models, weights = model(), [model(), model()], [0.5, 2.0]
    merged = libmerge.merge("task_arithmetic", base, models, weights=weights,
                            **{"lambda": {"layers.0.mlp.weight": 0.25,
                                          "norm.weight": -1.0}})
    lam = {"layers.0.mlp.weight": 0.25, "layers.0.attn.weight": 1.0,
           "norm.weight": -1.0}
    close(merged, task_arithmetic(base, models, weights, lam))


def test_normalize_per_tensor():
    base, models, weights = model(), [model(), model(), model()], [1.0, 2.0, 3.0]
    merged = libmerge.merge("average", base, models, weights=weights,
                            normalize={"norm.weight": 0})
    for k in SHAPES:
        s = sum(w * m[k].astype(np.float64) for m, w in zip(models, weights))
        b = base[k].astype(np.float64)
        if k == "norm.weight":  # base + sum_t w_t (m_t - base)
            want = b + s - sum(weights) * b
        else:                   # weighted mean of the models
            want = s / sum(weights)
        close({k: merged[k]}, {k: want.astype(np.float32)})


def test_refused_slots_name_what_was_wrong():
    base, models = model(), [model(), model()]
    with pytest.raises(libmerge.Error, match="one value for every model"):
        libmerge.merge("task_arithmetic", base, models, **{"lambda": [0.1, 0.2]})
    with pytest.raises(ValueError, match="3 values for 2 models"):
        libmerge.merge("task_arithmetic", base, models, **{"lambda": [1, 2, 3]})
    with pytest.raises(libmerge.Error, match="lm_head.weight"):
        libmerge.merge("task_arithmetic", base, models,
                       **{"lambda": {"lm_head.weight": 0.5}})
    with pytest.raises(libmerge.Error, match="once per merge"):
        libmerge.merge("tsv", base, models, alpha={"norm.weight": 0.5})


def test_method_info_reports_the_slots():
    info = {p["name"]: p for p in libmerge.method_info("task_arithmetic")["params"]}
    assert info["lambda"]["per_tensor"] and not info["lambda"]["per_model"]
    info = {p["name"]: p for p in libmerge.method_info("tsv")["params"]}
    assert not info["alpha"]["per_tensor"]
