"""mergekit's geometric family (linear, slerp, nuslerp, multislerp,
karcher, model_stock, nearswap, arcee_fusion, passthrough) against the
independent numpy references of mergekit_reference_geo.py, every method
and parameter, plus the edge cases mergekit treats specially.

Tolerance: max |libmerge - reference| <= 1e-5 on the merged f32 weights
(absolute; the weights here are O(0.1), so about 1e-4 relative). The
references run in f32 as mergekit does, the library in f64 over f32
inputs; measured differences are ~1e-7."""
import os
import subprocess

import numpy as np
import pytest

import libmerge
import mergekit_reference_geo as mg
import st_format

TOL = 1e-5
RNG = np.random.default_rng(2206)
SHAPES = {"layers.0.mlp.weight": (16, 24), "layers.0.attn.weight": (12, 12),
          "layers.0.norm.weight": (24,), "layers.0.conv.weight": (4, 3, 5)}


def make(n_models, spread=0.02, rng=RNG):
    """A base and n fine-tuned models (base + small changes), f32."""
    base = {k: (0.05 * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}
    ms = [{k: (b + spread * rng.standard_normal(b.shape)).astype(np.float32)
           for k, b in base.items()} for _ in range(n_models)]
    return base, ms


def dyadic_pair(rng=RNG):
    """A base and a task vector of small multiples of 2^-10: base + d and
    base - d are exact in f32, so the two task vectors are exactly
    opposite."""
    base = {k: (rng.integers(-64, 64, s) / 1024).astype(np.float32) for k, s in SHAPES.items()}
    d = {k: (rng.integers(-32, 32, s) / 1024).astype(np.float32) for k, s in SHAPES.items()}
    return (base, {k: base[k] + d[k] for k in base}, {k: base[k] - d[k] for k in base})


def close(got, want, tol=TOL):
    err = float(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)).max())
    assert err <= tol, err


def check_all(out, ref):
    for k in SHAPES:
        close(out[k], ref(k))


# --- linear ------------------------------------------------------------------

@pytest.mark.parametrize("normalize", [True, False])
def test_linear(normalize):
    base, ms = make(3)
    w = [0.5, 1.25, 0.75]
    out = libmerge.merge("linear", base, ms, weights=w, normalize=normalize)
    # The plan's base is only the task vectors' anchor: it is not a point.
    check_all(out, lambda k: mg.linear([m[k] for m in ms], w, normalize))


def test_linear_without_base_model_uses_any_model_as_anchor():
    """mergekit without base_model: every model is added and any of them
    (here the first, then the last) is the plan's base."""
    _, ms = make(3)
    w = [0.3, 0.3, 0.4]
    for anchor in (ms[0], ms[2]):
        for normalize in (True, False):
            out = libmerge.merge("linear", anchor, ms, weights=w, normalize=normalize)
            check_all(out, lambda k: mg.linear([m[k] for m in ms], w, normalize))


def test_linear_zero_weight_sum_is_an_error():
    base, ms = make(2)
    with pytest.raises(libmerge.Error, match="sum to 0"):
        libmerge.merge("linear", base, ms, weights=[1.0, -1.0])


# --- slerp -------------------------------------------------------------------

@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 1.0, 1.4])
def test_slerp(t):
    base, (m,) = make(1)
    out = libmerge.merge("slerp", base, [m], t=t)
    check_all(out, lambda k: mg.slerp(t, base[k], m[k]))
    if t == 0.0:
        for k in SHAPES:
            assert np.array_equal(out[k], base[k])


def test_slerp_is_not_lerp_here():
    """The cases above take the spherical branch (cos < 0.9995), where the
    result differs from linear interpolation by far more than TOL."""
    base, (m,) = make(1, spread=0.05)
    k = "layers.0.mlp.weight"
    out = libmerge.merge("slerp", base, [m], t=0.5)[k]
    assert np.abs(out - 0.5 * (base[k] + m[k])).max() > 50 * TOL


