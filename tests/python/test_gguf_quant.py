"""Quantized GGUF tensors (ggml block formats) read by libmerge, checked
against the independent numpy implementation in ggml_quants.py.

Tolerance: none. ggml dequantizes with f32 arithmetic, one rounding per
operation (d * q, then - m or + m); the numpy reference performs the same
operations in f32 in the same order, and libmerge must give the same bits
(compared as uint32 patterns)."""
import os
import subprocess

import numpy as np
import pytest

import ggml_quants as gq
import gguf_format as gg

libmerge = pytest.importorskip("libmerge")
from libmerge import files  # noqa: E402

LMERGE = os.environ.get("LIBMERGE_LMERGE")
KVS = [("general.architecture", gg.STRING, "llama")]
# Byte offsets of each format's f16 scale fields (f32 for Q8_K), replaced by
# finite values in the random-bytes test so every value is finite.
SCALE_FIELDS = {2: [0], 3: [0, 2], 6: [0], 7: [0, 2], 8: [0], 9: [0, 2],
                10: [80, 82], 11: [108], 12: [0, 2], 13: [0, 2], 14: [208]}


def write_quant(path, tensors, extra=None):
    """tensors: name -> (float array, ggml type) quantized by the numpy
    encoder; extra: unquantized name -> array."""
    raw, types, shapes = {}, {}, {}
    for name, (x, qtype) in tensors.items():
        raw[name] = gq.quantize(x, qtype)
        types[name] = qtype
        shapes[name] = x.shape
    raw.update(extra or {})
    gg.write(path, raw, KVS, raw_types=types, shapes=shapes)
    return raw


def same_bits(got, want):
    assert got.dtype == np.float32 and got.shape == want.shape
    diff = got.view(np.uint32) != want.view(np.uint32)
    assert not diff.any(), (np.argwhere(diff)[:5], got[diff][:5], want[diff][:5])


@pytest.mark.parametrize("qtype", sorted(gq.TYPES), ids=lambda t: gq.TYPES[t][0])
def test_encoded_data_reads_as_numpy_dequantizes(tmp_path, qtype):
    rng = np.random.default_rng(qtype)
    block = gq.TYPES[qtype][1]
    x = (rng.standard_normal((3, 2 * max(block, 64))) * 0.05).astype(np.float32)
    x[1] += 0.02  # a row with an offset (exercises the minimums)
    norm = rng.standard_normal(7).astype(np.float32)
    raw = write_quant(tmp_path / "m.gguf", {"blk.0.w": (x, qtype)}, {"norm": norm})
    got = files.load(tmp_path / "m.gguf")
    want = gq.dequantize(raw["blk.0.w"], qtype, x.shape)
    same_bits(got["blk.0.w"], want)
    # The encoder is consistent with the decoder: within one step.
    assert np.abs(want - x).max() <= gq.step(x, qtype)
    np.testing.assert_array_equal(got["norm"], norm)


@pytest.mark.parametrize("qtype", sorted(gq.TYPES), ids=lambda t: gq.TYPES[t][0])
def test_random_blocks_read_as_numpy_dequantizes(tmp_path, qtype):
    # Every bit pattern of codes, scales and minimums, with finite f16 (f32
    # for Q8_K) super-block scales: 3-D, rows of 2 blocks.
    rng = np.random.default_rng(100 + qtype)
    _, block, size = gq.TYPES[qtype]
    shape = (2, 3, 2 * block)
    n_blocks = 2 * 3 * 2
    b = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    for off in SCALE_FIELDS.get(qtype, []):
        b[:, off:off + 2] = (rng.standard_normal((n_blocks, 1)) * 0.01).astype("<f2").view(np.uint8)
    if qtype == 15:
        b[:, 0:4] = (rng.standard_normal((n_blocks, 1)) * 0.01).astype("<f4").view(np.uint8)
    gg.write(tmp_path / "r.gguf", {"t": b.reshape(-1)}, KVS, raw_types={"t": qtype},
             shapes={"t": shape})
    same_bits(files.load(tmp_path / "r.gguf")["t"], gq.dequantize(b, qtype, shape))


