"""PEFT LoRA adapters merged by `lmerge run`, against numpy: the task
vector of module m is scale * B @ A with scale = alpha / r (alpha / sqrt(r)
with use_rslora), r and alpha taken from rank_pattern / alpha_pattern when a
key matches the end of the module name."""
import json
import math
import os
import subprocess

import numpy as np
import pytest

import st_format

LMERGE = os.environ.get("LIBMERGE_LMERGE")
pytestmark = pytest.mark.skipif(not LMERGE, reason="LIBMERGE_LMERGE is not set")
RNG = np.random.default_rng(11)
MODULES = {"model.layers.0.self_attn.q_proj": (24, 16),
           "model.layers.0.self_attn.v_proj": (8, 16),
           "model.layers.0.mlp.down_proj": (16, 32)}


def write_base(path):
    base = {m + ".weight": RNG.standard_normal(s).astype(np.float32)
            for m, s in MODULES.items()}
    base["model.norm.weight"] = np.ones(16, np.float32)
    path.mkdir()
    st_format.write(path / "model.safetensors", base)
    return base


def write_adapter(path, config, ranks, drop=()):
    """PEFT layout: base_model.model.<module>.lora_A/B.weight."""
    path.mkdir()
    tensors, factors = {}, {}
    for m, (out, inp) in MODULES.items():
        r = ranks[m]
        a = RNG.standard_normal((r, inp)).astype(np.float32) * 0.1
        b = RNG.standard_normal((out, r)).astype(np.float32) * 0.1
        factors[m] = (a, b)
        if m + ".A" not in drop:
            tensors["base_model.model.%s.lora_A.weight" % m] = a
        tensors["base_model.model.%s.lora_B.weight" % m] = b
    st_format.write(path / "adapter_model.safetensors", tensors)
    (path / "adapter_config.json").write_text(json.dumps(config))
    return factors


def run_merge(tmp_path, models, lam=1.0):
    cfg = tmp_path / "merge.yaml"
    lines = ["merge_method: task_arithmetic", "base_model: %s" % (tmp_path / "base"),
             "models:"] + ["  - model: %s" % m for m in models] + \
            ["parameters:", "  lambda: %g" % lam]
    cfg.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    r = subprocess.run([LMERGE, "run", str(cfg), "-o", str(out), "-q"],
                       capture_output=True, text=True)
    return r, out


def test_adapters_with_patterns_and_rslora(tmp_path):
    base = write_base(tmp_path / "base")
    ranks1 = {m: 4 for m in MODULES}
    f1 = write_adapter(tmp_path / "lora1", {"peft_type": "LORA", "r": 4,
                                            "lora_alpha": 8,
                                            "target_modules": ["q_proj", "v_proj", "down_proj"]},
                       ranks1)
    ranks2 = {m: 2 for m in MODULES}
    ranks2["model.layers.0.self_attn.v_proj"] = 6   # from rank_pattern
    f2 = write_adapter(tmp_path / "lora2", {"r": 2, "lora_alpha": 4, "use_rslora": True,
                                            "rank_pattern": {"v_proj": 6},
                                            "alpha_pattern": {"self_attn.q_proj": 16}},
                       ranks2)
    r, out = run_merge(tmp_path, [tmp_path / "lora1", tmp_path / "lora2"], lam=0.5)
    assert r.returncode == 0, r.stderr
    got = st_format.read(out / "model.safetensors")[0]

    def scale2(m):
        rank = 6 if "v_proj" in m else 2
        alpha = 16 if "q_proj" in m else 4
        return alpha / math.sqrt(rank)

    for m in MODULES:
        a1, b1 = f1[m]
        a2, b2 = f2[m]
        want = base[m + ".weight"].astype(np.float64) + 0.5 * (
            (8 / 4) * (b1.astype(np.float64) @ a1) + scale2(m) * (b2.astype(np.float64) @ a2))
        np.testing.assert_allclose(got[m + ".weight"], want, rtol=1e-5, atol=1e-5)
    assert np.array_equal(got["model.norm.weight"], base["model.norm.weight"])


@pytest.mark.parametrize("config,drop,fragment", [
    ({"r": 4, "lora_alpha": 8, "use_dora": True}, (), "DoRA"),
    ({"r": 4, "lora_alpha": 8, "peft_type": "IA3"}, (), "peft_type IA3"),
    ({"r": 3, "lora_alpha": 8}, (), "has rank 4 but the config says 3"),
    ({"lora_alpha": 8}, (), "\"r\" must be a positive integer"),
    ({"r": 4, "lora_alpha": 8}, ("model.layers.0.mlp.down_proj.A",), "has no matching lora_A"),
    # Found by the fuzzer: glibc's regcomp blows up on stacked quantifiers.
    ({"r": 4, "lora_alpha": 8, "rank_pattern": {"q" + "+" * 80: 2}}, (), "stacks quantifiers"),
])
def test_bad_adapters(tmp_path, config, drop, fragment):
    write_base(tmp_path / "base")
    write_adapter(tmp_path / "lora", config, {m: 4 for m in MODULES}, drop=drop)
    r, out = run_merge(tmp_path, [tmp_path / "lora"])
    assert r.returncode == 1
    assert fragment in r.stderr, r.stderr
    assert not (out / "model.safetensors").exists()


# GPT-2 stores its attention and MLP weights as Conv1D, [in, out]; PEFT
# adapters for them say fan_in_fan_out: true and their update is
# scale * (B @ A).T (peft's LoraLayer.get_delta_weight transposes it).
GPT2 = {"transformer.h.0.attn.c_attn": (16, 48),   # [in, out]
        "transformer.h.0.mlp.c_proj": (64, 16)}


def test_fan_in_fan_out_conv1d(tmp_path):
    base = {m + ".weight": RNG.standard_normal(s).astype(np.float32) for m, s in GPT2.items()}
    (tmp_path / "base").mkdir()
    st_format.write(tmp_path / "base" / "model.safetensors", base)
    (tmp_path / "lora").mkdir()
    tensors, factors, r = {}, {}, 4
    for m, (inp, out) in GPT2.items():
        a = RNG.standard_normal((r, inp)).astype(np.float32) * 0.1
        b = RNG.standard_normal((out, r)).astype(np.float32) * 0.1
        factors[m] = (a, b)
        tensors["base_model.model.%s.lora_A.weight" % m] = a
        tensors["base_model.model.%s.lora_B.weight" % m] = b
    st_format.write(tmp_path / "lora" / "adapter_model.safetensors", tensors)
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": 8, "fan_in_fan_out": True,
         "target_modules": ["c_attn", "c_proj"]}))
    res, out = run_merge(tmp_path, [tmp_path / "lora"], lam=1.0)
    assert res.returncode == 0, res.stderr
    got = st_format.read(out / "model.safetensors")[0]
    for m, (a, b) in factors.items():
        want = base[m + ".weight"].astype(np.float64) + (8 / r) * (b.astype(np.float64) @ a).T
        np.testing.assert_allclose(got[m + ".weight"], want, rtol=1e-5, atol=1e-5)
    # The same adapter read without the flag does not fit the [in, out]
    # weights: refused by name, not merged un-transposed.
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": 8}))
    import shutil
    shutil.rmtree(out)
    res, _ = run_merge(tmp_path, [tmp_path / "lora"], lam=1.0)
    assert res.returncode != 0 and "c_attn" in res.stderr
