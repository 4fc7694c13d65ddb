"""`lmerge run` never touches, overwrites or hides a user's model: an output
directory that is, contains or lies inside an input's directory is refused
(with or without --overwrite), a non-empty one is refused without
--overwrite and replaced as a whole with it, and a failure at any step
(side files, index) leaves no output and no staging directory. Every input
is compared byte for byte (sha256) before and after. Merged values are
checked against numpy's task arithmetic."""
import json
import os
import resource
import signal
import subprocess

import numpy as np
import pytest

import st_format
from filetree import snapshot

LMERGE = os.environ.get("LIBMERGE_LMERGE")
pytestmark = pytest.mark.skipif(not LMERGE, reason="LIBMERGE_LMERGE is not set")
SHAPES = {"embed.weight": (40, 8), "layers.0.fc.weight": (16, 8), "norm.weight": (8,)}


def make_inputs(tmp):
    """base/ (file + side files), ft.safetensors, sharded/ (index + 2 shards)."""
    rng = np.random.default_rng(3)
    base = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    fts = [{k: v + 0.1 * rng.standard_normal(v.shape).astype(np.float32)
            for k, v in base.items()} for _ in range(2)]
    (tmp / "base").mkdir()
    st_format.write(tmp / "base" / "model.safetensors", base)
    (tmp / "base" / "config.json").write_text('{"model_type": "toy"}')
    st_format.write(tmp / "ft.safetensors", fts[0])
    (tmp / "sharded").mkdir()
    names = list(SHAPES)
    st_format.write(tmp / "sharded" / "p1.safetensors", {k: fts[1][k] for k in names[:1]})
    st_format.write(tmp / "sharded" / "p2.safetensors", {k: fts[1][k] for k in names[1:]})
    wm = {k: "p1.safetensors" if i < 1 else "p2.safetensors" for i, k in enumerate(names)}
    (tmp / "sharded" / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": wm}))
    return base, fts


def config(tmp, lam, base="base", name="m.yaml"):
    p = tmp / name
    p.write_text("merge_method: task_arithmetic\nbase_model: %s\nmodels:\n"
                 "  - model: %s\n  - model: %s\nparameters: {lambda: %s}\n"
                 % (tmp / base, tmp / "ft.safetensors", tmp / "sharded", lam))
    return p


def expected(base, fts, lam):
    return {k: base[k] + lam * sum(f[k] - base[k] for f in fts) for k in base}


def run(*args, **kw):
    return subprocess.run([LMERGE, *map(str, args)], capture_output=True, text=True, **kw)


def no_staging_left(parent):
    left = [n for n in os.listdir(parent) if ".lmerge-" in n]
    assert not left, left


@pytest.mark.parametrize("out,base,why", [
    ("base", "base/model.safetensors", "holding the input"),  # the case 1
    ("base", "base", "is the input directory"),
    ("sharded", "base", "is the input directory"),       # a fine-tune's directory
    (".", "base", "contains the input"),                 # the folder of every input
    ("base/merged", "base", "inside the input directory"),
])
@pytest.mark.parametrize("overwrite", [False, True])
def test_output_overlapping_an_input_is_refused(tmp_path, out, base, why, overwrite):
    make_inputs(tmp_path)
    cfg = config(tmp_path, 0.5, base=base)
    before = snapshot(tmp_path)
    dest = tmp_path / out if out != "." else tmp_path
    r = run("run", cfg, "-o", dest, "--quiet", *(["--overwrite"] if overwrite else []))
    assert r.returncode == 1, r.stderr
    assert why in r.stderr and "choose a directory outside every input" in r.stderr, r.stderr
    assert snapshot(tmp_path) == before  # nothing added, changed or removed


def test_output_through_a_symlink_to_an_input_is_refused(tmp_path):
    make_inputs(tmp_path)
    cfg = config(tmp_path, 0.5)
    os.symlink(tmp_path / "sharded", tmp_path / "link")
    before = snapshot(tmp_path / "sharded")
    r = run("run", cfg, "-o", tmp_path / "link", "--overwrite", "--quiet")
    assert r.returncode == 1 and "is the input directory" in r.stderr, r.stderr
    assert snapshot(tmp_path / "sharded") == before


def read_model(path):
    import libmerge
    return libmerge.load(str(path))


def test_reused_output_directory_needs_overwrite_and_is_replaced_whole(tmp_path):
    base, fts = make_inputs(tmp_path)
    out = tmp_path / "out"
    # Run A: shards and an index.
    r = run("run", config(tmp_path, 0.3, name="a.yaml"), "-o", out, "--shard-size", "500B",
            "--quiet")
    assert r.returncode == 0, r.stderr
    assert (out / "model.safetensors.index.json").exists()
    a_files = snapshot(out)
    # Run B (one file) into the same directory: refused, A intact.
    cfg_b = config(tmp_path, 0.7, name="b.yaml")
    r = run("run", cfg_b, "-o", out, "--quiet")
    assert r.returncode == 1 and "not empty" in r.stderr and "--overwrite" in r.stderr, r.stderr
    assert snapshot(out) == a_files
    # With --overwrite: exactly B's files, and every reader sees B.
    r = run("run", cfg_b, "-o", out, "--quiet", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["README.md", "config.json",
                                   "mergekit_config.yml", "model.safetensors"]
    want = expected(base, fts, 0.7)
    got = read_model(out)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)
    info = run("info", out)
    assert info.returncode == 0 and info.stdout.count("\n") == len(SHAPES)
    # And back: A's shards replace B's single file, none of B stays.
    r = run("run", config(tmp_path, 0.3, name="a.yaml"), "-o", out, "--shard-size", "500B",
            "--quiet", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert "model.safetensors" not in os.listdir(out)
    assert snapshot(out) == a_files  # byte-identical to run A
    no_staging_left(tmp_path)


def limit_file_size(nbytes):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


def test_failed_side_file_copy_leaves_no_model(tmp_path):
    make_inputs(tmp_path)
    (tmp_path / "base" / "tokenizer.json").write_bytes(b"x" * 300_000)
    cfg = config(tmp_path, 0.5)
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    r = run("run", cfg, "-o", out, "--quiet",
            preexec_fn=limit_file_size(100_000))
    assert r.returncode == 1 and "tokenizer.json" in r.stderr, r.stderr
    assert not out.exists()
    no_staging_left(tmp_path)
    assert snapshot(tmp_path) == before


def test_failed_index_write_leaves_no_shard(tmp_path):
    # Long names make the index far larger than any shard.
    rng = np.random.default_rng(0)
    names = ["layers.%d.%s.weight" % (i, "x" * 900) for i in range(60)]
    t = {n: rng.standard_normal(4).astype(np.float32) for n in names}
    for p in ("b", "f"):
        st_format.write(tmp_path / ("%s.safetensors" % p), t)
    cfg = tmp_path / "m.yaml"
    cfg.write_text("merge_method: task_arithmetic\nbase_model: %s\nmodels:\n  - model: %s\n"
                   % (tmp_path / "b.safetensors", tmp_path / "f.safetensors"))
    out = tmp_path / "new" / "out"
    r = run("run", cfg, "-o", out, "--shard-size", "16B", "--quiet",
            preexec_fn=limit_file_size(20_000))
    assert r.returncode == 1 and "index" in r.stderr, r.stderr
    assert not (tmp_path / "new").exists()  # not even the parent it created
    r = run("run", cfg, "-o", out, "--shard-size", "16B", "--quiet")
    assert r.returncode == 0 and len(os.listdir(out)) == 63, r.stderr


def test_failed_merge_leaves_no_directory(tmp_path):
    make_inputs(tmp_path)
    st_format.write(tmp_path / "ft.safetensors",
                    {k: np.zeros((3,), np.float32) for k in SHAPES})  # wrong shapes
    out = tmp_path / "a" / "b" / "out"
    r = run("run", config(tmp_path, 0.5), "-o", out, "--quiet")
    assert r.returncode == 1, r.stderr
    assert not (tmp_path / "a").exists()


def test_fifo_is_refused_not_waited_on(tmp_path):
    make_inputs(tmp_path)
    os.mkfifo(tmp_path / "base" / "tokenizer.json")      # a side file: skipped
    os.mkfifo(tmp_path / "pipe.safetensors")              # a model: refused
    r = run("run", config(tmp_path, 0.5), "-o", tmp_path / "out", "--quiet", timeout=20)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "out")) == [
        "README.md", "config.json", "mergekit_config.yml", "model.safetensors"]
    cfg = config(tmp_path, 0.5, base="pipe.safetensors", name="p.yaml")
    r = run("run", cfg, "-o", tmp_path / "out2", "--quiet", timeout=20)
    assert r.returncode == 1 and "pipe.safetensors" in r.stderr and "FIFO" in r.stderr, r.stderr
    assert not (tmp_path / "out2").exists()
