"""Crash consistency of `lmerge run`: a merge killed with SIGKILL at points
spread over its run leaves its destination holding either nothing or the
complete model (byte-identical to an uninterrupted run), never a mix;
with --overwrite, either the old complete model or the new one. SIGINT and
SIGTERM cancel cleanly: the destination is unchanged and no staging
directory remains. Inputs are byte-identical (sha256) after every run.
Covered for one safetensors file, shards plus index, and GGUF."""
import os
import signal
import subprocess
import time

import numpy as np
import pytest

import gguf_format
import st_format
from filetree import snapshot

LMERGE = os.environ.get("LIBMERGE_LMERGE")
pytestmark = pytest.mark.skipif(not LMERGE, reason="LIBMERGE_LMERGE is not set")
FRACTIONS = (0.0, 0.15, 0.3, 0.5, 0.7, 0.85, 1.0, 1.2)


def make_inputs(tmp, kind):
    """A base and two fine-tunes of 12 x 1 MB tensors."""
    rng = np.random.default_rng(1)
    base = {"layers.%d.weight" % i: rng.standard_normal((256, 1024)).astype(np.float32)
            for i in range(12)}
    ext = "gguf" if kind == "gguf" else "safetensors"
    paths = []
    for k in range(3):
        t = base if k == 0 else {n: v + np.float32(0.01 * k) for n, v in base.items()}
        d = tmp / ("m%d" % k)
        d.mkdir()
        p = d / ("model." + ext)
        if kind == "gguf":
            gguf_format.write(p, t, [("general.architecture", gguf_format.STRING, "llama")])
        else:
            st_format.write(p, t)
        (d / "config.json").write_text('{"model_type": "llama"}')
        paths.append(p if kind == "gguf" else d)  # GGUF is merged by file
    return paths


def config(tmp, paths, lam):
    p = tmp / ("c%s.yaml" % lam)
    p.write_text("merge_method: task_arithmetic\nbase_model: %s\nmodels:\n  - model: %s\n"
                 "  - model: %s\nparameters: {lambda: %s}\n" % (*paths, lam))
    return p


def start(cfg, out, kind, overwrite=False):
    args = [LMERGE, "run", str(cfg), "-o", str(out), "--quiet", "--threads", "2"]
    if kind == "shards":
        args += ["--shard-size", "3MB"]
    if overwrite:
        args.append("--overwrite")
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def staged_file(parent, name):
    """Whether a staging directory of `name` holds a file yet."""
    for d in os.listdir(parent):
        if d.startswith("." + name + ".lmerge-"):
            try:
                if os.listdir(os.path.join(parent, d)):
                    return True
            except FileNotFoundError:
                pass
    return False


def staging_left(parent):
    return [n for n in os.listdir(parent) if ".lmerge-" in n]


@pytest.mark.parametrize("kind", ["single", "shards", "gguf"])
def test_killed_merge_leaves_nothing_or_a_complete_model(tmp_path, kind):
    paths = make_inputs(tmp_path, kind)
    inputs = {str(p): snapshot(p) for p in paths}
    new_cfg, old_cfg = config(tmp_path, paths, 0.5), config(tmp_path, paths, 0.25)
    # Uninterrupted references, and how long a run takes.
    t0 = time.monotonic()
    p = start(new_cfg, tmp_path / "ref_new", kind)
    assert p.wait() == 0, p.stderr.read()
    duration = time.monotonic() - t0
    p = start(old_cfg, tmp_path / "ref_old", kind)
    assert p.wait() == 0, p.stderr.read()
    new, old = snapshot(tmp_path / "ref_new"), snapshot(tmp_path / "ref_old")
    assert new != old and ("config.json" in new) == (kind != "gguf")
    # Kill points: fractions of the reference run's duration (a loaded
    # machine stretches runs, so these alone may all land before the
    # commit), plus two events watched for: the staging directory holding a
    # file, and the destination appearing (after the commit's rename, before
    # the process exits).
    points = [("time", f) for f in FRACTIONS] + [("staged", None), ("appeared", None)]
    for i, (kind_of_point, f) in enumerate(points):
        for overwrite in (False, True):
            if kind_of_point == "appeared" and overwrite:
                continue  # the destination exists from the start
            out = tmp_path / ("out%d%s" % (i, "o" if overwrite else ""))
            if overwrite:  # an earlier complete model is being replaced
                p = start(old_cfg, out, kind)
                assert p.wait() == 0
            p = start(new_cfg, out, kind, overwrite)
            if kind_of_point == "time":
                time.sleep(f * duration)
            else:
                while p.poll() is None and not (
                        out.exists() if kind_of_point == "appeared"
                        else staged_file(tmp_path, out.name)):
                    time.sleep(0.0005)
            p.send_signal(signal.SIGKILL)
            p.wait()
            got = snapshot(out) if out.exists() else None
            allowed = [None, new] if not overwrite else [old, new]
            assert got in allowed, "mixed output after a kill at %s %s" % (kind_of_point, f)
            if kind_of_point == "time" and f == 0.0 and not overwrite:
                assert got is None  # killed while loading its inputs
            if kind_of_point == "appeared":
                assert got == new  # the commit had happened
            for s in staging_left(tmp_path):  # what a killed run may leave, hidden
                # (a sharded sink stages inside the run's staging: "..out")
                assert s.lstrip(".").startswith("out%d" % i), s
                subprocess.run(["rm", "-rf", str(tmp_path / s)], check=True)
    assert {str(p): snapshot(p) for p in paths} == inputs


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_merge_cleans_up(tmp_path, sig):
    paths = make_inputs(tmp_path, "shards")
    cfg = config(tmp_path, paths, 0.5)
    inputs = {str(p): snapshot(p) for p in paths}
    t0 = time.monotonic()
    p = start(cfg, tmp_path / "ref", "shards")
    assert p.wait() == 0
    duration = time.monotonic() - t0
    cancelled = 0
    for i, f in enumerate((0.3, 0.5, 0.7)):
        out = tmp_path / ("out%d" % i)
        p = start(cfg, out, "shards")
        time.sleep(f * duration)
        p.send_signal(sig)
        rc = p.wait()
        err = p.stderr.read().decode()
        if rc == 0:  # finished before the signal arrived
            assert snapshot(out) == snapshot(tmp_path / "ref")
            continue
        cancelled += 1
        assert rc in (128 + sig, -sig), (rc, err)
        assert not out.exists(), os.listdir(out)
        if rc == 128 + sig:  # handled: the staging directory is gone too
            assert "was not changed" in err, err
            assert staging_left(tmp_path) == []
    assert cancelled, "every signal arrived after the merge finished"
    assert {str(p): snapshot(p) for p in paths} == inputs
