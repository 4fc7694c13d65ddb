"""bench/quality/variants_report.py's purification-objective section on a
hand-made curve whose rank correlations and regrets are worked out here:
test accuracy 90 / 92 / 91 at keep 1 / 0.99 / 0.97; validation accuracy
and the teacher score rank the keeps as test does (rho 1); the held-out
drift 5 / 4 / 6 ranks them 0.99 > 1 > 0.97 (rho 0.5); every rule but
"never purify" picks 0.99 (regret 0), never purify loses 2 points."""
import os
import sys

import pytest

pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "bench", "quality"))


def test_objective_section_tables():
    import variants_report
    curve = [dict(keep=1.0, norm=90.0, val=0.5, teacher=-3.0, drift=5.0),
             dict(keep=0.99, norm=92.0, val=0.7, teacher=-1.0, drift=4.0),
             dict(keep=0.97, norm=91.0, val=0.6, teacher=-2.0, drift=6.0)]
    results = [{"part": "purify_objective", "n": 3, "seed": s,
                "rows": {"tsv": {"curve": curve, "drift_keep": 0.99}}} for s in (0, 1)]
    text = "\n".join(variants_report._objective(results))
    assert "| held-out drift | 0.50 (2 curves) |" in text
    assert "| validation accuracy | 1.00 (2 curves) |" in text
    assert "| teacher score | 1.00 (2 curves) |" in text
    assert "| teacher score (no labels) | 0.00 | 0.00 | 2 of 2 |" in text
    assert "| never purify (keep 1.0) | 2.00 | 2.00 | 0 of 2 |" in text
    assert "3 tasks: 0, 1" in text
    assert variants_report._objective([{"part": "full", "n": 3, "seed": 0, "rows": {}}]) == []
