"""User subspaces (lm_plan_set_subspace, libmerge.Subspace) for esm and
purify, checked two ways:

1. a user subspace equal to the one the method builds from the same
   statistics (ESM: the top k eigenvectors of G_t = dW_t X_t^T X_t dW_t^T;
   purification: the top r left singular vectors of W_t C~_t) gives the
   method's own result: max |diff| <= 1e-4 * max |result| (the bases are
   computed here in f64 from the same inputs, so they agree with the
   library's up to rounding and signs, to which both methods are
   invariant);
2. against numpy written from the papers' equations with the user's basis
   P_t in place of the statistics-built one:
   ESM (Li et al., CVPR 2026; released code github.com/...ESM, esm_utils):
     A_t = P_t^T dW_t, inter-task weight (||dW_t|| / mean)^p, eigenvalue
     weighting (lambda / mean lambda)^eig_power renormalised to mean 1,
     concatenation, input-column scaling (colnorm / mean)^p, polar factors
     of both concatenations rescaled by their mean singular values, x 2;
   PAVE (An et al., arXiv:2510.14697): W'_t = U_r S_r V_r^T C~^-1 =
     U_r diag(S~_r / S_r) U_r^T W_t with the user's P for U_r, S~ the
     polarized singular values.
   Tolerance: max |diff| <= 1e-4 * max |ref| (f32 output of f64 math).
Tasks or tensors without a rule keep the statistics route (checked
against the method without any rule, exactly the same bits)."""
import numpy as np
import pytest

import libmerge
import esm_released
import reference as ref

T, D_OUT, D_IN, N = 3, 24, 16, 96
LAYERS = ["blocks.0.fc.weight", "blocks.1.fc.weight"]


def make(seed=3, n_rows=N):
    rng = np.random.default_rng(seed)
    base = {k: (0.1 * rng.standard_normal((D_OUT, D_IN))).astype(np.float32) for k in LAYERS}
    base["blocks.0.norm.bias"] = np.zeros(D_IN, np.float32)
    models, xs = [], []
    for _ in range(T):
        models.append({k: (v + (rng.standard_normal((v.shape[0], 5)) @
                                rng.standard_normal((5, v.shape[-1])) * 0.03
                                + 0.005 * rng.standard_normal(v.shape))
                           if v.ndim == 2 else v + 0.01 * rng.standard_normal(v.shape))
                       .astype(np.float32) for k, v in base.items()})
        xs.append({k: (rng.standard_normal((n_rows, D_IN)) * 0.9 ** np.arange(D_IN))
                   .astype(np.float32) for k in LAYERS})
    stats = libmerge.Stats()
    for t in range(T):
        for k in LAYERS:
            stats.observe(t, k, xs[t][k])
    return base, models, xs, stats


def delta(base, model, key):
    """The task vector as the library forms it: f32 difference, then f64."""
    return (model[key] - base[key]).astype(np.float64)


def close(got, want, what=""):
    scale = max(np.abs(want).max(), 1e-30)
    err = np.abs(got - want).max()
    assert err <= 1e-4 * scale, (what, err, scale)


def anchored(name):
    return "^" + name.replace(".", "\\.") + "$"


# --- ESM -------------------------------------------------------------------

def esm_gram(base, model, x, key):
    dw = delta(base, model, key)
    x = x.astype(np.float64)
    return dw @ (x.T @ x) @ dw.T


def esm_from_bases(dws, bases, strengths, norm_power=2.0, eig_power=0.15):
    """ESM's layer merge from given per-task output bases (columns
    orthonormal) and direction strengths, by the paper's equations."""
    norms = [np.linalg.norm(dw) for dw in dws]
    us, vs = [], []
    for dw, p, lam, nt in zip(dws, bases, strengths, norms):
        a = (p.T @ dw) * nt ** norm_power
        e = (lam / lam.mean()) ** eig_power
        e = e / e.mean()
        us.append(p * e[None, :])
        vs.append(a * e[:, None])
    pc = np.concatenate(us, 1)
    ac = np.concatenate(vs, 0) / np.mean(norms) ** norm_power
    cn = np.linalg.norm(ac, axis=0)
    ac = ac * (cn / cn.mean())[None, :] ** norm_power
    uu, su, vu = np.linalg.svd(pc, full_matrices=False)
    ua, sa, va = np.linalg.svd(ac, full_matrices=False)
    return 2 * (uu @ vu * su.mean()) @ (ua @ va * sa.mean())


def test_esm_own_subspace_gives_own_result():
    base, models, xs, stats = make()
    k = D_OUT // T
    subs = [libmerge.Subspace("esm", anchored(key), esm_gram(base, models[t], xs[t][key], key),
                              basis="eigen", rank=k, model=t)
            for key in LAYERS for t in range(T)]
    own = esm_released.merge(base, models, stats=stats, alpha=0.8)
    user = esm_released.merge(base, models, stats=stats, alpha=0.8, subspaces=subs)
    for key in base:
        close(user[key].astype(np.float64), own[key].astype(np.float64), key)