def lmerge(*args):
    return subprocess.run([LMERGE, *map(str, args)], capture_output=True, text=True)


def expect_read_error(tmp_path, path, *fragments):
    with pytest.raises(libmerge.Error) as e:
        files.load(path)
    for f in fragments:
        assert f in str(e.value), str(e.value)


def test_row_length_not_a_multiple_of_the_block_is_refused(tmp_path):
    p = tmp_path / "bad.gguf"
    # 2 rows of 48 values: 3 Q8_0 blocks of bytes, but 48 % 32 != 0.
    gg.write(p, {"blk.3.w": np.zeros(3 * 34, np.uint8)}, KVS, raw_types={"blk.3.w": 8},
             shapes={"blk.3.w": (2, 48)})
    expect_read_error(tmp_path, p, "bad.gguf", "tensor 'blk.3.w' is Q8_0",
                      "rows hold 48 values", "block of 32")
    p = tmp_path / "bad_k.gguf"
    gg.write(p, {"w": np.zeros(144, np.uint8)}, KVS, raw_types={"w": 12},
             shapes={"w": (128,)})
    expect_read_error(tmp_path, p, "tensor 'w' is Q4_K", "block of 256")


def test_truncated_blocks_are_refused(tmp_path):
    p = tmp_path / "cut.gguf"
    x = np.ones((2, 256), np.float32)
    write_quant(p, {"blk.0.ffn_up.weight": (x, 14)})  # Q6_K: 2 * 210 bytes
    data = p.read_bytes()
    p.write_bytes(data[:-100])  # the second block loses its last 100 bytes
    expect_read_error(tmp_path, p, "cut.gguf", "'blk.0.ffn_up.weight'",
                      "runs past the end of the data")


def test_unknown_type_is_refused_naming_tensor_and_type(tmp_path):
    p = tmp_path / "u.gguf"
    gg.write(p, {"blk.1.w": np.zeros(64, np.uint8)}, KVS, raw_types={"blk.1.w": 77})
    expect_read_error(tmp_path, p, "u.gguf", "tensor 'blk.1.w' has unknown ggml type 77")
    p = tmp_path / "iq.gguf"
    gg.write(p, {"blk.1.w": np.zeros(66, np.uint8)}, KVS, raw_types={"blk.1.w": 16},
             shapes={"blk.1.w": (256,)})
    expect_read_error(tmp_path, p, "tensor 'blk.1.w' has ggml type IQ2_XXS")


# ------------------------------------------------------------ writing back

def merge_config(tmp_path, base, models, extra=""):
    p = tmp_path / "merge.yaml"
    lines = ["merge_method: task_arithmetic", "base_model: %s" % base, "models:"]
    lines += ["  - model: %s" % m for m in models]
    p.write_text("\n".join(lines) + "\nparameters:\n  lambda: %s\n%s" %
                 ("1.0" if models == [base] else "0.5", extra))
    return p


def run_merge(tmp_path, cfg, out, *args):
    r = lmerge("run", cfg, "-o", tmp_path / out, "--quiet", *args)
    assert r.returncode == 0, r.stderr
    types = {}
    tensors, _ = gg.read(tmp_path / out / "model.gguf", raw=types)
    return tensors, {k: v[0] for k, v in types.items()}


