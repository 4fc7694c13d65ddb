"""libmerge.search: golden-section search of a scale parameter against a
host score."""
import numpy as np
import pytest

import libmerge


def test_search_finds_the_peak_and_reports_the_curve():
    base = {"w": np.zeros(4, np.float32)}
    model = {"w": np.ones(4, np.float32)}
    best, score, curve, merged = libmerge.search(
        "task_arithmetic", base, [model], lambda d: -float((d["w"][0] - 0.7) ** 2))
    assert abs(best - 0.7) < 0.01
    assert len(curve) <= 15
    assert abs(curve[0][0] - 0.7639320225) < 1e-9 and abs(curve[1][0] - 1.2360679775) < 1e-9
    assert score == max(s for _, s in curve)
    np.testing.assert_allclose(merged["w"], best, rtol=1e-6)


def test_search_uses_alpha_when_the_method_has_it():
    base = {"w": np.zeros((4, 3), np.float32)}
    models = [{"w": np.eye(4, 3, dtype=np.float32) * (i + 1)} for i in range(2)]
    seen = []
    libmerge.search("iso_c", base, models, lambda d: seen.append(1) or -float(np.abs(d["w"]).sum()),
                    lo=0.0, hi=1.0, max_evals=4)
    assert len(seen) == 4


def test_score_exceptions_propagate():
    base = {"w": np.zeros(2, np.float32)}

    def boom(d):
        raise KeyError("validation split missing")

    with pytest.raises(KeyError, match="validation split"):
        libmerge.search("task_arithmetic", base, [base], boom)
    with pytest.raises(libmerge.OutOfRangeError):
        libmerge.search("task_arithmetic", base, [base], lambda d: 0.0, lo=0, hi=50)
