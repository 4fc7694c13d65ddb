"""The quality benchmark's smoke run (digits tasks, one epoch, 3 tasks,
a subset of methods): it must run end to end and write a table whose
numbers are accuracies of models that learned their tasks."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def test_quality_smoke(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "quality", "run.py"),
                        "--smoke", "--out", str(tmp_path), "--cache", str(tmp_path / "cache")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    text = (tmp_path / "quality-smoke.md").read_text()
    for method in ("average", "task_arithmetic", "tsv", "esm", "purify 0.97", "knots", "nsc",
                   "esm, clip-vit preset", "esm without scaling"):
        assert method in text
    assert "## ViT, full fine-tuning, 3 tasks" in text
    # ESM against TSV-M and Iso-C, with a paired standard error, per setting
    verdict = re.findall(r"^\| (MLP|ViT), [^|]*, 3 tasks \| ([\d.]+) \|.*\| ([-+][\d.]+) \| ([\d.]+) \|$",
                         text, re.M)
    assert len(verdict) == 2, verdict  # MLP and ViT full fine-tuning (no iso_c for LoRA)
    assert all(0 < float(se) < 10 for *_, se in verdict)
    fine_tuned = [float(x) for x in re.search(r"Fine-tuned accuracy: ([^(]*)\(", text)[1]
                  .strip(" .").split(", ")]
    assert min(fine_tuned) > 60  # every task was learned (chance <= 50 %)
    rows = re.findall(r"^\| (task_arithmetic|tsv) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)",
                      text, re.M)
    assert rows
    for _, abs_d, norm_d, abs_b, norm_b in rows:
        assert 0 < float(abs_b) <= 100 and float(norm_b) > 40