@pytest.mark.skipif(not LMERGE, reason="LIBMERGE_LMERGE is not set")
def test_q8_0_output_round_trips_against_numpy_quantizer(tmp_path):
    # The merge output equals the base (its own task vector is zero), so
    # the Q8_0 file must hold numpy's ggml-exact quantization of the base
    # bit for bit; tensors ggml would not quantize keep their dtype.
    rng = np.random.default_rng(7)
    base = {"blk.0.attn_q.weight": rng.standard_normal((8, 64)).astype(np.float32),
            "blk.0.ffn_up.weight": (rng.standard_normal((3, 96)) * 1e-3).astype(np.float32),
            "blk.0.odd.weight": rng.standard_normal((4, 48)).astype(np.float32),
            "blk.0.attn_norm.weight": rng.standard_normal(64).astype(np.float32)}
    base["blk.0.attn_q.weight"][0, :32] = 0  # an all-zero block: d = 0
    base["blk.0.attn_q.weight"][1, 5] = 0.5 * 127 / 64  # a rounding tie
    gg.write(tmp_path / "base.gguf", base, KVS)
    cfg = merge_config(tmp_path, tmp_path / "base.gguf", [tmp_path / "base.gguf"],
                       "gguf_type: q8_0\n")
    got, types = run_merge(tmp_path, cfg, "out")
    assert types == {"blk.0.attn_q.weight": 8, "blk.0.ffn_up.weight": 8,
                     "blk.0.odd.weight": 0, "blk.0.attn_norm.weight": 0}
    for k in ("blk.0.attn_q.weight", "blk.0.ffn_up.weight"):
        np.testing.assert_array_equal(got[k], gq.quantize(base[k], 8))
    np.testing.assert_array_equal(got["blk.0.odd.weight"], base["blk.0.odd.weight"])
    np.testing.assert_array_equal(got["blk.0.attn_norm.weight"], base["blk.0.attn_norm.weight"])
    # The same through the CLI option, and the file reads back as numpy
    # dequantizes it.
    r = lmerge("run", merge_config(tmp_path, tmp_path / "base.gguf", [tmp_path / "base.gguf"]),
               "-o", tmp_path / "out2", "--quiet", "--gguf-type", "q8_0")
    assert r.returncode == 0, r.stderr
    back = files.load(tmp_path / "out2" / "model.gguf")
    same_bits(back["blk.0.attn_q.weight"],
              gq.dequantize(gq.quantize(base["blk.0.attn_q.weight"], 8), 8, (8, 64)))


@pytest.mark.skipif(not LMERGE, reason="LIBMERGE_LMERGE is not set")
def test_two_q4_k_finetunes_onto_a_q8_0_base(tmp_path):
    rng = np.random.default_rng(8)
    names = ["blk.0.attn_q.weight", "blk.0.ffn_down.weight"]
    shape = (4, 256)
    base_x = {k: (rng.standard_normal(shape) * 0.05).astype(np.float32) for k in names}
    norm = rng.standard_normal(256).astype(np.float32)
    base_raw = write_quant(tmp_path / "base.gguf", {k: (v, 8) for k, v in base_x.items()},
                           {"output_norm.weight": norm})
    deq = {k: gq.dequantize(base_raw[k], 8, shape).astype(np.float64) for k in names}
    deltas = {k: np.zeros(shape) for k in names}
    for i in range(2):
        ft = {k: (v + 0.01 * rng.standard_normal(shape)).astype(np.float32)
              for k, v in base_x.items()}
        raw = write_quant(tmp_path / ("ft%d.gguf" % i), {k: (v, 12) for k, v in ft.items()},
                          {"output_norm.weight": norm})
        for k in names:
            deltas[k] += gq.dequantize(raw[k], 12, shape) - deq[k]
    want = {k: deq[k] + 0.5 * deltas[k] for k in names}
    models = [tmp_path / "ft0.gguf", tmp_path / "ft1.gguf"]

    # Default: tensors dequantized from the quantized base are written F16
    # (within f16 rounding of the f32 merge: 2^-11 relative, plus f32
    # rounding of the sums), the F32 norm stays F32.
    got, types = run_merge(tmp_path, merge_config(tmp_path, tmp_path / "base.gguf", models),
                           "auto")
    assert types == {names[0]: 1, names[1]: 1, "output_norm.weight": 0}
    for k in names:
        assert got[k].dtype == np.float16
        err = np.abs(got[k].astype(np.float64) - want[k])
        assert (err <= 2.0 ** -11 * np.abs(want[k]) + 1e-6).all(), err.max()
    np.testing.assert_array_equal(got["output_norm.weight"], norm)

    # An explicit dtype is every tensor's dtype (f32: within f32 rounding).
    f32, types = run_merge(tmp_path, merge_config(tmp_path, tmp_path / "base.gguf", models),
                           "f32", "--dtype", "f32")
    assert set(types.values()) == {0}
    for k in names:
        assert np.abs(f32[k] - want[k]).max() <= 1e-6 * np.abs(want[k]).max()

    # gguf_type: q8_0 quantizes the f32 merge result as numpy does, bit
    # for bit; the 1-D norm stays F32.
    q8, types = run_merge(tmp_path, merge_config(tmp_path, tmp_path / "base.gguf", models,
                                                 "gguf_type: q8_0\n"), "q8")
    assert types == {names[0]: 8, names[1]: 8, "output_norm.weight": 0}
    for k in names:
        np.testing.assert_array_equal(q8[k], gq.quantize(f32[k], 8))