def test_esm_output_shift_svd_gives_own_result():
    """The released route: right singular vectors of dO = X dW^T, whose
    squared singular values are G's eigenvalues."""
    base, models, xs, stats = make()
    key = LAYERS[0]
    subs = [libmerge.Subspace("esm", anchored(key),
                              xs[t][key].astype(np.float64) @ delta(base, models[t], key).T,
                              basis="right", rank=D_OUT // T, model=t) for t in range(T)]
    own = esm_released.merge(base, models, stats=stats)
    user = esm_released.merge(base, models, stats=stats, subspaces=subs)
    for k in base:
        close(user[k].astype(np.float64), own[k].astype(np.float64), k)


def test_esm_user_bases_match_numpy_without_stats():
    """No statistics at all: the generic routing sends a tensor whose every
    task has a subspace to the essential-subspace merge (layer scaling off,
    alpha 1, so the tensor's result is the layer merge alone)."""
    base, models, _, _ = make()
    rng = np.random.default_rng(9)
    key = LAYERS[1]
    mats = [rng.standard_normal((D_OUT, D_OUT)) for _ in range(T)]
    ranks = [4, 6, 5]  # per task, not floor(d_out / T)
    subs = [libmerge.Subspace("esm", "fc", mats[t], basis="left", rank=ranks[t], model=t)
            for t in range(T)]
    got = esm_released.merge(base, models, layer_scaling=False, subspaces=subs)
    bases, strengths = [], []
    for t in range(T):
        u, s, _ = np.linalg.svd(mats[t])
        bases.append(u[:, :ranks[t]])
        strengths.append(s[:ranks[t]] ** 2)
    want = esm_from_bases([delta(base, m, key) for m in models], bases, strengths)
    close(got[key].astype(np.float64) - base[key], want, key)


def test_esm_mixed_tasks_and_fallback():
    """Task 1 of one layer given by the user (an eigenbasis, strengths =
    eigenvalues), tasks 0 and 2 from statistics; the other layer has no
    rule and keeps exactly the method's own result."""
    base, models, xs, stats = make()
    key, other = LAYERS
    k = D_OUT // T
    g = esm_gram(base, models[1], xs[1][key], key) + np.eye(D_OUT) * 1e-3
    sub = libmerge.Subspace("esm", anchored(key), g, basis="eigen", rank=k, model=1)
    own = esm_released.merge(base, models, stats=stats, layer_scaling=False)
    got = esm_released.merge(base, models, stats=stats, layer_scaling=False,
                             subspaces=[sub])
    assert np.array_equal(got[other], own[other])
    bases, strengths = [], []
    for t in range(T):
        ev, p = np.linalg.eigh(g if t == 1 else esm_gram(base, models[t], xs[t][key], key))
        order = np.argsort(-ev, kind="stable")[:k]
        bases.append(p[:, order])
        n = 1.0 if t == 1 else N - 1.0  # only ratios matter
        strengths.append(np.maximum(ev[order], 0) / n)
    want = esm_from_bases([delta(base, m, key) for m in models], bases, strengths)
    close(got[key].astype(np.float64) - base[key], want, key)


# --- purification ------------------------------------------------------------

def pave_user(w, p, s, polarize):
    """PAVE's W' = U_r S~_r V_r^T C~^-1 = U_r diag(S~_r / S_r) U_r^T W with
    the user's basis p for U_r and s for S_r."""
    d = (s / s.mean()) ** polarize if polarize else np.ones_like(s)
    return (p * d[None, :]) @ (p.T @ w)


@pytest.mark.parametrize("polarize", [0.0, 0.5])
def test_purify_own_subspace_gives_own_result(polarize):
    base, models, xs, stats = make()
    keep = 0.5
    r = ref._lround(keep * D_IN)  # uniform allocation: round(keep * min(m, n))
    subs = []
    for key in LAYERS:
        for t in range(T):
            ct, _ = ref.pave_regularise(xs[t][key])
            w = base[key].astype(np.float64) + delta(base, models[t], key)
            subs.append(libmerge.Subspace("purify", anchored(key), w @ ct, basis="left",
                                          rank=r, model=t))
    opts = {"keep": keep, "allocation": "uniform", "polarize": polarize}
    own = libmerge.merge("task_arithmetic", base, models, stats=stats, purify=opts)
    user = libmerge.merge("task_arithmetic", base, models, stats=stats, purify=opts,
                          subspaces=subs)
    for key in base:
        close(user[key].astype(np.float64), own[key].astype(np.float64), key)


@pytest.mark.parametrize("polarize", [0.0, 0.7])
def test_purify_user_bases_match_numpy(polarize):
    """Model 0 from a user matrix M (its top 5 left singular vectors and
    values), models 1 and 2 from statistics (uniform allocation, reference
    PAVE); the norm bias has no rule and stays a plain sum."""
    base, models, xs, stats = make()
    rng = np.random.default_rng(4)
    key = LAYERS[0]
    mat = rng.standard_normal((D_OUT, 7)) * np.array([5, 4, 3, 2, 1.5, 1, 0.5])
    sub = libmerge.Subspace("purify", key, mat, basis="left", rank=5, model=0)
    keep = 0.75
    got = libmerge.merge("task_arithmetic", base, models, stats=stats, subspaces=[sub],
                         purify={"keep": keep, "allocation": "uniform",
                                 "polarize": polarize})
    u, s, _ = np.linalg.svd(mat, full_matrices=False)
    w0 = base[key].astype(np.float64) + delta(base, models[0], key)
    taus = [pave_user(w0, u[:, :5], s[:5], polarize) - base[key]]
    pv = ref.pave(base, models, xs, keep, allocation="uniform", polarize=polarize)
    taus += [pv[t][key] for t in (1, 2)]
    close(got[key].astype(np.float64) - base[key], sum(taus), key)
    bias = "blocks.0.norm.bias"
    close(got[bias].astype(np.float64),
          sum(m[bias].astype(np.float64) - base[bias] for m in models) + base[bias], bias)


def test_purify_without_stats_needs_only_subspaces():
    base, models, _, _ = make()
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.standard_normal((D_OUT, 6)))
    got = libmerge.merge("task_arithmetic", base, models, purify={"keep": 0.9},
                         subspaces=[libmerge.Subspace("purify", "fc", q)])
    for key in LAYERS:
        want = sum(q @ (q.T @ (base[key] + delta(base, m, key))) - base[key] for m in models)
        close(got[key].astype(np.float64) - base[key], want, key)


def test_search_uses_subspaces():
    """search(subspaces=...): the returned merge is merge() at the best
    alpha with the same subspaces, bit for bit."""
    base, models, _, _ = make()
    rng = np.random.default_rng(5)
    subs = [libmerge.Subspace("esm", "fc", rng.standard_normal((D_OUT, D_OUT)), rank=4)]
    key = LAYERS[0]
    target = base[key] + 0.5 * sum(delta(base, m, key) for m in models).astype(np.float32)
    best, _, _, merged = libmerge.search(
        "esm", base, models, lambda m: -float(np.abs(m[key] - target).sum()),
        max_evals=4, widen=0, subspaces=subs)
    again = libmerge.merge("esm", base, models, alpha=best, subspaces=subs)
    for k in base:
        assert np.array_equal(merged[k], again[k]), k


def test_projector_object_merger_and_merge_to():
    """A libmerge.Projector in a Subspace; Merger and merge_to(callable)
    give merge()'s bits with the same subspaces."""
    base, models, _, _ = make()
    rng = np.random.default_rng(8)
    proj = libmerge.Projector.from_array(rng.standard_normal((D_OUT, D_OUT)), "left", rank=5)
    subs = [libmerge.Subspace("purify", "fc", proj)]
    want = libmerge.merge("task_arithmetic", base, models, purify={"keep": 0.9},
                          subspaces=subs)
    got = {}
    libmerge.merge_to(lambda name, a: got.__setitem__(name, np.array(a)), "task_arithmetic",
                      base, models, purify={"keep": 0.9}, subspaces=subs)
    with libmerge.Merger("task_arithmetic", models, purify={"keep": 0.9, "allocation": "layer"},
                         subspaces=subs) as merger:
        applied = {k: merger.apply(k, v) for k, v in base.items()}
    for k in base:
        assert np.array_equal(got[k], want[k]), k
        assert np.array_equal(applied[k], want[k]), k


# --- errors --------------------------------------------------------------------

def test_errors_name_tensor_and_refuse_unused_rules():
    base, models, _, stats = make()
    wrong = libmerge.Subspace("esm", "fc", np.eye(D_IN), rank=3, model=2)
    with pytest.raises(libmerge.ShapeError, match="blocks.0.fc.weight.*task 2"):
        esm_released.merge(base, models, stats=stats, subspaces=[wrong])
    with pytest.raises(libmerge.InvalidArgumentError, match="esm"):
        libmerge.merge("ties", base, models,
                       subspaces=[libmerge.Subspace("esm", "fc", np.eye(D_OUT))])
    with pytest.raises(libmerge.InvalidArgumentError, match="purif"):
        esm_released.merge(base, models, stats=stats,
                           subspaces=[libmerge.Subspace("purify", "fc", np.eye(D_OUT))])
    with pytest.raises(ValueError, match="use must be"):
        libmerge.Subspace("tsv", "fc", np.eye(3))
