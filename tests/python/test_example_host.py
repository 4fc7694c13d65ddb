"""examples/load_time_merge: a host that merges PEFT adapters at load time
from several loader threads must print exactly (hex floats) what the
offline merge prints, for 1 and 8 threads, and match a numpy forward pass
of the merged MLP (f32 weights, f64 arithmetic: 1e-6 relative)."""
import json
import os
import subprocess

import numpy as np
import pytest

import st_format

EXE = os.environ.get("LIBMERGE_EXAMPLE_LOAD_TIME_MERGE")
pytestmark = pytest.mark.skipif(not EXE, reason="LIBMERGE_EXAMPLE_LOAD_TIME_MERGE is not set")
D, H, O = 12, 16, 5


def write_adapter(path, rng, alpha):
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": alpha, "target_modules": ["fc1", "fc2"]}))
    factors = {}
    tensors = {}
    for mod, (o, i) in {"fc1": (H, D), "fc2": (O, H)}.items():
        a = rng.standard_normal((2, i)).astype(np.float32)
        b = rng.standard_normal((o, 2)).astype(np.float32)
        tensors["base_model.model.%s.lora_A.weight" % mod] = a
        tensors["base_model.model.%s.lora_B.weight" % mod] = b
        factors[mod] = (a, b, alpha / 2)
    st_format.write(path / "adapter_model.safetensors", tensors)
    return factors


def test_load_time_equals_offline(tmp_path):
    rng = np.random.default_rng(5)
    model = {"fc1.weight": rng.standard_normal((H, D)).astype(np.float32),
             "fc1.bias": rng.standard_normal(H).astype(np.float32),
             "fc2.weight": rng.standard_normal((O, H)).astype(np.float32),
             "fc2.bias": rng.standard_normal(O).astype(np.float32)}
    st_format.write(tmp_path / "mlp.safetensors", model)
    ads = [write_adapter(tmp_path / ("a%d" % k), rng, 4.0 * (k + 1)) for k in range(3)]
    args = [EXE, str(tmp_path / "mlp.safetensors")] + [str(tmp_path / ("a%d" % k)) for k in range(3)]
    args += ["--lambda", "0.5"]
    runs = {}
    for mode in (["--offline"], ["--threads", "1"], ["--threads", "8"]):
        r = subprocess.run(args + mode, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        runs[" ".join(mode)] = r.stdout
    assert runs["--threads 1"] == runs["--offline"]
    assert runs["--threads 8"] == runs["--offline"]
    got = np.array([float.fromhex(line) for line in runs["--offline"].split()])
    merged = {k: v.astype(np.float64) for k, v in model.items()}
    for f in ads:
        for mod, (a, b, s) in f.items():
            merged[mod + ".weight"] += 0.5 * s * (b.astype(np.float64) @ a)
    x = np.sin(np.arange(D) + 1.0)
    want = merged["fc2.weight"] @ np.maximum(merged["fc1.weight"] @ x + merged["fc1.bias"], 0) \
        + merged["fc2.bias"]
    assert got.shape == (O,)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_bad_adapter_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(1)
    st_format.write(tmp_path / "mlp.safetensors", {
        "fc1.weight": np.ones((H, D), np.float32), "fc1.bias": np.ones(H, np.float32),
        "fc2.weight": np.ones((O, H), np.float32), "fc2.bias": np.ones(O, np.float32)})
    write_adapter(tmp_path / "a", rng, 4.0)
    (tmp_path / "a" / "adapter_config.json").write_text("{not json")
    r = subprocess.run([EXE, str(tmp_path / "mlp.safetensors"), str(tmp_path / "a")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "adapter_config.json" in r.stderr