@pytest.mark.parametrize("factor", [2.0, -1.0, -3.0, 1.0001])
def test_slerp_colinear_falls_back_to_lerp(factor):
    """Parallel and antiparallel ends (|cos| > 0.9995): linear
    interpolation of the raw tensors."""
    base, _ = make(0)
    m = {k: (factor * v).astype(np.float32) for k, v in base.items()}
    out = libmerge.merge("slerp", base, [m], t=0.25)
    check_all(out, lambda k: 0.75 * base[k].astype(np.float64) + 0.25 * m[k])


def test_slerp_zero_tensor_end():
    """A zero end is not normalised (norm <= 1e-8): cos = 0, theta =
    pi/2, so the result is sin(t pi / 2) times the other end."""
    base, (m,) = make(1)
    zero = {k: np.zeros_like(v) for k, v in base.items()}
    out = libmerge.merge("slerp", zero, [m], t=0.3)
    check_all(out, lambda k: mg.slerp(0.3, zero[k], m[k]))
    close(out["layers.0.norm.weight"], np.sin(0.15 * np.pi) * m["layers.0.norm.weight"])
    out = libmerge.merge("slerp", base, [zero], t=0.3)
    check_all(out, lambda k: mg.slerp(0.3, base[k], zero[k]))


def test_slerp_needs_t_and_one_model():
    base, ms = make(2)
    with pytest.raises(libmerge.Error, match="'t' is required"):
        libmerge.merge("slerp", base, ms[:1])
    with pytest.raises(libmerge.Error, match="exactly one model"):
        libmerge.merge("slerp", base, ms, t=0.5)


# --- nuslerp -----------------------------------------------------------------

@pytest.mark.parametrize("flatten,row_wise", [(True, False), (False, False), (False, True)])
@pytest.mark.parametrize("with_base", [True, False])
@pytest.mark.parametrize("w", [[1.0, 1.0], [0.2, 0.6], [1.0, -1.0]])
def test_nuslerp(flatten, row_wise, with_base, w):
    base, ms = make(2, spread=0.05)
    out = libmerge.merge("nuslerp", base, ms, weights=w, nuslerp_flatten=flatten,
                         nuslerp_row_wise=row_wise, with_base=with_base)
    check_all(out, lambda k: mg.nuslerp([m[k] for m in ms], w,
                                        base[k] if with_base else None,
                                        flatten=flatten, row_wise=row_wise))


def test_nuslerp_without_base_model():
    """mergekit without base_model: the plan's base is one of the two
    models (its task vector is zero) and with_base=false."""
    _, ms = make(2, spread=0.05)
    out = libmerge.merge("nuslerp", ms[0], ms, weights=[0.3, 0.7], with_base=False)
    check_all(out, lambda k: mg.nuslerp([m[k] for m in ms], [0.3, 0.7]))


def test_nuslerp_colinear_rows_lerp():
    """Rows where the two task vectors are parallel take the linear
    branch; the others the spherical one."""
    base, ms = make(2)
    k = "layers.0.mlp.weight"
    d0 = ms[0][k] - base[k]
    ms[1][k][:5] = base[k][:5] + 2 * d0[:5]
    out = libmerge.merge("nuslerp", base, ms, weights=[0.5, 0.5], nuslerp_flatten=False)
    close(out[k], mg.nuslerp([m[k] for m in ms], [0.5, 0.5], base[k], flatten=False))
    lerp = base[k][:5] + 1.5 * d0[:5].astype(np.float64)
    close(out[k][:5], lerp)


def test_nuslerp_needs_two_models():
    base, ms = make(3)
    with pytest.raises(libmerge.Error, match="exactly two models"):
        libmerge.merge("nuslerp", base, ms)


# --- multislerp --------------------------------------------------------------

@pytest.mark.parametrize("with_base", [True, False])
@pytest.mark.parametrize("normalize_weights", [True, False])
def test_multislerp(with_base, normalize_weights):
    base, ms = make(3, spread=0.05)
    w = [0.2, 0.5, 0.3] if normalize_weights else [0.4, 1.0, 0.6]
    out = libmerge.merge("multislerp", base, ms, weights=w, with_base=with_base,
                         normalize_weights=normalize_weights)
    check_all(out, lambda k: mg.multislerp([m[k] for m in ms], w,
                                           base[k] if with_base else None,
                                           normalize_weights=normalize_weights))


