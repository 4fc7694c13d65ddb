"""examples/load_time_merge.py runs (its demo: two loader threads merging
through libmerge.Merger) and reports a result identical to the offline
merge; its command-line form merges files into a file."""
import os
import subprocess
import sys

import numpy as np

import libmerge

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "load_time_merge.py")


def run(*args):
    return subprocess.run([sys.executable, EXAMPLE] + list(args), capture_output=True,
                          text=True, env=dict(os.environ), timeout=120)


def test_demo_matches_offline():
    r = run()
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok: 4 tensors merged at load time")


def test_command_line(tmp_path):
    rng = np.random.default_rng(3)
    base = {"a": rng.standard_normal((4, 3)).astype(np.float32),
            "b": rng.standard_normal(4).astype(np.float32)}
    fts = [{k: v + rng.standard_normal(v.shape).astype(np.float32) for k, v in base.items()}
           for _ in range(2)]
    paths = []
    for i, m in enumerate([base] + fts):
        paths.append(str(tmp_path / ("m%d.safetensors" % i)))
        libmerge.save(paths[-1], m)
    out = str(tmp_path / "out.safetensors")
    r = run(*paths, "--method", "task_arithmetic", "--param", "lambda=0.5", "--out", out)
    assert r.returncode == 0, r.stderr
    got = libmerge.load(out)
    want = libmerge.merge("task_arithmetic", base, fts, **{"lambda": 0.5})
    for k in base:
        np.testing.assert_array_equal(got[k], want[k])
