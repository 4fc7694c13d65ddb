"""The fused path for LoRA adapters under a linear rule (lib/core/
fused_lora.c): out = base + sum_t c_t s_t B_t A_t, one sgemm of the packed
factors per block of rows, f32 accumulation, converted once to the
output dtype.

It is not bit-identical to the plain path (LIBMERGE_FUSED=0, which rounds
each adapter's product to f32 and sums the tasks in f64), so both are
checked against a float64 reference written here from the definition of
a LoRA update (Hu et al. 2021, arXiv:2106.09685: W + s B A with
s = alpha / r, or alpha / sqrt(r) for rsLoRA, Kalajievo 2023,
arXiv:2312.03732) and of task arithmetic / linear / average:

    |out - ref| <= ulp_out(ref) + 2^-20 * (|base| (1 + |k_b|) +
                                           sum_t |c_t s_t| (|B_t| |A_t|))

elementwise: one unit in the last place of the output dtype (the final
rounding, plus the f32 rounding of a sum already rounded once) plus
f32 accumulation error of the terms (2^-20 ~ 8 f32 ulps of the summed
magnitudes; rank <= 40 terms here). k_b is the rule's own multiple of the
base (linear without normalisation: sum of weights - 1).
"""
import os

import numpy as np
import pytest

import libmerge

RNG_SEED = 7


def ulp(x, dtype):
    """One unit in the last place of |x| in dtype (its subnormal step at 0)."""
    x = np.abs(np.asarray(x, np.float64))
    mant, tiny = {"f32": (23, 2.0 ** -149), "f16": (10, 2.0 ** -24),
                  "bf16": (7, 2.0 ** -133)}[dtype]
    e = np.floor(np.log2(np.maximum(x, 1e-300)))
    return np.maximum(2.0 ** (e - mant), tiny)


def to_dtype(x, dtype):
    if dtype == "f32":
        return x.astype(np.float32)
    if dtype == "f16":
        return x.astype(np.float16)
    return libmerge.to_bfloat16(x.astype(np.float32))


def as_f64(x, dtype):
    return (libmerge.from_bfloat16(x) if dtype == "bf16" else x).astype(np.float64)


def make(rng, shapes, tasks, ranks, transposed=(), missing=()):
    """Base (f64 master) and adapters; adapter t lacks the names in
    missing[t]; scales alpha/r or alpha/sqrt(r) alternately."""
    adapters, refs = [], []
    for t in range(tasks):
        f, ref = {}, {}
        for name, (rows, cols) in shapes.items():
            if name in (missing[t] if t < len(missing) else ()):
                continue
            r = ranks[t % len(ranks)]
            out, inn = (cols, rows) if name in transposed else (rows, cols)
            a = rng.standard_normal((r, inn)).astype(np.float32) / np.sqrt(inn)
            b = (rng.standard_normal((out, r)) * 0.02).astype(np.float32)
            scale = 16.0 / r if t % 2 == 0 else 16.0 / np.sqrt(r)
            f[name] = (a, b, scale)
            upd = scale * (b.astype(np.float64) @ a.astype(np.float64))
            mag = abs(scale) * (np.abs(b.astype(np.float64)) @ np.abs(a.astype(np.float64)))
            if name in transposed:
                upd, mag = upd.T, mag.T
            ref[name] = (upd, mag)
        adapters.append(libmerge.LoraAdapter(
            f, transposed=[n for n in transposed if n in f]))
        refs.append(ref)
    return adapters, refs


def reference(base64, refs, name, coefs, kb):
    out = base64 * (1.0 + kb)
    mag = np.abs(base64) * (1.0 + abs(kb))
    for c, ref in zip(coefs, refs):
        if name in ref:
            out = out + c * ref[name][0]
            mag = mag + abs(c) * ref[name][1]
    return out, mag


def check(got, want, mag, dtype, what):
    got = as_f64(got, dtype)
    tol = ulp(want, dtype) + 2.0 ** -20 * mag
    err = np.abs(got - want)
    worst = np.unravel_index(np.argmax(err - tol), err.shape)
    assert np.all(err <= tol), "%s: |err| %.3g > tol %.3g at %s" % (
        what, err[worst], tol[worst], worst)


SHAPES = {
    # rows not a multiple of the block (65536 // 97 = 675 rows) and more
    # than one parallel item (8 blocks of 675 rows each)
    "blocks.weight": (6001, 97),
    # one row per block (cols > 65536)
    "wide.weight": (3, 70001),
    # a single small block
    "small.weight": (5, 7),
    # a Conv1D-style target stored [in, out]
    "conv.weight": (31, 45),
}