def test_multislerp_eps():
    base, ms = make(3, spread=0.05)
    out = libmerge.merge("multislerp", base, ms, eps=0.05)
    check_all(out, lambda k: mg.multislerp([m[k] for m in ms], [1, 1, 1], base[k], eps=0.05))
    # eps matters at this size: the default gives another result.
    default = libmerge.merge("multislerp", base, ms)
    assert np.abs(default["layers.0.mlp.weight"] - out["layers.0.mlp.weight"]).max() > 10 * TOL


def test_multislerp_one_model_is_that_model():
    base, (m,) = make(1)
    out = libmerge.merge("multislerp", base, [m])
    check_all(out, lambda k: m[k])


def test_multislerp_antipodal():
    """Two opposite task vectors with equal weights: the mean direction is
    zero; mergekit interpolates linearly (the base here). Three such
    vectors are an error."""
    base, m, anti = dyadic_pair()
    out = libmerge.merge("multislerp", base, [m, anti])
    check_all(out, lambda k: mg.multislerp([m[k], anti[k]], [1, 1], base[k]))
    check_all(out, lambda k: base[k])
    with pytest.raises(libmerge.Error, match="mean direction"):
        libmerge.merge("multislerp", base, [m, anti, m], weights=[1, 2, 1])


# --- karcher -----------------------------------------------------------------

@pytest.mark.parametrize("opts", [{}, {"max_iter": 2}, {"max_iter": 50, "tol": 1e-7},
                                  {"tol": 1e-2}])
def test_karcher(opts):
    base, ms = make(3, spread=0.05)
    out = libmerge.merge("karcher", base, ms, **opts)
    check_all(out, lambda k: mg.karcher([m[k] for m in ms], **opts))


def test_karcher_base_model_is_one_of_the_points():
    """mergekit gathers base_model with the models: add the base as a
    model too (its task vector is zero)."""
    base, ms = make(2, spread=0.05)
    out = libmerge.merge("karcher", base, [base] + ms)
    check_all(out, lambda k: mg.karcher([base[k]] + [m[k] for m in ms]))


def test_karcher_ignores_weights_as_mergekit_does():
    base, ms = make(3, spread=0.05)
    out = libmerge.merge("karcher", base, ms, weights=[1.0, 2.0, 0.5])
    check_all(out, lambda k: mg.karcher([m[k] for m in ms]))


def test_karcher_parallel_and_zero():
    """Parallel models: the common direction times the mean norm. A zero
    model steers nothing but its norm (0) counts in the scale."""
    base, _ = make(0)
    ms = [{k: (f * v).astype(np.float32) for k, v in base.items()} for f in (1.0, 2.0, 4.0)]
    out = libmerge.merge("karcher", base, ms)
    check_all(out, lambda k: (7.0 / 3.0) * base[k].astype(np.float64))
    zero = {k: np.zeros_like(v) for k, v in base.items()}
    _, ms2 = make(2, spread=0.05)
    out = libmerge.merge("karcher", base, ms2 + [zero])
    check_all(out, lambda k: mg.karcher([m[k] for m in ms2] + [zero[k]]))
    out = libmerge.merge("karcher", base, [zero, zero])
    check_all(out, lambda k: np.zeros(SHAPES[k]))


# --- model_stock -------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock(n, filter_wise):
    base, ms = make(n)
    # Correlated task vectors, as fine-tuning from one base gives: t > 0.
    common = {k: 0.02 * RNG.standard_normal(v.shape) for k, v in base.items()}
    ms = [{k: (m[k] + common[k]).astype(np.float32) for k in m} for m in ms]
    out = libmerge.merge("model_stock", base, ms, filter_wise=filter_wise)
    check_all(out, lambda k: mg.model_stock(base[k], [m[k] for m in ms], filter_wise))


def test_model_stock_two_models_closed_form():
    """N = 2 (Jang et al., eq. 3): t = 2 cos / (1 + cos)."""
    base, ms = make(2)
    k = "layers.0.norm.weight"
    d = [m[k].astype(np.float64) - base[k] for m in ms]
    c = d[0] @ d[1] / np.linalg.norm(d[0]) / np.linalg.norm(d[1])
    out = libmerge.merge("model_stock", base, ms)
    close(out[k], base[k] + 2 * c / (1 + c) * (d[0] + d[1]) / 2)


