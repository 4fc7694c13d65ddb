"""`lmerge run` with `stats:` and `purify:`: a config names statistics
files written by libmerge.Stats.save and purification options; the CLI's
merge is bit-identical to libmerge.merge with the same statistics and
options (the same library decides both), including keep "cv" tuned on the
held-out rows the statistics file carries. Errors name the config line."""
import json
import os
import subprocess

import numpy as np
import pytest

import libmerge
import st_format

LMERGE = os.environ.get("LIBMERGE_LMERGE")
pytestmark = pytest.mark.skipif(not LMERGE, reason="LIBMERGE_LMERGE is not set")
SHAPES = {"fc1.weight": (12, 8), "fc1.bias": (12,), "fc2.weight": (6, 12)}


def make(tmp_path, heldout_fraction=0.0, folds=None):
    rng = np.random.default_rng(5)
    base = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    fts = [{k: v + 0.2 * rng.standard_normal(v.shape).astype(np.float32)
            for k, v in base.items()} for _ in range(2)]
    st_format.write(tmp_path / "base.safetensors", base)
    for i, f in enumerate(fts):
        st_format.write(tmp_path / ("ft%d.safetensors" % i), f)
    stats = (libmerge.Stats(folds=folds) if folds
             else libmerge.Stats(heldout_fraction=heldout_fraction))
    for t in range(2):
        stats.observe(t, "fc1.weight", rng.standard_normal((40, 8)).astype(np.float32))
        stats.observe(t, "fc2.weight", rng.standard_normal((40, 12)).astype(np.float32))
    stats.save(str(tmp_path / "acts.lmstats"))
    return base, fts, stats


def config(tmp_path, method, extra):
    p = tmp_path / "m.yaml"
    p.write_text("merge_method: %s\nbase_model: %s\nmodels:\n  - model: %s\n  - model: %s\n%s"
                 % (method, tmp_path / "base.safetensors", tmp_path / "ft0.safetensors",
                    tmp_path / "ft1.safetensors", extra))
    return p


def run(*args):
    return subprocess.run([LMERGE, *map(str, args)], capture_output=True, text=True)


def same(got, want):
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


@pytest.mark.parametrize("method,purify,yaml", [
    ("esm", None, ""),
    ("task_arithmetic", {"keep": 0.8, "allocation": "layer"},
     "purify:\n  keep: 0.8\n  allocation: layer\n"),
    ("tsv", {"keep": 0.9, "polarize": 0.5}, "purify: {keep: 0.9, polarize: 0.5}\n"),
])
def test_stats_and_purify_match_the_bindings(tmp_path, method, purify, yaml):
    base, fts, stats = make(tmp_path)
    cfg = config(tmp_path, method, "stats: %s\n%s" % (tmp_path / "acts.lmstats", yaml))
    r = run("run", cfg, "-o", tmp_path / "out", "--quiet")
    assert r.returncode == 0, r.stderr
    got = st_format.read_dir(str(tmp_path / "out"))
    want = libmerge.merge(method, base, fts, stats=stats, purify=purify)
    same(got, want)
    # Without stats the merge differs (ESM routes, purification refuses).
    if purify is None:
        r = run("run", config(tmp_path, method, ""), "-o", tmp_path / "nostats", "--quiet")
        assert r.returncode == 0, r.stderr
        other = st_format.read_dir(str(tmp_path / "nostats"))
        assert any(not np.array_equal(other[k], want[k]) for k in want)


def test_keep_cv_uses_the_files_heldout_rows(tmp_path):
    base, fts, stats = make(tmp_path, heldout_fraction=0.5)
    cfg = config(tmp_path, "task_arithmetic",
                 "stats: [%s]\npurify: {keep: cv}\n" % (tmp_path / "acts.lmstats"))
    r = run("run", cfg, "-o", tmp_path / "out", "--json")
    assert r.returncode == 0, r.stderr
    report = {}
    want = libmerge.merge("task_arithmetic", base, fts, stats=stats,
                          purify={"keep": "cv", "report": report})
    assert json.loads(r.stdout)["purify_keep"] == report["keep"]
    same(st_format.read_dir(str(tmp_path / "out")), want)


