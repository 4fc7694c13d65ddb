"""Output failures leave nothing behind: a disk that fills up (simulated
with RLIMIT_FSIZE, which makes writes fail with EFBIG like ENOSPC) and a
destination that cannot be created. lmerge must fail with a clear message
and leave neither a final file nor a temporary one."""
import os
import resource
import signal
import subprocess

import numpy as np
import pytest

import st_format

LMERGE = os.environ.get("LIBMERGE_LMERGE")
pytestmark = pytest.mark.skipif(not LMERGE, reason="LIBMERGE_LMERGE is not set")


def limit_file_size(nbytes):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG, not a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


def models(tmp_path, gguf=False):
    rng = np.random.default_rng(0)
    # The last tensor is the largest, so with shards it fails after others.
    base = {"w%d" % i: rng.standard_normal((256 * (1 + i // 3), 256)).astype(np.float32)
            for i in range(4)}
    paths = []
    for k in range(3):
        t = base if k == 0 else {n: v + 0.1 for n, v in base.items()}
        p = tmp_path / ("m%d.%s" % (k, "gguf" if gguf else "safetensors"))
        if gguf:
            import gguf_format
            gguf_format.write(p, t, [("general.architecture", gguf_format.STRING, "x")])
        else:
            st_format.write(p, t)
        paths.append(p)
    cfg = tmp_path / "m.yaml"
    cfg.write_text("merge_method: task_arithmetic\nbase_model: %s\nmodels:\n  - model: %s\n"
                   "  - model: %s\n" % tuple(paths))
    return cfg


@pytest.mark.parametrize("gguf,shard,limit", [
    (False, None, 100_000),         # fails when the file is sized
    (False, "300KB", 400_000),      # the first shards fit, the last fails
    (True, None, 100_000),
])
def test_disk_full_leaves_nothing(tmp_path, gguf, shard, limit):
    cfg = models(tmp_path, gguf)
    out = tmp_path / "out"
    out.mkdir()
    args = [LMERGE, "run", str(cfg), "-o", str(out), "--quiet"]
    if shard:
        args += ["--shard-size", shard]
    r = subprocess.run(args, capture_output=True, text=True, preexec_fn=limit_file_size(limit))
    assert r.returncode != 0
    assert "File too large" in r.stderr or "No space" in r.stderr, r.stderr
    assert os.listdir(out) == [], os.listdir(out)


def test_uncreatable_destination(tmp_path):
    cfg = models(tmp_path)
    (tmp_path / "file").write_text("not a directory")
    r = subprocess.run([LMERGE, "run", str(cfg), "-o", str(tmp_path / "file" / "out"), "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "file/out" in r.stderr, r.stderr
    assert (tmp_path / "file").read_text() == "not a directory"


def test_npz_write_failure_midway_leaves_nothing(tmp_path):
    # libmerge.save writes the archive sequentially: the limit is hit in
    # the middle of the data.
    code = ("import numpy as np, libmerge\n"
            "libmerge.save(%r, {'w': np.ones((512, 512), np.float32)})\n" % str(tmp_path / "o.npz"))
    r = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True,
                       preexec_fn=limit_file_size(200_000), env=os.environ)
    assert r.returncode != 0 and "npz: cannot write" in r.stderr, r.stderr
    assert os.listdir(tmp_path) == []
