"""The ctypes bindings against numpy references written from the formulas.

Tolerances: the library computes in f32 with f64 accumulation over models,
so f32 results match numpy's f32 arithmetic to a few units of f32 rounding
of the magnitudes involved; f16/bf16 results are within one unit in the last
place of a reference computed in f64 from the exact inputs and rounded once.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import libmerge
from libmerge import _lib

RNG = np.random.default_rng(1234)


def bf16_round(x):
    """Independent f64 -> bf16 bits, round to nearest even (via the f32
    bit pattern; exact because the inputs here are f32-representable
    sums rounded once by np.float32 first only when they fit)."""
    f = np.asarray(x, dtype=np.float32)
    u = f.view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def ulps_apart_bf16(a_bits, b_bits):
    a = a_bits.astype(np.int32)
    b = b_bits.astype(np.int32)
    # Same sign everywhere in these tests; compare magnitudes.
    return np.abs((a & 0x7FFF) - (b & 0x7FFF)) * np.where(
        (a ^ b) & 0x8000, -1, 1)


def random_models(dtype, shapes, n=2):
    def one():
        return {k: RNG.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    return one(), [one() for _ in range(n)]


SHAPES = {"layer.weight": (17, 9), "layer.bias": (17,), "scalar": (),
          "empty": (0, 4), "conv": (3, 2, 2, 5)}


def test_task_arithmetic_f32_matches_numpy():
    base, (m1, m2) = random_models(np.float32, SHAPES)
    out = libmerge.merge("task_arithmetic", base, [m1, m2], **{"lambda": 0.5})
    assert list(out) == list(base)
    for k in base:
        want = base[k] + np.float32(0.5) * ((m1[k] - base[k]) + (m2[k] - base[k]))
        assert out[k].dtype == np.float32 and out[k].shape == base[k].shape
        scale = np.abs(base[k]) + np.abs(m1[k]) + np.abs(m2[k]) + 1e-30
        np.testing.assert_array_less(np.abs(out[k] - want), 4 * 2.0**-24 * scale + 1e-45)


def test_task_arithmetic_f16_within_one_ulp():
    base, (m1, m2) = random_models(np.float16, SHAPES)
    out = libmerge.merge("task_arithmetic", base, [m1, m2], **{"lambda": 0.5})
    for k in base:
        b = base[k].astype(np.float64)
        want = (b + 0.5 * ((m1[k] - b) + (m2[k].astype(np.float64) - b))).astype(np.float16)
        assert out[k].dtype == np.float16
        diff = np.abs(out[k].view(np.int16).astype(np.int32) - want.view(np.int16).astype(np.int32))
        assert diff.size == 0 or diff.max() <= 1, k


def test_task_arithmetic_bf16_within_one_ulp():
    shapes = {"w": (33, 7), "b": (33,)}
    base = {k: libmerge.to_bfloat16(RNG.standard_normal(s)) for k, s in shapes.items()}
    models = [{k: libmerge.to_bfloat16(RNG.standard_normal(s)) for k, s in shapes.items()}
              for _ in range(2)]
    out = libmerge.merge("task_arithmetic", base, models, **{"lambda": 0.5})
    for k in shapes:
        assert isinstance(out[k], libmerge.BFloat16Array)
        b = libmerge.from_bfloat16(base[k]).astype(np.float64)
        ms = [libmerge.from_bfloat16(m[k]).astype(np.float64) for m in models]
        want = bf16_round(b + 0.5 * ((ms[0] - b) + (ms[1] - b)))
        got = out[k].view(np.uint16)
        assert np.abs(got.astype(np.int32) - want.astype(np.int32)).max() <= 1, k


def test_bf16_conversion_round_to_nearest_even():
    x = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-30, -0.0, np.inf])
    bits = libmerge.to_bfloat16(x).view(np.uint16)
    assert list(bits) == [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0x8000, 0x7F80]
    assert np.array_equal(libmerge.from_bfloat16(bits[:3]),
                          np.array([1.0, 1.0, 1 + 2**-6], dtype=np.float32))


def test_average_with_weights():
    base, models = random_models(np.float64, {"w": (8, 3)}, n=3)
    w = [0.5, 2.0, 1.5]
    out = libmerge.merge("average", base, models, weights=w)
    want = sum(wi * m["w"] for wi, m in zip(w, models)) / sum(w)
    assert out["w"].dtype == np.float64
    np.testing.assert_allclose(out["w"], want, rtol=1e-6, atol=1e-6)


def test_zero_copy_inputs_are_not_modified_and_noncontiguous_ok():
    base, (m1,) = random_models(np.float32, {"w": (6, 4)}, n=1)
    before = base["w"].copy()
    t = {"w": np.asfortranarray(m1["w"])}
    out = libmerge.merge("task_arithmetic", base, [t])
    assert np.array_equal(base["w"], before)
    np.testing.assert_allclose(out["w"], m1["w"], rtol=1e-6, atol=1e-6)


def test_thread_count_does_not_change_bits():
    shapes = {"t%d" % i: (31, 5 + i) for i in range(24)}
    base, models = random_models(np.float32, shapes, n=3)
    a = libmerge.merge("task_arithmetic", base, models, threads=1, **{"lambda": 0.3})
    b = libmerge.merge("task_arithmetic", base, models, threads=2, **{"lambda": 0.3})
    for k in shapes:
        assert a[k].tobytes() == b[k].tobytes()


def test_methods_and_info():
    names = libmerge.methods()
    assert "average" in names and "task_arithmetic" in names
    info = libmerge.method_info("task_arithmetic")
    lam, norm = info["params"]
    assert norm["name"] == "normalize" and norm["default"] is False
    assert lam["name"] == "lambda" and lam["type"] == "float"
    assert lam["default"] == 1.0 and lam["min"] == -10.0 and lam["max"] == 10.0
    avg = libmerge.method_info("average")["params"][0]
    assert avg["type"] == "bool" and avg["default"] is True
    with pytest.raises(libmerge.NotFoundError):
        libmerge.method_info("nope")


@pytest.mark.parametrize("call,exc,fragment", [
    (lambda b, m: libmerge.merge("slerpish", b, m), libmerge.NotFoundError, "task_arithmetic"),
    (lambda b, m: libmerge.merge("task_arithmetic", b, m, lamda=0.5), libmerge.NotFoundError, "'lamda'"),
    (lambda b, m: libmerge.merge("task_arithmetic", b, m, **{"lambda": 50}), libmerge.OutOfRangeError, "outside"),
    (lambda b, m: libmerge.merge("task_arithmetic", b, m, **{"lambda": float("nan")}), libmerge.OutOfRangeError, "NaN"),
    (lambda b, m: libmerge.merge("average", b, m, normalize="maybe"), libmerge.InvalidArgumentError, "boolean"),
    (lambda b, m: libmerge.merge("average", b, m, weights=[1.0, -1.0]), libmerge.OutOfRangeError, "sum to 0"),
])
def test_parameter_errors(call, exc, fragment):
    base, models = random_models(np.float32, {"w": (2, 2)})
    with pytest.raises(exc) as e:
        call(base, models)
    assert fragment in str(e.value)
    assert e.value.status < 0 and e.value.status_name.startswith("LM_ERR_")


def test_input_errors_name_the_tensor():
    base, (m1, m2) = random_models(np.float32, {"a": (2, 3), "b": (4,)})
    missing = {"a": m1["a"]}
    with pytest.raises(libmerge.NotFoundError) as e:
        libmerge.merge("task_arithmetic", base, [m1, missing])
    assert "model 1" in str(e.value) and "'b'" in str(e.value)
    with pytest.raises(libmerge.ShapeError) as e:
        libmerge.merge("task_arithmetic", base, [{"a": m1["a"].T.copy(), "b": m1["b"]}])
    assert "'a'" in str(e.value)
    with pytest.raises(TypeError, match="'a'.*int32"):
        libmerge.merge("task_arithmetic", base, [{"a": m1["a"].astype(np.int32), "b": m1["b"]}])
    with pytest.raises(TypeError, match="ambiguous"):
        libmerge.merge("task_arithmetic", {"a": np.zeros(3, np.uint16)}, [{"a": np.zeros(3, np.uint16)}])
    with pytest.raises(ValueError, match="weights"):
        libmerge.merge("task_arithmetic", base, [m1, m2], weights=[1.0])


def test_stats_against_numpy(tmp_path):
    s = libmerge.Stats()
    x1 = RNG.standard_normal((50, 6)).astype(np.float32)
    x2 = RNG.standard_normal((3, 7, 6)).astype(np.float32)  # (..., d_in)
    s.observe(0, "fc.weight", x1)
    s.observe(0, "fc.weight", x2)
    s.observe(1, "fc.weight", x1[:5])
    gram, n = s.get(0, "fc.weight")
    allx = np.concatenate([x1, x2.reshape(-1, 6)]).astype(np.float64)
    np.testing.assert_allclose(gram, allx.T @ allx, rtol=1e-12, atol=1e-12)
    assert n == 71
    assert s.keys() == [(0, "fc.weight"), (1, "fc.weight")] and len(s) == 2
    path = tmp_path / "calib.lmstats"
    s.save(path)
    t = libmerge.Stats.load(path)
    g2, n2 = t.get(0, "fc.weight")
    assert np.array_equal(gram, g2) and n2 == n
    t.merge(s)
    assert t.get(1, "fc.weight")[1] == 10
    with pytest.raises(libmerge.ShapeError):
        s.observe(0, "fc.weight", np.ones((2, 5), np.float32))
    with pytest.raises(libmerge.NonFiniteError):
        s.observe(2, "x", np.array([[np.nan, 1.0]]))
    (tmp_path / "bad").write_bytes(b"garbage!" * 3)
    with pytest.raises(libmerge.Error, match="bad magic"):
        libmerge.Stats.load(tmp_path / "bad")


def test_missing_library_is_a_clear_import_error():
    env = dict(os.environ, LIBMERGE_LIBRARY="/nonexistent/libmerge.so.1",
               PYTHONPATH=os.path.join(os.path.dirname(__file__), "..", "..",
                                       "bindings", "python"))
    r = subprocess.run([sys.executable, "-c", "import libmerge"], env=env,
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "/nonexistent/libmerge.so.1" in r.stderr
    assert "LIBMERGE_LIBRARY" in r.stderr


def test_version_check():
    _lib.check_api_version(100, (0, 1))
    _lib.check_api_version(105, (0, 1))
    with pytest.raises(ImportError, match="0.2.0"):
        _lib.check_api_version(200, (0, 1))
    with pytest.raises(ImportError, match="1.1.3"):
        _lib.check_api_version(10103, (0, 1))
    assert libmerge.version() == libmerge.__version__


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_ties", "average", "tsv"])
def test_nonfinite_inputs_are_errors_by_default(method):
    base = {"w": np.zeros((4, 4), np.float32), "b": np.zeros(4, np.float32)}
    good = {"w": np.ones((4, 4), np.float32), "b": np.ones(4, np.float32)}
    bad = {"w": np.ones((4, 4), np.float32), "b": np.array([1, np.inf, 1, 1], np.float32)}
    with pytest.raises(libmerge.NonFiniteError, match="model 1 .*tensor 'b' at element 1"):
        libmerge.merge(method, base, [good, bad])
    nan_base = {"w": base["w"], "b": np.array([0, 0, np.nan, 0], np.float32)}
    with pytest.raises(libmerge.NonFiniteError, match="the base .*tensor 'b' at element 2"):
        libmerge.merge(method, nan_base, [good, good])


def test_nonfinite_allow_lets_ieee_arithmetic_through():
    base = {"b": np.zeros(3, np.float32)}
    bad = {"b": np.array([1, np.nan, 2], np.float32)}
    out = libmerge.merge("task_arithmetic", base, [bad], nonfinite="allow", **{"lambda": 0.5})
    assert out["b"][0] == 0.5 and np.isnan(out["b"][1]) and out["b"][2] == 1.0
    with pytest.raises(ValueError, match="nonfinite"):
        libmerge.merge("task_arithmetic", base, [bad], nonfinite="skip")
