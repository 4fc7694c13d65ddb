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


def test_search_widens_past_an_edge_and_reports_it():
    base = {"w": np.zeros(4, np.float32)}
    model = {"w": np.ones(4, np.float32)}

    def peak_at(p):
        return lambda d: -float((d["w"][0] - p) ** 2)

    # The released bracket [0, 2] stops at its edge...
    r = libmerge.search("task_arithmetic", base, [model], peak_at(2.62), widen=0)
    assert 1.98 < r[0] <= 2.0 and r.at_edge and r.widened == 0
    # ...the default moves it to [1, 4] and finds the peak inside.
    best, score, curve, merged = r = libmerge.search("task_arithmetic", base, [model],
                                                     peak_at(2.62))
    assert abs(best - 2.62) < 0.01
    assert r.widened == 1 and not r.at_edge and r.bracket == (1.0, 4.0)
    assert max(v for v, _ in curve) > 2.0 and len(curve) <= 30
    np.testing.assert_allclose(merged["w"], best, rtol=1e-6)
    # A peak beyond the parameter's declared range (lambda <= 10).
    r = libmerge.search("task_arithmetic", base, [model], peak_at(40.0), widen=10)
    assert 9.98 < r[0] <= 10.0 and r.at_edge and r.bracket[1] == 10.0
    # An interior peak: exactly the released search's merges.
    plain = libmerge.search("task_arithmetic", base, [model], peak_at(0.7), widen=0)
    widened = libmerge.search("task_arithmetic", base, [model], peak_at(0.7))
    assert plain[2] == widened[2] and widened.widened == 0