@pytest.mark.parametrize("se_rule", [0, 3])
def test_keep_cv_se_rule_over_the_files_folds(tmp_path, se_rule):
    base, fts, stats = make(tmp_path, folds=4)
    cfg = config(tmp_path, "task_arithmetic",
                 "stats: [%s]\npurify: {keep: cv, se_rule: %s}\n"
                 % (tmp_path / "acts.lmstats", se_rule))
    r = run("run", cfg, "-o", tmp_path / "out", "--json")
    assert r.returncode == 0, r.stderr
    report = {}
    want = libmerge.merge("task_arithmetic", base, fts, stats=stats,
                          purify={"keep": "cv", "se_rule": se_rule, "report": report})
    assert report["objective"] == "4-fold held-out drift"
    assert json.loads(r.stdout)["purify_keep"] == report["keep"]
    same(st_format.read_dir(str(tmp_path / "out")), want)


@pytest.mark.parametrize("extra,message", [
    ("purify: {keep: 0.8}\n", "m.yaml:6: purify needs activation statistics"),
    ("stats: nope.lmstats\n", "stats 'nope.lmstats'"),
    ("stats: {a: 1}\n", "'stats' must be a path or a list of paths"),
    ("stats: ACTS\npurify: {keep: 0.8, rank: 3}\n", "unknown purify key 'rank'"),
    ("stats: ACTS\npurify: {allocation: global}\n", "purify allocation 'global'"),
    ("stats: ACTS\npurify: {keep: 1.5}\n", "keep must be in (0, 1]"),
    ("stats: ACTS\npurify: {keep: cv, se_rule: -1}\n", "se_rule must be finite"),
])
def test_errors_name_the_line(tmp_path, extra, message):
    make(tmp_path)
    cfg = config(tmp_path, "task_arithmetic",
                 extra.replace("ACTS", str(tmp_path / "acts.lmstats")))
    r = run("run", cfg, "-o", tmp_path / "out", "--quiet")
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def two_stats(tmp_path):
    rng = np.random.default_rng(9)
    paths = []
    parts = []
    for r in range(2):  # e.g. two ranks' calibration files
        s = libmerge.Stats()
        s.observe(0, "fc1.weight", rng.standard_normal((10 + r, 8)).astype(np.float32))
        s.observe(1, "fc2.weight", rng.standard_normal((7, 12)).astype(np.float32))
        p = tmp_path / ("rank%d.lmstats" % r)
        s.save(str(p))
        paths.append(p)
        parts.append(s)
    return paths, parts


def test_stats_info_check_and_merge(tmp_path):
    paths, parts = two_stats(tmp_path)
    r = run("stats", "info", *paths)
    assert r.returncode == 0, r.stderr
    assert "2 keys" in r.stdout and "fc1.weight" in r.stdout and "rows 11" in r.stdout
    r = run("stats", "check", *paths)
    assert r.returncode == 0 and "2 files ok" in r.stdout, r.stderr
    out = tmp_path / "sum.lmstats"
    r = run("stats", "merge", "-o", out, *paths)
    assert r.returncode == 0, r.stderr
    want = libmerge.Stats()
    for s in parts:
        want.merge(s)
    got = libmerge.Stats.load(str(out))
    assert sorted(got.keys()) == sorted(want.keys())
    for key in want.keys():
        g, n = got.get(*key)
        w, m = want.get(*key)
        assert n == m
        np.testing.assert_array_equal(g, w)  # the same f64 sums


def test_stats_errors(tmp_path):
    paths, _ = two_stats(tmp_path)
    bad = tmp_path / "bad.lmstats"
    data = bytearray(paths[0].read_bytes())
    data[30] ^= 0xFF
    bad.write_bytes(bytes(data))
    r = run("stats", "check", paths[0], bad)
    assert r.returncode == 1 and "bad.lmstats" in r.stderr, r.stderr
    # A failed merge writes nothing.
    other = libmerge.Stats()
    other.observe(0, "fc1.weight", np.ones((3, 5), np.float32))  # another d_in
    other.save(str(tmp_path / "other.lmstats"))
    out = tmp_path / "sum.lmstats"
    r = run("stats", "merge", "-o", out, paths[0], tmp_path / "other.lmstats")
    assert r.returncode == 1 and "other.lmstats" in r.stderr, r.stderr
    assert not out.exists()
    assert run("stats", "merge", paths[0]).returncode == 2
    assert run("stats", "frobnicate", paths[0]).returncode == 2
