""".npz archives: numpy (an independent zip/npy implementation) writes what
libmerge reads and reads what libmerge writes, bit for bit; GGUF and
safetensors round trips through libmerge.load/save; every validation rule
with a hand-broken archive (clear message naming the file/member, no
output file left by a failed write)."""
import os
import struct
import subprocess
import zipfile

import numpy as np
import pytest

import libmerge

RNG = np.random.default_rng(3)
TENSORS = {"layers.0.weight": RNG.standard_normal((17, 9)).astype(np.float32),
           "layers.0.bias": RNG.standard_normal(9).astype(np.float16),
           "scale": np.array(2.5),  # 0-d float64
           "empty": np.zeros((0, 4), np.float32)}


def same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("saver", [np.savez, np.savez_compressed])
def test_reads_numpy_archives(tmp_path, saver):
    saver(tmp_path / "m.npz", **TENSORS)
    got = libmerge.load(tmp_path / "m.npz")
    assert list(got) == list(TENSORS)
    for k in TENSORS:
        same(got[k], TENSORS[k])


@pytest.mark.parametrize("compress", [False, True])
def test_numpy_reads_what_libmerge_writes(tmp_path, compress):
    bf = libmerge.to_bfloat16(RNG.standard_normal((3, 5)).astype(np.float32))
    libmerge.save(tmp_path / "o.npz", {**TENSORS, "bf": bf}, compress=compress)
    with np.load(tmp_path / "o.npz") as z:
        for k in TENSORS:
            same(z[k], TENSORS[k])
        same(z["bf"], libmerge.from_bfloat16(bf).astype(np.float32))  # widened
    with zipfile.ZipFile(tmp_path / "o.npz") as z:
        assert z.testzip() is None  # every CRC checks
        assert {i.compress_type for i in z.infolist()} == {8 if compress else 0}
    # Deterministic bytes (fixed timestamps).
    libmerge.save(tmp_path / "p.npz", {**TENSORS, "bf": bf}, compress=compress)
    assert (tmp_path / "o.npz").read_bytes() == (tmp_path / "p.npz").read_bytes()


