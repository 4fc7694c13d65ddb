"""mergekit's sparsification family against the numpy references of
mergekit_reference.py (written from mergekit's documented semantics and the
papers): the mergekit options of ties / dare_ties / dare_linear /
task_arithmetic, and breadcrumbs, breadcrumbs_ties, della, della_linear,
sce, ram, ramplus_tl. Random masks (DARE, DELLA) are the documented
counter-based ones, recomputed by the reference (the same masks on both
sides), and DELLA's keep rates are also checked statistically.

Tolerance: max |libmerge - reference| <= 1e-5 (absolute, f32 outputs of
task vectors ~0.02), as issue 22 asks."""
import os
import subprocess

import numpy as np
import pytest

import libmerge
import mergekit_reference as mk
import st_format

TOL = 1e-5
SHAPES = {"w": (24, 40), "b": (40,), "c": (3, 5, 4)}
T = 3


def models(seed=11, scale=0.02, sparsity=None):
    rng = np.random.default_rng(seed)
    base = {k: (0.05 * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}
    ms = []
    for _ in range(T):
        m = {}
        for k, s in SHAPES.items():
            d = scale * rng.standard_normal(s)
            if sparsity is not None:
                d = np.where(rng.random(s) < sparsity, d, 0.0)
            m[k] = (base[k] + d).astype(np.float32)
        ms.append(m)
    # The library sees tau = model - base in f32; the references get that.
    taus = {k: [m[k] - base[k] for m in ms] for k in SHAPES}
    return base, ms, taus


def check(out, base, want):
    for k in SHAPES:
        got = out[k].astype(np.float64) - base[k]
        err = np.abs(got - want[k]).max()
        assert err <= TOL, (k, err)


W = [1.0, 0.6, 1.4]
W_NEG = [1.0, -0.7, 1.3]   # a negative weight flips that model's votes


# --- mergekit semantics of the existing methods ---------------------------

@pytest.mark.parametrize("w", [W, W_NEG])
@pytest.mark.parametrize("density", [0.3, 0.77, 1.0])
@pytest.mark.parametrize("normalize,rescale", [(True, False), (False, False), (True, True)])
def test_ties_mergekit(w, density, normalize, rescale):
    base, ms, taus = models()
    out = libmerge.merge("ties", base, ms, weights=w, density=density, rescale=rescale,
                         divide="weights" if normalize else "none",
                         weights_in_election=True, **{"lambda": 0.9})
    check(out, base, {k: mk.ties(taus[k], w, density, normalize, rescale, 0.9)
                      for k in SHAPES})


def test_ties_weights_that_cancel_divide_by_one():
    """Weights 1 and -1: where both weighted entries agree, their weights
    sum to 0 and mergekit divides by 1."""
    base, ms, taus = models()
    w = [1.0, -1.0, 0.0]
    out = libmerge.merge("ties", base, ms, weights=w, density=1.0, divide="weights",
                         weights_in_election=True)
    want = {k: mk.ties(taus[k], w, 1.0, True) for k in SHAPES}
    check(out, base, want)
    agree = (np.sign(taus["w"][0]) == -np.sign(taus["w"][1]))
    assert agree.any() and np.abs(want["w"][agree]).max() > 0.01


@pytest.mark.parametrize("method,elect", [("dare_ties", True), ("dare_linear", False)])
@pytest.mark.parametrize("mode", ["l1", "density"])
@pytest.mark.parametrize("density,normalize,seed", [(0.3, False, 0), (0.6, True, 9),
                                                    (1.0, True, 3)])
def test_dare_rescale_modes(method, elect, mode, density, normalize, seed):
    base, ms, taus = models()
    params = {"density": density, "rescale_mode": mode, "lambda": 0.8}
    if elect:
        params.update(divide="weights" if normalize else "none", weights_in_election=True)
    else:
        params["normalize"] = normalize
    out = libmerge.merge(method, base, ms, weights=W_NEG, seed=seed, **params)
    check(out, base, {k: mk.dare(taus[k], W_NEG, k, seed, density, elect, normalize,
                                 True, mode, 0.8) for k in SHAPES})


def test_dare_without_rescale_ignores_the_mode():
    base, ms, taus = models()
    out = libmerge.merge("dare_linear", base, ms, seed=4, density=0.4, rescale=False,
                         rescale_mode="l1")
    check(out, base, {k: mk.dare(taus[k], [1.0] * T, k, 4, 0.4, False, False, False)
                      for k in SHAPES})


@pytest.mark.parametrize("w", [W, [1.0, -1.0, 0.0]])  # the second sums to 0: divide by 1
@pytest.mark.parametrize("normalize", [False, True])
def test_task_arithmetic_normalize(w, normalize):
    base, ms, taus = models()
    out = libmerge.merge("task_arithmetic", base, ms, weights=w, normalize=normalize,
                         **{"lambda": 0.5})
    check(out, base, {k: mk.task_arithmetic(taus[k], w, normalize, 0.5) for k in SHAPES})


# --- Model Breadcrumbs ----------------------------------------------------

@pytest.mark.parametrize("method,elect", [("breadcrumbs", False), ("breadcrumbs_ties", True)])
@pytest.mark.parametrize("density,gamma", [(1.0, 0.01), (0.5, 0.01), (0.9, 0.05), (0.3, 0.9),
                                           (0.5, 0.0), (0.0, 0.1), (0.8, 0.2)])
@pytest.mark.parametrize("normalize,rescale", [(False, False), (True, True)])
def test_breadcrumbs(method, elect, density, gamma, normalize, rescale):
    base, ms, taus = models()
    out = libmerge.merge(method, base, ms, weights=W_NEG, density=density, gamma=gamma,
                         normalize=normalize, rescale=rescale, **{"lambda": 1.2})
    check(out, base, {k: mk.breadcrumbs(taus[k], W_NEG, density, gamma, elect, normalize,
                                        rescale, 1.2) for k in SHAPES})


def test_breadcrumbs_keeps_the_middle_band():
    base = {"x": np.zeros(10, np.float32)}
    m = {"x": np.arange(1, 11, dtype=np.float32) * np.array([1, -1] * 5, np.float32)}
    # n = 10, density 0.5 -> 5 kept, gamma 0.2 -> the 2 largest dropped.
    out = libmerge.merge("breadcrumbs", base, [m], density=0.5, gamma=0.2)["x"]
    assert list(np.nonzero(out)[0]) == [3, 4, 5, 6, 7]     # magnitudes 4..8


def test_breadcrumbs_defaults_keep_everything():
    """mergekit's density default 1.0 returns the task vector untouched
    (gamma is not applied), so breadcrumbs defaults = task arithmetic."""
    base, ms, taus = models()
    a = libmerge.merge("breadcrumbs", base, ms, weights=W)
    b = libmerge.merge("task_arithmetic", base, ms, weights=W)
    for k in SHAPES:
        assert a[k].tobytes() == b[k].tobytes()


# --- DELLA ------------------------------------------------------------------

@pytest.mark.parametrize("method,elect,normalize", [("della", True, True),
                                                    ("della_linear", False, False)])
@pytest.mark.parametrize("density,epsilon,seed", [(1.0, 0.15, 0), (0.5, 0.15, 0),
                                                  (0.3, 0.1, 7), (0.7, 0.0, 2)])
@pytest.mark.parametrize("rescale", [True, False])
def test_della_masks_injected(method, elect, normalize, density, epsilon, seed, rescale):
    base, ms, taus = models()
    out = libmerge.merge(method, base, ms, weights=W, seed=seed, density=density,
                         epsilon=epsilon, rescale=rescale)
    check(out, base, {k: mk.della(taus[k], W, k, seed, density, epsilon, elect, normalize,
                                  rescale) for k in SHAPES})


def test_della_normalize_switches():
    base, ms, taus = models()
    out = libmerge.merge("della", base, ms, weights=W_NEG, seed=1, density=0.4,
                         normalize=False, **{"lambda": 0.7})
    check(out, base, {k: mk.della(taus[k], W_NEG, k, 1, 0.4, 0.15, True, False, True, 0.7)
                      for k in SHAPES})


def test_della_keep_rate_follows_magnitude_rank():
    """Statistics, independent of the RNG's exact form: in 256 rows of 512,
    the entries of rank r are kept with probability density - eps + 2 eps
    r / 511. Binned by rank into 8 groups of 16384 draws, each group's
    keep rate is within 5 binomial sds of its mean probability."""
    rng = np.random.default_rng(5)
    shape = (256, 512)
    base = {"x": np.zeros(shape, np.float32)}
    m = {"x": rng.standard_normal(shape).astype(np.float32)}
    out = libmerge.merge("della_linear", base, [m], seed=3, density=0.5, epsilon=0.3,
                         rescale=False)["x"]
    rank = np.argsort(np.argsort(np.abs(m["x"]), 1), 1)
    kept = out != 0
    assert np.array_equal(out[kept], m["x"][kept])
    p = 0.2 + 0.6 * rank / 511.0
    for g in range(8):
        sel = (rank >= 64 * g) & (rank < 64 * (g + 1))
        mean_p = p[sel].mean()
        sd = np.sqrt((p[sel] * (1 - p[sel])).sum()) / sel.sum()
        assert abs(kept[sel].mean() - mean_p) < 5 * sd, (g, kept[sel].mean(), mean_p)
    assert abs(kept.mean() - 0.5) < 5 * np.sqrt(0.25 / kept.size)


@pytest.mark.parametrize("density,epsilon", [(0.9, 0.15), (0.1, 0.1)])
def test_della_refuses_probabilities_outside_0_1(density, epsilon):
    base, ms, _ = models()
    with pytest.raises(libmerge.OutOfRangeError, match=r"epsilon.*|.*tensor 'w'"):
        libmerge.merge("della", base, ms, density=density, epsilon=epsilon)


def test_della_error_names_parameters_and_tensor():
    base, ms, _ = models()
    with pytest.raises(libmerge.OutOfRangeError) as e:
        libmerge.merge("della_linear", base, ms, density=0.95, epsilon=0.1)
    msg = str(e.value)
    assert "epsilon" in msg and "density" in msg and "model 0" in msg and "tensor '" in msg


# --- SCE --------------------------------------------------------------------

@pytest.mark.parametrize("topk", [1.0, 0.5, 0.1, 0.0])
def test_sce(topk):
    base, ms, taus = models()
    out = libmerge.merge("sce", base, ms, select_topk=topk)
    check(out, base, {k: mk.sce(taus[k], topk) for k in SHAPES})


def test_sce_ignores_model_weights_as_mergekit():
    base, ms, _ = models()
    a = libmerge.merge("sce", base, ms, select_topk=0.5)
    b = libmerge.merge("sce", base, ms, weights=W_NEG, select_topk=0.5)
    for k in SHAPES:
        assert a[k].tobytes() == b[k].tobytes()


def test_sce_small_task_vectors_get_uniform_weights():
    """Mean squares summing below 1e-6 (task vectors ~1e-4): mergekit
    weighs the models equally."""
    base, ms, taus = models(scale=1e-4)
    assert sum((t.astype(np.float64) ** 2).mean() for t in taus["w"]) < 1e-6
    out = libmerge.merge("sce", base, ms, select_topk=0.7)
    check(out, base, {k: mk.sce(taus[k], 0.7) for k in SHAPES})


# --- RAM ----------------------------------------------------------------------

@pytest.mark.parametrize("epsilon", [1e-5, 0.01])
def test_ram(epsilon):
    base, ms, taus = models(sparsity=0.4)
    out = libmerge.merge("ram", base, ms, weights=W_NEG, epsilon=epsilon)
    check(out, base, {k: mk.ram(taus[k], epsilon) for k in SHAPES})


@pytest.mark.parametrize("r,alpha,epsilon", [(0.1, 0.2, 1e-5), (0.5, 3.0, 1e-5),
                                             (1.0, 0.5, 0.01)])
def test_ramplus_tl(r, alpha, epsilon):
    base, ms, taus = models(sparsity=0.4)
    out = libmerge.merge("ramplus_tl", base, ms, r=r, alpha=alpha, epsilon=epsilon)
    want = {k: mk.ram(taus[k], epsilon, True, r, alpha) for k in SHAPES}
    check(out, base, want)
    # The rescaling does something here: unique entries grow.
    plain = {k: mk.ram(taus[k], epsilon) for k in SHAPES}
    assert np.abs(want["w"] - plain["w"]).max() > 1e-4


def test_ramplus_with_no_unique_entry():
    """Every change shared: unique count 0, rho = shared / epsilon clipped
    to alpha, no unique entry to scale: the result is RAM's."""
    base, ms, taus = models()
    a = libmerge.merge("ramplus_tl", base, ms)
    check(a, base, {k: mk.ram(taus[k], 1e-5, True) for k in SHAPES})
    check(a, base, {k: mk.ram(taus[k]) for k in SHAPES})


# --- per-model and per-tensor values (mergekit's per-model parameters) -----

DENS = [0.3, 0.6, 1.0]


def test_ties_per_model_density():
    base, ms, taus = models()
    out = libmerge.merge("ties", base, ms, weights=W_NEG, density=DENS, divide="weights",
                         weights_in_election=True)
    check(out, base, {k: mk.ties(taus[k], W_NEG, DENS, True) for k in SHAPES})


@pytest.mark.parametrize("method,elect", [("dare_ties", True), ("dare_linear", False)])
def test_dare_per_model_density(method, elect):
    base, ms, taus = models()
    extra = {"divide": "none", "weights_in_election": True} if elect else {}
    out = libmerge.merge(method, base, ms, weights=W, seed=6, density=DENS, rescale_mode="l1",
                         **extra)
    check(out, base, {k: mk.dare(taus[k], W, k, 6, DENS, elect) for k in SHAPES})


@pytest.mark.parametrize("method,elect", [("breadcrumbs", False), ("breadcrumbs_ties", True)])
def test_breadcrumbs_per_model_density_and_gamma(method, elect):
    base, ms, taus = models()
    gam = [0.0, 0.1, 0.3]
    out = libmerge.merge(method, base, ms, weights=W, density=[0.5, 0.8, 0.4], gamma=gam)
    check(out, base, {k: mk.breadcrumbs(taus[k], W, [0.5, 0.8, 0.4], gam, elect)
                      for k in SHAPES})


@pytest.mark.parametrize("method,elect", [("della", True), ("della_linear", False)])
def test_della_per_model_density_and_epsilon(method, elect):
    base, ms, taus = models()
    dens, eps = [0.5, 0.3, 1.0], [0.2, 0.05, 0.15]
    out = libmerge.merge(method, base, ms, weights=W, seed=8, density=dens, epsilon=eps)
    check(out, base, {k: mk.della(taus[k], W, k, 8, dens, eps, elect, elect) for k in SHAPES})


def test_per_tensor_values():
    """A dict gives per-tensor values (mergekit's filters and gradients):
    here density for one tensor and lambda for another."""
    base, ms, taus = models()
    out = libmerge.merge("breadcrumbs_ties", base, ms, weights=W, gamma=0.05,
                         density={"w": 0.4, "c": [0.5, 0.9, 0.7]}, **{"lambda": {"b": 0.5}})
    want = {"w": mk.breadcrumbs(taus["w"], W, 0.4, 0.05, True),
            "b": mk.breadcrumbs(taus["b"], W, 1.0, 0.05, True, lam=0.5),
            "c": mk.breadcrumbs(taus["c"], W, [0.5, 0.9, 0.7], 0.05, True)}
    check(out, base, want)


def test_della_error_names_the_model_with_bad_values():
    base, ms, _ = models()
    with pytest.raises(libmerge.OutOfRangeError, match="model 2"):
        libmerge.merge("della", base, ms, density=[0.5, 0.5, 0.95], epsilon=0.1)


def test_per_model_value_of_a_global_parameter_is_refused():
    """lambda and select_topk are global in mergekit: per-model values are
    refused, naming the parameter, never ignored."""
    base, ms, _ = models()
    with pytest.raises(libmerge.Error, match="lambda"):
        libmerge.merge("della", base, ms, **{"lambda": [1.0, 0.5, 0.2]})
    with pytest.raises(libmerge.Error, match="select_topk"):
        libmerge.merge("sce", base, ms, select_topk=[1.0, 0.5, 0.2])


# --- defaults, parameters, errors -----------------------------------------------

MERGEKIT_DEFAULTS = {
    "breadcrumbs": {"density": 1.0, "gamma": 0.01, "lambda": 1.0, "normalize": False,
                    "rescale": False},
    "breadcrumbs_ties": {"density": 1.0, "gamma": 0.01, "lambda": 1.0, "normalize": False,
                         "rescale": False},
    "della": {"density": 1.0, "epsilon": 0.15, "lambda": 1.0, "normalize": True,
              "rescale": True},
    "della_linear": {"density": 1.0, "epsilon": 0.15, "lambda": 1.0, "normalize": False,
                     "rescale": True},
    "sce": {"select_topk": 1.0},
    "ram": {"epsilon": 1e-5},
    "ramplus_tl": {"r": 0.1, "alpha": 0.2, "epsilon": 1e-5},
}


@pytest.mark.parametrize("method", sorted(MERGEKIT_DEFAULTS))
def test_new_methods_take_mergekit_defaults(method):
    info = libmerge.method_info(method)["params"]
    assert {p["name"]: p["default"] for p in info} == MERGEKIT_DEFAULTS[method]
    # mergekit's per-model ("tensor") parameters are per model here too.
    per_model = {p["name"] for p in info if p.get("per_model")}
    assert per_model == {"density", "gamma", "epsilon"} & set(MERGEKIT_DEFAULTS[method]) \
        if method not in ("ram", "ramplus_tl") else per_model == set()


@pytest.mark.parametrize("method,params,name", [
    ("breadcrumbs", {"gamma": 1.5}, "gamma"), ("breadcrumbs_ties", {"density": -0.1}, "density"),
    ("della", {"epsilon": 2.0}, "epsilon"), ("sce", {"select_topk": 1.01}, "select_topk"),
    ("ram", {"epsilon": -1.0}, "epsilon"), ("ramplus_tl", {"alpha": -1.0}, "alpha"),
])
def test_out_of_range_values_name_the_parameter(method, params, name):
    base, ms, _ = models()
    with pytest.raises(libmerge.OutOfRangeError, match=name):
        libmerge.merge(method, base, ms, **params)


@pytest.mark.parametrize("method,params,name", [
    ("dare_ties", {"rescale_mode": "l2"}, "rescale_mode"), ("ties", {"divide": "mean"}, "divide"),
])
def test_bad_choices_name_the_parameter(method, params, name):
    base, ms, _ = models()
    with pytest.raises(libmerge.Error, match=name):
        libmerge.merge(method, base, ms, **params)


# --- through lmerge run (YAML) -------------------------------------------------

LMERGE = os.environ.get("LIBMERGE_LMERGE")

YAML_CASES = [
    ("breadcrumbs_ties", {"density": 0.5, "gamma": 0.05}, {"normalize": True}),
    ("della", {"density": 0.5, "epsilon": 0.1}, {"lambda": 0.9}),
    ("sce", {}, {"select_topk": 0.5}),
    ("ramplus_tl", {}, {"r": 0.3, "alpha": 0.5}),
]


def yaml_value(v):
    return str(v).lower() if isinstance(v, bool) else repr(v)


@pytest.mark.skipif(not LMERGE, reason="LIBMERGE_LMERGE is not set")
@pytest.mark.parametrize("method,model_params,params", YAML_CASES)
def test_lmerge_run_matches_the_library(tmp_path, method, model_params, params):
    """The strategies and their parameters through mergekit-style YAML:
    the same bytes as libmerge.merge (same seed, 0)."""
    base, ms, _ = models()
    st_format.write(tmp_path / "base.safetensors", base)
    lines = ["merge_method: " + method, "base_model: %s" % (tmp_path / "base.safetensors"),
             "models:"]
    # mergekit's sce and ram read no weights; the config reader refuses a
    # parameter the method does not read (docs/cli.md, "Coming from mergekit").
    weighted = method not in ("sce", "ram", "ramplus_tl")
    for i, m in enumerate(ms):
        st_format.write(tmp_path / ("m%d.safetensors" % i), m)
        lines += ["  - model: %s" % (tmp_path / ("m%d.safetensors" % i)), "    parameters:"]
        if weighted:
            lines += ["      weight: %r" % W[i]]
        lines += ["      %s: %s" % (k, yaml_value(v)) for k, v in model_params.items()]
        if not weighted and not model_params:
            lines[-1] = "    parameters: {}"
    lines += ["parameters:"] + ["  %s: %s" % (k, yaml_value(v)) for k, v in params.items()]
    cfg = "\n".join(lines) + "\n"
    (tmp_path / "merge.yaml").write_text(cfg)
    r = subprocess.run([LMERGE, "run", str(tmp_path / "merge.yaml"), "-o", str(tmp_path / "out"),
                        "--threads", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + cfg
    got = st_format.read_dir(tmp_path / "out")
    want = libmerge.merge(method, base, ms, weights=W if weighted else None,
                          **model_params, **params)
    for k in SHAPES:
        assert got[k].tobytes() == want[k].tobytes(), k
