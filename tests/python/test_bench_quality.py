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
    assert "## ViT width 128, zero-shot-style heads, full fine-tuning, 3 tasks" in text
    # ESM against TSV-M and Iso-C, with a paired standard error, per setting
    verdict = re.findall(r"^\| (MLP|ViT)[^|]*, 3 tasks \| ([\d.]+) \|.*\| ([-+][\d.]+) \| ([\d.]+) \|$",
                         text, re.M)
    # MLP and both ViT kinds, full fine-tuning (no iso_c for LoRA)
    assert len(verdict) == 3, verdict
    assert all(0 < float(se) < 10 for *_, se in verdict)
    sections = re.findall(r"^## (.*), 3 tasks\n\n.*Fine-tuned accuracy: ([^(]*)\(.*"
                          r"under the same heads: ([\d.]+) % normalized", text, re.M)
    assert len(sections) == 4, sections
    for title, listed, pretrained in sections:
        fine_tuned = [float(x) for x in listed.strip(" .").split(", ")]
        if "zero-shot-style" in title:
            # weak heads and the smoke run's 32 steps: learned, not finished
            assert min(fine_tuned) > 30 and float(pretrained) < 80, (title, listed, pretrained)
        else:
            assert min(fine_tuned) > 60, title  # every task was learned (chance <= 50 %)
    rows = re.findall(r"^\| (task_arithmetic|tsv) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)",
                      text, re.M)
    assert rows
    for _, abs_d, norm_d, abs_b, norm_b in rows:
        assert 0 < float(abs_b) <= 100 and float(norm_b) > 40


def test_quality_seeds_smoke(tmp_path):
    """bench/quality/seeds.py: the ESM verdict repeated over fine-tuning
    seeds; different seeds must give different fine-tunes."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "quality", "seeds.py"),
                        "--smoke", "--kind", "full", "--tasks", "3", "--seeds", "0,1",
                        "--out", str(tmp_path), "--cache", str(tmp_path / "cache")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    text = (tmp_path / "quality_seeds-smoke.md").read_text()
    rows = re.findall(r"^\| (\d) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([-+][\d.]+) \| ([\d.]+) \|$",
                      text, re.M)
    assert [row[0] for row in rows] == ["0", "1"], text
    for _, esm, tsv, iso_c, diff, se in rows:
        assert all(40 < float(v) <= 110 for v in (esm, tsv, iso_c))
        assert abs(float(diff) - (float(esm) - max(float(tsv), float(iso_c)))) < 0.11
        assert 0 < float(se) < 10
    assert rows[0][1:4] != rows[1][1:4]  # the seeds' fine-tunes differ
    assert re.search(r"mean [-+][\d.]+, standard deviation [\d.]+, ESM ahead on \d of 2", text)