def test_model_stock_edges():
    base, ms = make(2)
    zero = [{k: v.copy() for k, v in base.items()} for _ in range(2)]
    out = libmerge.merge("model_stock", base, zero)
    check_all(out, lambda k: base[k])
    with pytest.raises(libmerge.Error, match="at least two"):
        libmerge.merge("model_stock", base, ms[:1])
    base, m, anti = dyadic_pair()
    with pytest.raises(libmerge.Error, match="undefined"):
        libmerge.merge("model_stock", base, [m, anti])


# --- nearswap ----------------------------------------------------------------

@pytest.mark.parametrize("t", [0.0, 1e-4, 0.01, 0.03, 1.0])
def test_nearswap(t):
    base, (m,) = make(1)
    out = libmerge.merge("nearswap", base, [m], t=t)
    check_all(out, lambda k: mg.nearswap(base[k], m[k], t))


def test_nearswap_mixes_both_regimes_and_needs_t():
    base, (m,) = make(1)
    d = np.abs(m["layers.0.mlp.weight"] - base["layers.0.mlp.weight"])
    assert (d < 0.01).any() and (d > 0.01).any()  # swapped and interpolated
    with pytest.raises(libmerge.Error, match="'t' is required"):
        libmerge.merge("nearswap", base, [m])


# --- arcee_fusion ------------------------------------------------------------

def test_arcee_fusion():
    base, (m,) = make(1, spread=0.05)
    # A few strongly changed entries, the outliers arcee_fusion keeps.
    for k, v in m.items():
        flat = v.reshape(-1)
        flat[:: 7] += 0.3
    out = libmerge.merge("arcee_fusion", base, [m])
    for k in SHAPES:
        imp = mg.arcee_importance(base[k], m[k])
        thr = mg.arcee_threshold(imp)
        # No score within rounding of the threshold: the mask is unambiguous.
        assert np.abs(imp - thr).min() > 1e-6 * max(abs(thr), 1e-30)
        kept = imp >= thr
        assert 0 < kept.sum() < kept.size
        close(out[k], mg.arcee_fusion(base[k], m[k]))


def test_arcee_fusion_unchanged_model_is_the_base():
    base, _ = make(0)
    same = {k: v.copy() for k, v in base.items()}
    out = libmerge.merge("arcee_fusion", base, [same])
    check_all(out, lambda k: base[k])


# --- passthrough -------------------------------------------------------------

def test_passthrough():
    base, ms = make(2)
    out = libmerge.merge("passthrough", base, ms[:1])
    check_all(out, lambda k: ms[0][k])
    out = libmerge.merge("passthrough", base, ms, source=1, scale=0.5)
    check_all(out, lambda k: mg.passthrough(ms[1][k], 0.5))
    out = libmerge.merge("passthrough", base, ms, source=-1, scale=2.0)
    check_all(out, lambda k: mg.passthrough(base[k], 2.0))
    with pytest.raises(libmerge.Error, match="source 2"):
        libmerge.merge("passthrough", base, ms, source=2)


# --- from YAML (lmerge run) ----------------------------------------------------

LMERGE = os.environ.get("LIBMERGE_LMERGE")


