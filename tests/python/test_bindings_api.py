"""The rest of the C API from Python, each against numpy: projectors (and
projections inside a merge), merge_to (file sinks, output directories),
file inspection and partial loads, lazy tensors, task vectors from LoRA
adapters and their scaling, adapters kept factored in a merge, Stats from
Gram matrices and non-f32 rows, output dtype, ties and progress."""
import json
import os

import numpy as np
import pytest

import libmerge
import libmerge.files

RNG = np.random.default_rng(44)
SHAPES = {"fc.weight": (6, 4), "fc.bias": (6,), "out.weight": (3, 6)}


def model():
    return {k: RNG.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def ta_ref(base, models, lam=1.0):
    """Task arithmetic in f64: base + lam * sum(model - base)."""
    return {k: base[k] + lam * sum(m[k].astype(np.float64) - base[k] for m in models)
            for k in base}


def close(got, want, tol=1e-5):
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=tol, atol=tol, err_msg=k)


# --- projectors -----------------------------------------------------------

def test_projector_from_array_matches_numpy_svd():
    a = RNG.standard_normal((6, 4))
    p = libmerge.Projector.from_array(a, "left", rank=2)
    u, s, vt = np.linalg.svd(a)
    assert (p.dim, p.rank) == (6, 2)
    # The library rounds the f64 input to f32 before its f64 SVD.
    s32 = np.linalg.svd(a.astype(np.float32).astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(p.values, s32[:2], rtol=1e-10)
    # Bases agree up to column signs: compare the projection matrices.
    np.testing.assert_allclose(p.basis @ p.basis.T, u[:, :2] @ u[:, :2].T, atol=1e-6)
    np.testing.assert_allclose(p.energy, (s32[:2] ** 2).sum() / (s32 ** 2).sum(), rtol=1e-10)
    x = RNG.standard_normal((3, 6)).astype(np.float32)
    proj = x.astype(np.float64) @ u[:, :2] @ u[:, :2].T
    np.testing.assert_allclose(p.project(x), proj, atol=1e-5)  # f32 in/out
    np.testing.assert_allclose(p.complement(x), x - proj, atol=1e-5)
    right = libmerge.Projector.from_array(a, "right", energy=0.999)
    assert right.dim == 4 and right.rank >= 1
    with pytest.raises(libmerge.ShapeError):
        libmerge.Projector.from_array(a, "eigen")
    with pytest.raises(libmerge.OutOfRangeError):
        libmerge.Projector.from_array(a, "left", rank=9)
    with pytest.raises(ValueError):
        p.project(np.zeros((2, 5), np.float32))


def test_projector_from_stats_and_projection_in_a_merge():
    base = model()
    models = [model(), model()]
    stats = libmerge.Stats()
    x = RNG.standard_normal((50, 4)).astype(np.float32)
    stats.observe(0, "fc.weight", x)
    p = libmerge.Projector.from_stats(stats, 0, "fc.weight", rank=2)
    w, v = np.linalg.eigh(x.astype(np.float64).T @ x / 50)
    top = v[:, ::-1][:, :2]
    np.testing.assert_allclose(p.values, w[::-1][:2], rtol=1e-6)
    np.testing.assert_allclose(p.basis @ p.basis.T, top @ top.T, atol=1e-6)
    got = libmerge.merge("task_arithmetic", base, models,
                         projections=[(r"^fc\.weight$", p, "rows", "keep", 0),
                                      {"pattern": r"^fc\.weight$", "projector": p,
                                       "mode": "remove", "model": 1}])
    pp = p.basis @ p.basis.T
    d0 = (models[0]["fc.weight"].astype(np.float64) - base["fc.weight"]) @ pp
    d1 = (models[1]["fc.weight"].astype(np.float64) - base["fc.weight"])
    d1 = d1 - d1 @ pp
    np.testing.assert_allclose(got["fc.weight"], base["fc.weight"] + d0 + d1, atol=1e-5)
    want = ta_ref(base, models)
    close(got, {k: want[k] for k in ("fc.bias", "out.weight")})
    with pytest.raises(libmerge.ShapeError, match="out.weight"):
        libmerge.merge("task_arithmetic", base, models, projections=[("out", p)])


# --- streaming into files ---------------------------------------------------

def test_merge_to_files_and_directories(tmp_path):
    base = model()
    models = [model(), model()]
    want = libmerge.merge("ties", base, models, density=0.5)
    one = str(tmp_path / "m.safetensors")
    assert libmerge.merge_to(one, "ties", base, models, density=0.5,
                             metadata={"who": "test"}) == [one]
    got = libmerge.load(one)
    for k in base:
        np.testing.assert_array_equal(got[k], want[k])
    assert libmerge.files.describe(one)["metadata"]["who"] == "test"
    gguf = str(tmp_path / "m.gguf")
    libmerge.merge_to(gguf, "ties", base, models, density=0.5)
    for k, v in libmerge.load(gguf).items():
        np.testing.assert_array_equal(v, want[k])
    shards = tmp_path / "sharded"
    files = libmerge.merge_to(str(shards), "ties", base, models, density=0.5, shard_bytes=64)
    assert len(files) > 1 and all(os.path.isfile(f) for f in files)
    assert "weight_map" in json.loads((shards / "model.safetensors.index.json").read_text())
    for k, v in libmerge.load(str(shards)).items():
        np.testing.assert_array_equal(v, want[k])
    # A non-empty directory is kept unless overwrite=True; nothing partial.
    with pytest.raises(libmerge.Error) as e:
        libmerge.merge_to(str(shards), "ties", base, models)
    assert e.value.status_name == "LM_ERR_EXISTS"
    libmerge.merge_to(str(shards), "task_arithmetic", base, models, overwrite=True)
    assert sorted(os.listdir(shards)) == ["model.safetensors"]
    close(libmerge.load(str(shards)), ta_ref(base, models))
    bad = tmp_path / "bad"
    with pytest.raises(libmerge.Error):
        libmerge.merge_to(str(bad), "no_such", base, models)
    assert not bad.exists()


def test_progress_out_dtype_and_ties():
    base = model()
    base["tied.weight"] = base["fc.weight"].copy()
    models = [dict(m, **{"tied.weight": RNG.standard_normal((6, 4)).astype(np.float32)})
              for m in (model(), model())]
    calls = []
    got = libmerge.merge("task_arithmetic", base, models, out_dtype="f16",
                         tie={"tied.weight": "fc.weight"},
                         progress=lambda *a: calls.append(a))
    assert all(v.dtype == np.float16 for v in got.values())
    np.testing.assert_array_equal(got["tied.weight"], got["fc.weight"])
    assert calls[-1][0] == calls[-1][1] == len(base)
    with pytest.raises(libmerge.Error) as e:
        libmerge.merge("task_arithmetic", base, models, progress=lambda *a: True)
    assert e.value.status_name == "LM_ERR_CANCELLED"

    def boom(*a):
        raise KeyError("from progress")
    with pytest.raises(KeyError, match="from progress"):
        libmerge.merge("task_arithmetic", base, models, progress=boom)
    with pytest.raises(libmerge.Error):
        libmerge.merge("task_arithmetic", base, models, out_dtype="int7")


# --- files, lazy tensors ----------------------------------------------------

def test_describe_partial_load_and_metadata(tmp_path):
    m = model()
    m["half"] = np.arange(6, dtype=np.float16)
    path = str(tmp_path / "x.safetensors")
    libmerge.save(path, m, metadata={"k": "v"})
    d = libmerge.files.describe(path)
    assert d["tensors"]["fc.weight"] == {"dtype": "f32", "shape": (6, 4), "gguf_type": None}
    assert d["tensors"]["half"]["dtype"] == "f16"
    assert libmerge.files.metadata_value(path, "k") == "v"
    assert libmerge.files.metadata_value(path, "nope") is None
    part = libmerge.load(path, names=["half"])
    assert list(part) == ["half"]
    np.testing.assert_array_equal(part["half"], m["half"])
    with pytest.raises(libmerge.NotFoundError):
        libmerge.load(path, names=["missing"])
    with pytest.raises(ValueError, match="npz"):
        libmerge.save(str(tmp_path / "y.npz"), m, metadata={"k": "v"})
    renamed = str(tmp_path / "x.bin")
    libmerge.files.save_npz(renamed, m, compress=True)
    np.testing.assert_array_equal(libmerge.load(renamed, format="npz")["fc.bias"], m["fc.bias"])
    with pytest.raises(libmerge.Error):
        libmerge.load(renamed, format="gguf")
    assert set(libmerge.files.open_input(path)) == set(m)
    gg = str(tmp_path / "x.gguf")
    libmerge.save(gg, m, metadata={"general.name": "x"})
    assert libmerge.files.metadata_value(gg, "general.name") == "x"


def test_lazy_tensors_merge_like_arrays(caplog):
    base = model()
    models = [model(), model()]
    reads = []

    def lazy(m):
        def read(name):
            reads.append(name)
            return m[name]
        return {k: libmerge.files.LazyTensor(v.shape, v.dtype, read) for k, v in m.items()}

    got = libmerge.merge("ties", lazy(base), [lazy(m) for m in models], density=0.5)
    want = libmerge.merge("ties", base, models, density=0.5)
    for k in base:
        np.testing.assert_array_equal(got[k], want[k])
    assert set(reads) == set(base)

    # Only one tensor fails, so the error names it whichever thread reads first.
    def broken(name):
        if name == "fc.weight":
            raise IOError("disk gone")
        return models[0][name]
    bad = {k: libmerge.files.LazyTensor(v.shape, np.float32, broken) for k, v in base.items()}
    with pytest.raises(libmerge.Error, match="fc.weight") as e:
        libmerge.merge("ties", base, [bad])
    assert e.value.status_name == "LM_ERR_CALLBACK"
    assert "disk gone" in caplog.text  # the Python reason is logged


# --- task vectors and adapters ------------------------------------------

def adapter():
    a = RNG.standard_normal((2, 4)).astype(np.float32)
    b = RNG.standard_normal((6, 2)).astype(np.float32)
    return a, b


def test_lora_adapters_task_vectors_and_scaling(tmp_path):
    base = model()
    a, b = adapter()
    lora = libmerge.LoraAdapter({"fc.weight": (a, b, 0.5)})
    dense = 0.5 * b.astype(np.float64) @ a
    tv = libmerge.TaskVector.from_lora(lora, base)
    assert list(tv.deltas) == ["fc.weight"]
    np.testing.assert_allclose(tv.deltas["fc.weight"], dense, rtol=1e-6, atol=1e-6)
    scaled = 3.0 * tv
    np.testing.assert_array_equal(
        scaled.deltas["fc.weight"],
        (tv.deltas["fc.weight"].astype(np.float64) * 3.0).astype(np.float32))  # f64, rounded once
    # Kept factored in a plan (lm_plan_add_lora): same numbers as dense.
    got = libmerge.merge("task_arithmetic", base, [lora])
    np.testing.assert_allclose(got["fc.weight"], base["fc.weight"] + dense, atol=1e-5)
    np.testing.assert_array_equal(got["fc.bias"], base["fc.bias"])
    # A transposed target ([in, out] storage) gets the transposed update.
    tbase = dict(base, **{"fc.weight": np.ascontiguousarray(base["fc.weight"].T)})
    tl = libmerge.LoraAdapter({"fc.weight": (a, b, 0.5)}, transposed=["fc.weight"])
    got = libmerge.merge("task_arithmetic", tbase, [tl])
    np.testing.assert_allclose(got["fc.weight"], tbase["fc.weight"] + dense.T, atol=1e-5)
    with pytest.raises(ValueError):
        libmerge.LoraAdapter({"fc.weight": (a, b, 0.5)}, transposed=["other"])


def test_peft_adapter_opened_as_input(tmp_path):
    a, b = adapter()
    d = tmp_path / "peft"
    d.mkdir()
    libmerge.save(str(d / "adapter_model.safetensors"),
                  {"base_model.model.fc.lora_A.weight": a, "base_model.model.fc.lora_B.weight": b})
    (d / "adapter_config.json").write_text(json.dumps(
        {"r": 2, "lora_alpha": 4, "target_modules": ["fc"], "peft_type": "LORA"}))
    for lora in (libmerge.files.open_input(str(d)), libmerge.LoraAdapter.load(str(d)),
                 libmerge.LoraAdapter.load(str(d), format="peft")):
        assert isinstance(lora, libmerge.LoraAdapter)
        la, lb, scale = lora.factors["fc.weight"]
        np.testing.assert_array_equal(la, a)
        np.testing.assert_array_equal(lb, b)
        assert scale == 2.0  # alpha / r
    with pytest.raises(libmerge.Error):
        libmerge.LoraAdapter.load(str(d), format="gguf")


# --- statistics ---------------------------------------------------------------

def test_stats_from_gram_and_from_half_precision_rows():
    x = RNG.standard_normal((20, 4))
    s = libmerge.Stats()
    s.add_gram(0, "fc.weight", x.T @ x, 20)
    g, n = s.get(0, "fc.weight")
    np.testing.assert_array_equal(g, x.T @ x)
    assert n == 20
    with pytest.raises(libmerge.ShapeError):
        s.add_gram(0, "fc.weight", np.eye(3), 1)
    h = x.astype(np.float16)
    s.observe(1, "fc.weight", h)
    g, n = s.get(1, "fc.weight")
    hf = h.astype(np.float64)
    np.testing.assert_allclose(g, hf.T @ hf, rtol=1e-6)  # f16 rows are exact in f64
    assert n == 20


def test_merge_to_a_python_sink():
    """A callable sink (lm_sink_vtable from ctypes callbacks) gets every
    merged tensor once, bit-identical to merge(); bf16 keeps its kind; an
    exception in the sink stops the merge and is re-raised."""
    base = model()
    base["half"] = libmerge.to_bfloat16(RNG.standard_normal(5))
    models = [model(), model()]
    for m in models:
        m["half"] = libmerge.to_bfloat16(RNG.standard_normal(5))
    want = libmerge.merge("ties", base, models, density=0.5)
    got = {}

    def sink(name, array):
        assert name not in got
        got[name] = array

    assert libmerge.merge_to(sink, "ties", base, models, density=0.5, threads=2) == []
    assert set(got) == set(want)
    for k in want:
        assert type(got[k]) is type(want[k])
        np.testing.assert_array_equal(got[k], want[k])

    def full_disk(name, array):
        raise OSError("no space left")
    with pytest.raises(OSError, match="no space left"):
        libmerge.merge_to(full_disk, "ties", base, models)