@pytest.mark.skipif(not LMERGE, reason="LIBMERGE_LMERGE is not set")
def test_q8_0_output_errors(tmp_path):
    x = {"blk.0.w": np.ones((2, 32), np.float32)}
    gg.write(tmp_path / "base.gguf", x, KVS)
    # A value whose block scale max|x|/127 overflows f16: the merge fails
    # naming the tensor and no output is left.
    big = {"blk.0.w": np.full((2, 32), 1e7, np.float32)}
    gg.write(tmp_path / "big.gguf", big, KVS)
    r = lmerge("run", merge_config(tmp_path, tmp_path / "big.gguf", [tmp_path / "big.gguf"],
                                   "gguf_type: q8_0\n"), "-o", tmp_path / "o1", "--quiet")
    assert r.returncode != 0 and "'blk.0.w'" in r.stderr and "Q8_0" in r.stderr, r.stderr
    assert not (tmp_path / "o1").exists() or not os.listdir(tmp_path / "o1")
    # An unknown gguf_type, and q8_0 for a base that is not GGUF.
    r = lmerge("run", merge_config(tmp_path, tmp_path / "base.gguf", [tmp_path / "base.gguf"],
                                   "gguf_type: q4_k\n"), "-o", tmp_path / "o2", "--quiet")
    assert r.returncode != 0 and "gguf_type 'q4_k' is not one of auto, q8_0" in r.stderr
    files.save(tmp_path / "base.safetensors", x)
    r = lmerge("run", merge_config(tmp_path, tmp_path / "base.safetensors",
                                   [tmp_path / "base.safetensors"], "gguf_type: q8_0\n"),
               "-o", tmp_path / "o3", "--quiet")
    assert r.returncode != 0 and "needs a GGUF base_model" in r.stderr, r.stderr


def test_tensor_type_names_the_stored_type(tmp_path):
    import ctypes
    lib = ctypes.CDLL(os.environ["LIBMERGE_LIBRARY"])
    lib.lm_gguf_tensor_type.restype = ctypes.c_char_p
    lib.lm_gguf_tensor_type.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.lm_context_create.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.lm_model_open.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    lib.lm_model_destroy.argtypes = [ctypes.c_void_p]
    lib.lm_context_destroy.argtypes = [ctypes.c_void_p]
    write_quant(tmp_path / "m.gguf", {"q": (np.ones((1, 256), np.float32), 13)},
                {"h": np.ones(3, np.float16), "f": np.ones(2, np.float32)})
    ctx, model = ctypes.c_void_p(), ctypes.c_void_p()
    assert lib.lm_context_create(None, ctypes.byref(ctx)) == 0
    try:
        assert lib.lm_model_open(ctx, str(tmp_path / "m.gguf").encode(), ctypes.byref(model)) == 0
        assert lib.lm_gguf_tensor_type(model, b"q") == b"Q5_K"
        assert lib.lm_gguf_tensor_type(model, b"h") == b"F16"
        assert lib.lm_gguf_tensor_type(model, b"f") == b"F32"
        assert lib.lm_gguf_tensor_type(model, b"missing") is None
        lib.lm_model_destroy(model)
        files.save(tmp_path / "s.safetensors", {"f": np.ones(2, np.float32)})
        model = ctypes.c_void_p()
        assert lib.lm_model_open(ctx, str(tmp_path / "s.safetensors").encode(),
                                 ctypes.byref(model)) == 0
        assert lib.lm_gguf_tensor_type(model, b"f") is None
    finally:
        lib.lm_model_destroy(model)
        lib.lm_context_destroy(ctx)
