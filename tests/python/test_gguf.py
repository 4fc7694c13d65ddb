"""GGUF through `lmerge`: files from the independent writer in gguf_format.py,
merged by the CLI, read back by the independent reader and compared with
numpy (f32 rounding tolerance: max |diff| <= 1e-6 * max |ref| + 1e-7);
llama.cpp LoRA adapter files; every validation rule with a hand-broken
file (clear message naming the file/tensor/key, no output written)."""
import os
import subprocess

import numpy as np
import pytest

import gguf_format as gg

LMERGE = os.environ.get("LIBMERGE_LMERGE")
pytestmark = pytest.mark.skipif(not LMERGE, reason="LIBMERGE_LMERGE is not set")
RNG = np.random.default_rng(11)
SHAPES = {"token_embd.weight": (40, 16), "blk.0.attn_q.weight": (16, 16),
          "blk.0.ffn_up.weight": (24, 16), "blk.0.attn_norm.weight": (16,)}
KVS = [("general.architecture", gg.STRING, "llama"),
       ("general.name", gg.STRING, "toy"),
       ("llama.block_count", gg.U32, 1),
       ("llama.rope.freq_base", gg.F32, 10000.0),
       ("tokenizer.ggml.tokens", gg.ARRAY, (gg.STRING, ["<s>", "</s>", "hello"])),
       ("tokenizer.ggml.scores", gg.ARRAY, (gg.F32, [0.0, -1.0, -2.5])),
       ("general.file_type", gg.U32, 0), ("test.flag", gg.BOOL, True),
       ("test.big", gg.U64, 2 ** 40 + 3), ("test.neg", gg.I64, -5)]


def run(*args):
    return subprocess.run([LMERGE, *map(str, args)], capture_output=True, text=True)


def config(tmp_path, base, models, method="task_arithmetic", extra="  lambda: 0.5\n"):
    p = tmp_path / "merge.yaml"
    lines = ["merge_method: %s" % method, "base_model: %s" % base, "models:"]
    lines += ["  - model: %s" % m for m in models]
    p.write_text("\n".join(lines) + "\nparameters:\n" + extra)
    return p


def close(got, want):
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max() + 1e-7