def methods():
    """(method, params, weights, coefficients c_t, base multiple k_b)."""
    w = [0.7, -0.4, 1.3]
    return [
        ("task_arithmetic", {"lambda": 0.6}, None, [0.6] * 3, 0.0),
        ("average", {}, None, [1 / 3] * 3, 0.0),
        ("linear", {"normalize": False}, w, w, sum(w) - 1.0),
        ("linear", {"normalize": True}, w, [x / sum(w) for x in w], 0.0),
    ]


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(RNG_SEED)
    master = {n: rng.standard_normal(s) * 0.05 for n, s in SHAPES.items()}
    # task 1 lacks "small.weight": its delta there is zero
    adapters, refs = make(rng, SHAPES, 3, [16, 1, 40], transposed=("conv.weight",),
                          missing=[(), ("small.weight",), ()])
    return master, adapters, refs


def run_merge(master, adapters, dtype, method, params, weights, threads, fused=True):
    base = {n: to_dtype(v, dtype) for n, v in master.items()}
    old = os.environ.get("LIBMERGE_FUSED")
    if not fused:
        os.environ["LIBMERGE_FUSED"] = "0"
    try:
        return base, libmerge.merge(method, base, adapters, weights=weights,
                                    threads=threads, **params)
    finally:
        if old is None:
            os.environ.pop("LIBMERGE_FUSED", None)
        else:
            os.environ["LIBMERGE_FUSED"] = old


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("mi", range(4))
def test_fused_lora_against_reference_and_plain(case, dtype, mi):
    master, adapters, refs = case
    method, params, weights, coefs, kb = methods()[mi]
    base, fused = run_merge(master, adapters, dtype, method, params, weights, 2)
    _, plain = run_merge(master, adapters, dtype, method, params, weights, 2, fused=False)
    differs = False
    for name in SHAPES:
        want, mag = reference(as_f64(base[name], dtype), refs, name, coefs, kb)
        check(fused[name], want, mag, dtype, "fused %s %s %s" % (method, dtype, name))
        check(plain[name], want, mag, dtype, "plain %s %s %s" % (method, dtype, name))
        differs |= not np.array_equal(as_f64(fused[name], dtype), as_f64(plain[name], dtype))
    if dtype == "f32":
        # Evidence that the fused path ran: its different summation shows
        # in f32 somewhere (the plain path would be bit-identical).
        assert differs


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_fused_lora_same_bits_for_any_thread_count(case, dtype):
    master, adapters, _ = case
    outs = [run_merge(master, adapters, dtype, "task_arithmetic", {"lambda": 1.0}, None,
                      t)[1] for t in (1, 2, 8)]
    for name in SHAPES:
        for o in outs[1:]:
            assert np.array_equal(as_f64(outs[0][name], dtype), as_f64(o[name], dtype))


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_fused_lora_merger_in_place(case, dtype):
    """lm_merger (apply_ in place and apply) gives the plan's bits, for any
    thread count."""
    master, adapters, _ = case
    base, planned = run_merge(master, adapters, dtype, "task_arithmetic",
                              {"lambda": 0.6}, None, 1)
    for threads in (1, 2, 8):
        with libmerge.Merger("task_arithmetic", adapters, threads=threads,
                             **{"lambda": 0.6}) as m:
            for name in SHAPES:
                work = base[name].copy()
                m.apply_(name, work)
                assert np.array_equal(as_f64(work, dtype), as_f64(planned[name], dtype))
                assert np.array_equal(as_f64(m.apply(name, base[name]), dtype),
                                      as_f64(planned[name], dtype))


def test_fused_lora_nonfinite_base_in_place_leaves_tensor_unchanged(case):
    master, adapters, _ = case
    base = to_dtype(master["blocks.weight"], "bf16")
    base_f = libmerge.from_bfloat16(base)
    base_f[5000, 3] = np.inf
    work = libmerge.to_bfloat16(base_f)
    before = work.copy()
    with libmerge.Merger("task_arithmetic", adapters, **{"lambda": 1.0}) as m:
        with pytest.raises(libmerge.Error, match="non-finite value in tensor "
                                                 "'blocks.weight' at element 485003"):
            m.apply_("blocks.weight", work)
    assert np.array_equal(work.view(np.uint16), before.view(np.uint16))


def test_fused_lora_nonfinite_factor_reports_adapter(case):
    master, adapters, _ = case
    a, b, s = adapters[2].factors["small.weight"]
    b = b.copy()
    b[1, 0] = np.nan
    bad = libmerge.LoraAdapter({"small.weight": (a, b, s)})
    base = {"small.weight": master["small.weight"].astype(np.float32)}
    with pytest.raises(libmerge.Error, match="adapter 0 has a non-finite value"):
        libmerge.merge("task_arithmetic", base, [bad])


def test_fused_lora_plan_transposed_layout_changes_nothing(case):
    """A tensor the plan merges transposed (lm_plan_set_transposed) gets the
    same linear merge: the rule is element-wise."""
    master, adapters, _ = case
    base = {n: to_dtype(v, "f32") for n, v in master.items()}
    plain = libmerge.merge("task_arithmetic", base, adapters, **{"lambda": 0.5})
    flipped = libmerge.merge("task_arithmetic", base, adapters,
                             transposed=["blocks.weight", "conv.weight"], **{"lambda": 0.5})
    for name in SHAPES:
        assert np.array_equal(plain[name], flipped[name])
