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