def test_full_models_merge_and_keep_typed_metadata(tmp_path):
    base = {k: RNG.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    base["blk.0.ffn_up.weight"] = base["blk.0.ffn_up.weight"].astype(np.float16)
    fts = [{k: (v + 0.1 * RNG.standard_normal(v.shape)).astype(v.dtype) for k, v in base.items()}
           for _ in range(2)]
    gg.write(tmp_path / "base.gguf", base, KVS)
    for i, ft in enumerate(fts):
        gg.write(tmp_path / ("ft%d.gguf" % i), ft, KVS, alignment=64)
    cfg = config(tmp_path, tmp_path / "base.gguf", [tmp_path / "ft0.gguf", tmp_path / "ft1.gguf"])
    r = run("run", cfg, "-o", tmp_path / "out", "--quiet")
    assert r.returncode == 0, r.stderr
    tensors, kvs = gg.read(tmp_path / "out" / "model.gguf")
    assert list(tensors) == list(SHAPES)
    for k in SHAPES:
        want = base[k].astype(np.float64) + 0.5 * sum(ft[k].astype(np.float64) - base[k] for ft in fts)
        assert tensors[k].dtype == base[k].dtype
        tol = 1e-3 if base[k].dtype == np.float16 else 1e-6
        assert np.abs(tensors[k] - want).max() <= tol * np.abs(want).max() + 1e-7
    for key, vtype, value in KVS:  # typed, verbatim
        assert kvs[key][0] == vtype
        if vtype == gg.ARRAY:
            assert kvs[key][1][0] == value[0]
            assert np.allclose(kvs[key][1][1], value[1]) if value[0] == gg.F32 \
                else kvs[key][1][1] == value[1]
        else:
            assert kvs[key][1] == pytest.approx(value)
    assert kvs["merge_method"] == (gg.STRING, "task_arithmetic")
    assert kvs["merged_by"][1].startswith("libmerge")


def test_bf16_and_f64_tensors_round_trip(tmp_path):
    vals = RNG.standard_normal((8, 4)).astype(np.float32)
    bits = (vals.view(np.uint32) >> 16).astype(np.uint16)  # truncation is a valid bf16
    f64 = RNG.standard_normal((3, 5))
    gg.write(tmp_path / "b.gguf", {"w": bits, "d": f64}, raw_types={"w": gg.GGML_BF16})
    cfg = config(tmp_path, tmp_path / "b.gguf", [tmp_path / "b.gguf"], extra="  lambda: 1.0\n")
    r = run("run", cfg, "-o", tmp_path / "out", "--quiet")
    assert r.returncode == 0, r.stderr
    tensors, kvs = gg.read(tmp_path / "out" / "model.gguf")
    assert tensors["w"].dtype == np.uint16 and (tensors["w"] == bits).all()
    # F64 stays F64 on disk; the merge itself computes in f32.
    assert tensors["d"].dtype == np.float64
    close(tensors["d"], f64)
    r = run("info", tmp_path / "b.gguf")
    assert r.returncode == 0 and "BF16" in r.stdout.upper()


def write_lora(path, factors, alpha=8.0, kvs=None):
    tensors = {}
    for target, (a, b) in factors.items():
        tensors[target + ".lora_a"] = a
        tensors[target + ".lora_b"] = b
    kvs = kvs if kvs is not None else [
        ("general.type", gg.STRING, "adapter"), ("general.architecture", gg.STRING, "llama"),
        ("adapter.type", gg.STRING, "lora"), ("adapter.lora.alpha", gg.F32, alpha)]
    gg.write(path, tensors, kvs)


def test_llama_cpp_lora_adapters(tmp_path):
    base = {k: RNG.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    gg.write(tmp_path / "base.gguf", base, KVS)
    ads = []
    for i in range(2):
        f = {k: (RNG.standard_normal((4, SHAPES[k][1])).astype(np.float32),
                 RNG.standard_normal((SHAPES[k][0], 4)).astype(np.float32))
             for k in ("blk.0.attn_q.weight", "blk.0.ffn_up.weight")}
        # A norm adapter is skipped, as llama.cpp does.
        f["blk.0.attn_norm.weight"] = (np.ones((1, 16), np.float32), np.ones((1, 1), np.float32))
        write_lora(tmp_path / ("a%d.gguf" % i), f, alpha=8.0 * (i + 1))
        ads.append(f)
    cfg = config(tmp_path, tmp_path / "base.gguf", [tmp_path / "a0.gguf", tmp_path / "a1.gguf"],
                 extra="  lambda: 1.0\n")
    r = run("run", cfg, "-o", tmp_path / "out", "--quiet")
    assert r.returncode == 0, r.stderr
    tensors, _ = gg.read(tmp_path / "out" / "model.gguf")
    for k in SHAPES:
        want = base[k].astype(np.float64)
        for i, f in enumerate(ads):
            if k in f and not k.endswith("_norm.weight"):
                a, b = f[k]
                want = want + (8.0 * (i + 1) / 4) * (b.astype(np.float64) @ a)
        close(tensors[k], want)


def test_gguf_directories(tmp_path):
    """A directory holding exactly one .gguf is that file (lib/io/formats.c):
    as the base (the output is GGUF with its key/values) and as an adapter;
    two .gguf files in one directory are an error naming it."""
    base = {k: RNG.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    (tmp_path / "base").mkdir()
    gg.write(tmp_path / "base" / "toy-f32.gguf", base, KVS)
    (tmp_path / "base" / "README.md").write_text("a model card")
    (tmp_path / "ad").mkdir()
    a = RNG.standard_normal((4, 16)).astype(np.float32)
    b = RNG.standard_normal((16, 4)).astype(np.float32)
    write_lora(tmp_path / "ad" / "lora.gguf", {"blk.0.attn_q.weight": (a, b)}, alpha=4.0)
    cfg = config(tmp_path, tmp_path / "base", [tmp_path / "ad"], extra="  lambda: 1.0\n")
    r = run("run", cfg, "-o", tmp_path / "out", "--quiet")
    assert r.returncode == 0, r.stderr
    tensors, kvs = gg.read(tmp_path / "out" / "model.gguf")
    assert kvs["general.name"] == (gg.STRING, "toy")
    close(tensors["blk.0.attn_q.weight"],
          base["blk.0.attn_q.weight"] + (4.0 / 4) * (b.astype(np.float64) @ a))
    close(tensors["token_embd.weight"], base["token_embd.weight"])
    gg.write(tmp_path / "base" / "toy-f16.gguf", base, KVS)
    r = run("run", cfg, "-o", tmp_path / "out2", "--quiet")
    assert r.returncode != 0
    assert "'%s' holds 2 .gguf files" % (tmp_path / "base") in r.stderr
    assert not (tmp_path / "out2").exists()


def good_base(tmp_path):
    return {"w": np.ones((4, 8), np.float32)}


BROKEN = {
    "bad magic": (lambda p: p.write_bytes(b"GGUX" + p.read_bytes()[4:]), "bad magic"),
    "version 1": (lambda p: p.write_bytes(p.read_bytes()[:4] + b"\x01\0\0\0" + p.read_bytes()[8:]),
                  "version 1"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:40]), "truncated"),
    "data cut": (lambda p: p.write_bytes(p.read_bytes()[:-16]), "runs past the end"),
    "huge count": (lambda p: p.write_bytes(p.read_bytes()[:8] + b"\xff" * 8 + p.read_bytes()[16:]),
                   "count larger than the file"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_bytes(tmp_path, case):
    p = tmp_path / "base.gguf"
    gg.write(p, good_base(tmp_path), KVS[:2])
    damage, fragment = BROKEN[case]
    damage(p)
    expect_failure(tmp_path, p, fragment)


def expect_failure(tmp_path, base_path, fragment, models=None):
    cfg = config(tmp_path, base_path, models or [base_path])
    r = run("run", cfg, "-o", tmp_path / "out", "--quiet")
    assert r.returncode != 0
    assert fragment in r.stderr, r.stderr
    assert "base.gguf" in r.stderr or any(str(m) in r.stderr for m in (models or []))
    assert not (tmp_path / "out" / "model.gguf").exists()
    assert not any(n.endswith(".gguf") for n in os.listdir(tmp_path / "out")) \
        if (tmp_path / "out").exists() else True


def test_unread_quantized_type_is_refused_by_type_name(tmp_path):
    # IQ2_XXS (type 16): 66 bytes per 256 values, a format libmerge does
    # not decode (test_gguf_quant.py covers the ones it does).
    p = tmp_path / "base.gguf"
    gg.write(p, {"w": np.zeros(66, np.uint8)}, KVS[:1], raw_types={"w": 16},
             shapes={"w": (256,)})
    expect_failure(tmp_path, p, "tensor 'w' has ggml type IQ2_XXS")


def test_layout_rules(tmp_path):
    p = tmp_path / "base.gguf"
    t = {"a": np.ones((4, 8), np.float32), "b": np.ones((4, 8), np.float32)}
    gg.write(p, t, KVS[:1], offsets={"a": 0, "b": 32})  # a is 128 bytes
    expect_failure(tmp_path, p, "overlap")
    gg.write(p, t, KVS[:1], offsets={"a": 0, "b": 136})
    expect_failure(tmp_path, p, "not a multiple of the alignment")
    gg.write(p, t, KVS[:1] + [("general.architecture", gg.STRING, "again")])
    expect_failure(tmp_path, p, "key 'general.architecture' appears twice")
    gg.write(p, t, [("general.alignment", gg.U32, 12)])
    expect_failure(tmp_path, p, "general.alignment")
    gg.write(p, {"x": np.ones((1, 1, 1, 1, 2), np.float32)}, [])
    expect_failure(tmp_path, p, "5 dimensions")


def test_adapter_rules(tmp_path):
    base = {k: RNG.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    gg.write(tmp_path / "base.gguf", base, KVS)
    a = np.ones((4, 16), np.float32)
    b = np.ones((16, 4), np.float32)
    p = tmp_path / "ad.gguf"
    gg.write(p, {"blk.0.attn_q.weight.lora_a": a},
             [("general.type", gg.STRING, "adapter"), ("adapter.type", gg.STRING, "lora")])
    expect_failure(tmp_path, tmp_path / "base.gguf", "no matching 'blk.0.attn_q.weight.lora_b'", [p])
    write_lora(p, {"blk.0.attn_q.weight": (a, np.ones((16, 3), np.float32))})
    expect_failure(tmp_path, tmp_path / "base.gguf", "not a LoRA pair", [p])
    write_lora(p, {"blk.0.attn_q.weight": (a, b)},
               kvs=[("general.type", gg.STRING, "adapter"), ("adapter.type", gg.STRING, "ia3")])
    expect_failure(tmp_path, tmp_path / "base.gguf", "not a LoRA adapter", [p])
