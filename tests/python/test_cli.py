"""`lmerge run` end to end: files written by an independent Python writer,
merged by the CLI, read back by an independent Python reader and compared
with numpy's task arithmetic (f32 rounding tolerance, see test_bindings)."""
import json
import os
import subprocess

import numpy as np
import pytest

import st_format

LMERGE = os.environ.get("LIBMERGE_LMERGE")
pytestmark = pytest.mark.skipif(not LMERGE, reason="LIBMERGE_LMERGE is not set "
                                "(meson test sets it to the built lmerge)")
RNG = np.random.default_rng(7)
SHAPES = {"embed.weight": (50, 16), "layers.0.fc.weight": (32, 16),
          "layers.0.fc.bias": (32,), "norm.weight": (16,)}


def make_models(tmp_path):
    base = {k: RNG.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    fts = [{k: v + 0.1 * RNG.standard_normal(v.shape).astype(np.float32)
            for k, v in base.items()} for _ in range(2)]
    (tmp_path / "base").mkdir()
    st_format.write(tmp_path / "base" / "model.safetensors", base)
    (tmp_path / "base" / "config.json").write_text('{"model_type": "toy"}')
    (tmp_path / "base" / "tokenizer.json").write_text("{}")
    st_format.write(tmp_path / "a.safetensors", fts[0])
    # The second model is sharded with an index, like Hugging Face's.
    (tmp_path / "b").mkdir()
    names = list(SHAPES)
    st_format.write(tmp_path / "b" / "part1.safetensors", {k: fts[1][k] for k in names[:2]})
    st_format.write(tmp_path / "b" / "part2.safetensors", {k: fts[1][k] for k in names[2:]})
    wm = {k: "part1.safetensors" if i < 2 else "part2.safetensors" for i, k in enumerate(names)}
    (tmp_path / "b" / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": wm}))
    return base, fts


def run(*args):
    return subprocess.run([LMERGE, *map(str, args)], capture_output=True, text=True)


def write_config(tmp_path, text):
    p = tmp_path / "merge.yaml"
    p.write_text(text)
    return p


CONFIG = """merge_method: task_arithmetic
base_model: {base}
models:
  - model: {a}
    parameters: {{weight: 1.0}}
  - model: {b}
    parameters:
      weight: 0.5
parameters:
  lambda: 0.8
"""


def test_run_merges_like_numpy(tmp_path):
    base, (a, b) = make_models(tmp_path)
    cfg = write_config(tmp_path, CONFIG.format(base=tmp_path / "base",
                                               a=tmp_path / "a.safetensors",
                                               b=tmp_path / "b"))
    out = tmp_path / "out"
    r = run("run", cfg, "-o", out, "--json", "--threads", "2")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["status"] == "ok" and report["tensors"] == len(SHAPES)
    tensors, meta, hlen = st_format.read(out / "model.safetensors")
    assert (8 + hlen) % 8 == 0
    assert meta["merge_method"] == "task_arithmetic" and "libmerge" in meta["merged_by"]
    assert "lambda: 0.8" in meta["merge_config"]
    assert list(tensors) == list(SHAPES)
    for k in SHAPES:
        want = base[k] + np.float32(0.8) * (1.0 * (a[k] - base[k]) + 0.5 * (b[k] - base[k]))
        scale = np.abs(base[k]) + np.abs(a[k]) + np.abs(b[k])
        assert np.all(np.abs(tensors[k] - want) <= 4 * 2.0**-24 * scale), k
    assert (out / "config.json").read_text() == '{"model_type": "toy"}'
    assert (out / "tokenizer.json").exists()
    assert not [p for p in os.listdir(out) if ".tmp." in p]

    info = run("info", out)
    assert info.returncode == 0 and "layers.0.fc.weight" in info.stdout
    assert "[32, 16]" in info.stdout


def test_sharded_bf16_output(tmp_path):
    base, (a, b) = make_models(tmp_path)
    cfg = write_config(tmp_path, CONFIG.format(base=tmp_path / "base",
                                               a=tmp_path / "a.safetensors",
                                               b=tmp_path / "b"))
    out = tmp_path / "out"
    r = run("run", cfg, "-o", out, "--shard-size", "2KB", "--dtype", "bf16", "-q")
    assert r.returncode == 0, r.stderr
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(np.prod(s) * 2 for s in SHAPES.values())
    assert len(set(index["weight_map"].values())) > 1
    tensors = st_format.read_dir(out)
    k = "layers.0.fc.weight"
    want = base[k] + np.float32(0.8) * ((a[k] - base[k]) + 0.5 * (b[k] - base[k]))
    got = (tensors[k].astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_allclose(got, want, rtol=2**-8, atol=1e-6)


@pytest.mark.parametrize("text,fragment", [
    ("merge_method: task_arithmetic\nbase_model: {base}\nmodels: [{a}]\nbogus: 1\n",
     ":4: unknown key 'bogus'"),
    ("merge_method: nope\nbase_model: {base}\nmodels: [{a}]\n", ":1: no strategy named 'nope'"),
    ("merge_method: task_arithmetic\nbase_model: {base}\nmodels: [{a}]\n"
     "parameters: {{lambda: 99}}\n", ":4: task_arithmetic: parameter 'lambda' = 99 is outside"),
    ("merge_method: task_arithmetic\nbase_model: {base}\nmodels: [{missing}]\n",
     "missing.safetensors"),
    ("merge_method: task_arithmetic\nbase_model: {base}\nmodels: [{broken}]\n",
     "broken.safetensors: the header is not a well-formed JSON object"),
])
def test_errors_leave_no_output(tmp_path, text, fragment):
    make_models(tmp_path)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{nope!!}")
    cfg = write_config(tmp_path, text.format(base=tmp_path / "base",
                                             a=tmp_path / "a.safetensors",
                                             missing=tmp_path / "missing.safetensors",
                                             broken=broken))
    out = tmp_path / "out"
    r = run("run", cfg, "-o", out)
    assert r.returncode == 1
    assert fragment in r.stderr, r.stderr
    assert not (out / "model.safetensors").exists()
    assert not out.exists() or not [p for p in os.listdir(out) if p.endswith(".safetensors")]


def test_methods_lists_parameters():
    r = run("methods")
    assert r.returncode == 0
    assert "task_arithmetic" in r.stdout and "lambda" in r.stdout