def test_zip64_members(tmp_path):
    # Python's zipfile with force_zip64 writes zip64 extra fields, as numpy
    # does for large arrays.
    with zipfile.ZipFile(tmp_path / "z.npz", "w") as z:
        with z.open("w.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, TENSORS["layers.0.weight"])
    same(libmerge.load(tmp_path / "z.npz")["w"], TENSORS["layers.0.weight"])


def test_round_trips_through_other_formats(tmp_path):
    for ext in (".safetensors", ".gguf"):
        t = {k: v for k, v in TENSORS.items() if v.ndim >= 1 and v.size}
        libmerge.save(tmp_path / ("m" + ext), t)
        got = libmerge.load(tmp_path / ("m" + ext))
        for k in t:
            same(got[k], t[k])


def test_formats_come_from_the_library_table(tmp_path):
    # save picks the writer by extension in C (lm_model_save); load
    # recognises a file without a known extension by its first bytes.
    t = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    with pytest.raises(ValueError, match="unknown extension") as e:
        libmerge.save(tmp_path / "m.pt", t)
    assert "m.pt" in str(e.value)
    assert not (tmp_path / "m.pt").exists()
    for ext in (".safetensors", ".gguf", ".npz"):
        libmerge.save(tmp_path / ("m" + ext), t)
        os.rename(tmp_path / ("m" + ext), tmp_path / "blob")
        same(libmerge.load(tmp_path / "blob")["w"], t["w"])
    (tmp_path / "blob").write_bytes(b"not a model")
    with pytest.raises(libmerge.Error, match="unknown model format"):
        libmerge.load(tmp_path / "blob")


def npz_with(tmp_path, members, method=zipfile.ZIP_STORED):
    p = tmp_path / "bad.npz"
    with zipfile.ZipFile(p, "w", compression=method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return p


def npy_bytes(a):
    import io
    b = io.BytesIO()
    np.lib.format.write_array(b, a)
    return b.getvalue()


def expect(path, error, fragment):
    with pytest.raises(error, match=fragment) as e:
        libmerge.load(path)
    assert os.path.basename(str(path)) in str(e.value)


def test_broken_archives(tmp_path):
    good = npy_bytes(np.ones((2, 3), np.float32))
    p = npz_with(tmp_path, {"w.npy": good})
    raw = p.read_bytes()
    p.write_bytes(raw[:-30])
    expect(p, libmerge.Error, "end-of-directory|central directory")
    flipped = bytearray(raw)
    flipped[raw.index(good) + len(good) - 1] ^= 1
    p.write_bytes(bytes(flipped))
    expect(p, libmerge.Error, "CRC-32 mismatch")
    p.write_bytes(b"")
    expect(p, libmerge.Error, "too short")
    p = npz_with(tmp_path, {"w.npy": good[:-4]})
    expect(p, libmerge.Error, "member 'w.npy'.*data bytes")
    p = npz_with(tmp_path, {"w.npy": b"\x93NUMPX" + good[6:]})
    expect(p, libmerge.Error, "bad magic")
    p = npz_with(tmp_path, {"w.txt": good})
    expect(p, libmerge.Error, "'w.txt' is not an .npy array")
    p = npz_with(tmp_path, {"w.npy": npy_bytes(np.asfortranarray(np.ones((2, 3), np.float32)))})
    expect(p, libmerge.Error, "Fortran-order")
    p = npz_with(tmp_path, {"w.npy": npy_bytes(np.ones(3, ">f4"))})
    expect(p, libmerge.Error, "dtype '>f4'")
    p = npz_with(tmp_path, {"w.npy": npy_bytes(np.ones(3, np.int32))})
    expect(p, libmerge.Error, "dtype '<i4'")
    p = npz_with(tmp_path, {"w.npy": npy_bytes(np.ones(3, "V2"))})
    expect(p, libmerge.Error, "bfloat16")
    p = npz_with(tmp_path, {"w.npy": good}, method=zipfile.ZIP_BZIP2)
    expect(p, libmerge.Error, "compression method 12")
    with zipfile.ZipFile(tmp_path / "dup.npz", "w") as z:
        z.writestr("w.npy", good)
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            z.writestr("w.npy", good)
    expect(tmp_path / "dup.npz", libmerge.Error, "two members named 'w.npy'")


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(libmerge.Error, match="temporary file"):
        libmerge.save(tmp_path / "missing" / "o.npz", TENSORS)
    assert not (tmp_path / "missing").exists()
    # A tensor that cannot be written (5 dims into GGUF) aborts the write
    # after the temporary file was created: nothing remains.
    with pytest.raises(libmerge.Error, match="1 to 4"):
        libmerge.save(tmp_path / "o.gguf", {"x": np.ones((1, 1, 1, 1, 2), np.float32)})
    assert os.listdir(tmp_path) == []


def test_cli_merges_npz_checkpoints(tmp_path):
    lmerge = os.environ.get("LIBMERGE_LMERGE")
    if not lmerge:
        pytest.skip("LIBMERGE_LMERGE is not set")
    base = {"w": RNG.standard_normal((4, 6)).astype(np.float32)}
    fts = [{"w": base["w"] + RNG.standard_normal((4, 6)).astype(np.float32)} for _ in range(2)]
    np.savez(tmp_path / "base.npz", **base)
    np.savez_compressed(tmp_path / "a.npz", **fts[0])
    np.savez(tmp_path / "b.npz", **fts[1])
    cfg = tmp_path / "m.yaml"
    cfg.write_text("merge_method: task_arithmetic\nbase_model: %s\nmodels:\n"
                   "  - model: %s\n  - model: %s\nparameters:\n  lambda: 0.5\n"
                   % (tmp_path / "base.npz", tmp_path / "a.npz", tmp_path / "b.npz"))
    r = subprocess.run([lmerge, "run", str(cfg), "-o", str(tmp_path / "out"), "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = libmerge.load(tmp_path / "out" / "model.safetensors")["w"]
    want = base["w"] + 0.5 * sum(f["w"] - base["w"] for f in fts)
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
