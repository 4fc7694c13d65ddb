"""Checkpoints whose dtypes differ (a bf16 base with f32 and f64
fine-tunes) merge through `lmerge run` and `libmerge.merge`: the output
takes the base's dtype unless `dtype` says otherwise. Expected values:
numpy task arithmetic in f64 from the inputs' exact values, rounded once
to the output dtype (tolerance: one unit in the last place of that dtype,
for the f32 arithmetic before the final rounding)."""
import os
import subprocess

import numpy as np
import pytest

import libmerge
import st_format

LMERGE = os.environ.get("LIBMERGE_LMERGE", "lmerge")
RNG = np.random.default_rng(3)
SHAPES = {"model.embed_tokens.weight": (40, 8), "model.norm.weight": (8,)}


def to_bf16_bits(x):
    """float32 -> bf16 bit patterns, round to nearest even."""
    b = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(h):
    return (h.astype(np.uint32) << 16).view(np.float32)


def inputs():
    base = {k: from_bf16_bits(to_bf16_bits(RNG.standard_normal(s))) for k, s in SHAPES.items()}
    ft32 = {k: (v + 0.1 * RNG.standard_normal(v.shape)).astype(np.float32) for k, v in base.items()}
    ft64 = {k: v.astype(np.float64) + 0.1 * RNG.standard_normal(v.shape) for k, v in base.items()}
    return base, ft32, ft64


def want(base, fts, weights, lam):
    return {k: base[k].astype(np.float64) +
            lam * sum(w * (ft[k].astype(np.float64) - base[k]) for ft, w in zip(fts, weights))
            for k in base}


def test_lmerge_bf16_base_with_f32_and_f64_finetunes(tmp_path):
    base, ft32, ft64 = inputs()
    st_format.write(tmp_path / "base.safetensors",
                    {k: to_bf16_bits(v) for k, v in base.items()}, bf16=set(base))
    st_format.write(tmp_path / "a.safetensors", ft32)
    st_format.write(tmp_path / "b.safetensors", ft64)
    cfg = tmp_path / "merge.yaml"
    cfg.write_text("merge_method: task_arithmetic\nbase_model: %s\nmodels:\n"
                   "  - model: %s\n    parameters: {weight: 1.0}\n"
                   "  - model: %s\n    parameters: {weight: 0.5}\n"
                   "parameters: {lambda: 0.8}\n" % (tmp_path / "base.safetensors",
                                                     tmp_path / "a.safetensors",
                                                     tmp_path / "b.safetensors"))
    out = tmp_path / "out"
    r = subprocess.run([LMERGE, "run", cfg, "-o", out], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got, _, _ = st_format.read(out / "model.safetensors")
    expect = want(base, [ft32, ft64], [1.0, 0.5], 0.8)
    for k in SHAPES:
        assert got[k].dtype == np.uint16  # bf16, the base's dtype
        g = from_bf16_bits(got[k]).astype(np.float64)
        ulp = np.abs(expect[k]) * 2.0 ** -7
        assert np.all(np.abs(g - expect[k]) <= ulp + 1e-6), k


def test_merge_mixed_numpy_dtypes_keeps_the_base_dtype():
    base = {k: RNG.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    ft16 = {k: (v + 0.1 * RNG.standard_normal(v.shape)).astype(np.float16) for k, v in base.items()}
    ft64 = {k: v.astype(np.float64) + 0.1 * RNG.standard_normal(v.shape) for k, v in base.items()}
    merged = libmerge.merge("task_arithmetic", base, [ft16, ft64], weights=[0.3, 0.7])
    expect = want(base, [ft16, ft64], [0.3, 0.7], 1.0)
    for k in SHAPES:
        assert merged[k].dtype == np.float32
        np.testing.assert_allclose(merged[k], expect[k], rtol=2e-7,
                                   atol=1e-7 * float(np.abs(expect[k]).max()))


def test_merge_rows_policies_against_numpy():
    """A fine-tune with 2 added tokens and one with 2 fewer: shared rows
    merged, missing rows filled as each policy says (numpy, f64)."""
    base = {"embed": RNG.standard_normal((6, 4)).astype(np.float32)}
    a = {"embed": RNG.standard_normal((8, 4)).astype(np.float32)}
    b = {"embed": RNG.standard_normal((4, 4)).astype(np.float32)}
    with pytest.raises(libmerge.ShapeError, match="embed"):
        libmerge.merge("task_arithmetic", base, [a, b])
    B = base["embed"].astype(np.float64)
    for policy in ("base", "zero", "mean"):
        fill = {"base": B[4:], "zero": np.zeros((2, 4)),
                "mean": a["embed"][4:6].astype(np.float64)}[policy]
        b_full = np.concatenate([b["embed"].astype(np.float64), fill])
        want = B + 1.0 * (a["embed"][:6] - B) + 0.5 * (b_full - B)
        got = libmerge.merge("task_arithmetic", base, [a, b], weights=[1.0, 0.5], rows=policy)
        np.testing.assert_allclose(got["embed"], want, rtol=1e-6, atol=1e-6)