@pytest.mark.skipif(not LMERGE, reason="LIBMERGE_LMERGE is not set")
@pytest.mark.parametrize("method,n,params,ref", [
    ("slerp", 1, "  t: 0.3\n", lambda b, ms: mg.slerp(0.3, b, ms[0])),
    ("linear", 3, "  normalize: false\n", lambda b, ms: mg.linear(ms, [0.5, 0.25, 0.25], False)),
    # mergekit gathers base_model with the models: one more point of the mean
    ("karcher", 3, "", lambda b, ms: mg.karcher(ms + [b])),
    ("model_stock", 3, "  filter_wise: true\n", lambda b, ms: mg.model_stock(b, ms, True)),
    ("multislerp", 3, "  normalize_weights: true\n",
     lambda b, ms: mg.multislerp(ms, [0.5, 0.25, 0.25], b)),
])
def test_lmerge_run_config(tmp_path, method, n, params, ref):
    """The config reader (docs/cli.md "Coming from mergekit") passes only
    the parameters mergekit's method reads: `weight` for linear and
    multislerp; linear takes no base_model (mergekit would append it to
    the models without a weight)."""
    base, ms = make(n, spread=0.05)
    st_format.write(tmp_path / "base.safetensors", base)
    models = ""
    weighted = method in ("linear", "multislerp")
    for i, m in enumerate(ms):
        st_format.write(tmp_path / ("m%d.safetensors" % i), m)
        models += "  - model: %s\n" % (tmp_path / ("m%d.safetensors" % i))
        if weighted:
            models += "    parameters: {weight: %s}\n" % [0.5, 0.25, 0.25][i]
    cfg = tmp_path / "merge.yaml"
    head = "merge_method: %s\n" % method
    if method != "linear":
        head += "base_model: %s\n" % (tmp_path / "base.safetensors")
    cfg.write_text("%smodels:\n%sparameters:\n%s" % (head, models, params or "  {}\n"))
    r = subprocess.run([LMERGE, "run", str(cfg), "-o", str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out, _, _ = st_format.read(tmp_path / "out" / "model.safetensors")
    check_all(out, lambda k: ref(base[k], [m[k] for m in ms]))


# --- per-tensor and per-model values (mergekit's gradients and filters) --------

def test_slerp_t_per_tensor():
    """A t gradient over the layers becomes one t per tensor."""
    base, (m,) = make(1)
    ts = {"layers.0.mlp.weight": 0.1, "layers.0.attn.weight": 0.9,
          "layers.0.norm.weight": 0.0, "layers.0.conv.weight": 0.5}
    out = libmerge.merge("slerp", base, [m], t=ts)
    check_all(out, lambda k: mg.slerp(ts[k], base[k], m[k]))
    # A tensor without a t (no plan-wide value) is an error naming it.
    part = {"layers.0.mlp.weight": 0.1}
    with pytest.raises(libmerge.Error, match="'t' is required.*layers.0.attn.weight|"
                       "'t' is required.*layers.0.norm.weight|'t' is required.*conv"):
        libmerge.merge("slerp", base, [m], t=part)


def test_nearswap_t_per_tensor():
    base, (m,) = make(1)
    ts = {k: 0.005 * (i + 1) for i, k in enumerate(SHAPES)}
    out = libmerge.merge("nearswap", base, [m], t=ts)
    check_all(out, lambda k: mg.nearswap(base[k], m[k], ts[k]))


@pytest.mark.parametrize("method", ["linear", "nuslerp", "multislerp"])
def test_weights_per_tensor(method):
    base, ms = make(2, spread=0.05)
    k0 = "layers.0.attn.weight"
    out = libmerge.merge(method, base, ms, weights=[1.0, 1.0], weight={k0: [0.2, 0.8]})
    refs = {"linear": lambda k, w: mg.linear([m[k] for m in ms], w),
            "nuslerp": lambda k, w: mg.nuslerp([m[k] for m in ms], w, base[k]),
            "multislerp": lambda k, w: mg.multislerp([m[k] for m in ms], w, base[k])}
    check_all(out, lambda k: refs[method](k, [0.2, 0.8] if k == k0 else [1.0, 1.0]))


def test_passthrough_scale_per_model_and_tensor():
    base, ms = make(2)
    k0 = "layers.0.norm.weight"
    out = libmerge.merge("passthrough", base, ms, source={k0: 0, "layers.0.mlp.weight": 0},
                         scale=[0.5, 2.0])
    # Every other tensor comes from the plan-wide source (0 by default).
    check_all(out, lambda k: mg.passthrough(ms[0][k], 0.5))
    out = libmerge.merge("passthrough", base, ms, source={k0: 1}, scale={k0: [0.5, 3.0]})
    check_all(out, lambda k: mg.passthrough(ms[1][k], 3.0) if k == k0 else ms[0][k])
