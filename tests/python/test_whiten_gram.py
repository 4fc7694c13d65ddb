"""The rank-aware polar factor's Gram route (docs/methods/svd_family.md,
"Rank-aware whitening", "Gram route") against numpy: U g(S) V^T from
np.linalg.svd in float64, g(s) = s^2 / (s^2 + tau^2), written here from
the definition (not from whiten_reference.py or the C code).

Iso-C with one task merges alpha * (sum s / sum g) * U g(S) V^T of that
task vector, so the polar factor is seen whole; the route is read from
the DEBUG log. On constructed spectra -- flat, decaying over 1e8, a
cluster straddling tau, rank-deficient (half the directions zero, as a
LoRA sum) -- the Gram route is taken (f32 for the flat one, else f64) and
the merge is within 1e-5
(relative Frobenius; LM_SVD_TOL is the route's bound, the f32 output adds
~6e-8) of the numpy result. whiten_floor=1e-3 puts tau at f64 rounding
(~3e-9 sigma_1): there the Gram eigenvalues of the small directions are
noise, the rule must refuse and the SVD route matches to 1e-7. TSV-M with
rank-4 tasks (dropped columns: a rank-deficient concatenation) takes the
Gram route for both factors and matches its numpy reference. 1 and 2
threads give the same bytes."""
import logging
import re

import numpy as np
import pytest

import libmerge
import whiten_reference as wr

EPS32 = float(np.finfo(np.float32).eps)
ROUTE = re.compile(r"rank-aware polar routes: f32 (\d+), f64 (\d+), svd (\d+)")


def routes(caplog):
    total = np.zeros(3, int)
    for rec in caplog.records:
        m = ROUTE.search(rec.getMessage())
        if m:
            total += np.array([int(g) for g in m.groups()])
    caplog.clear()
    return dict(zip(("f32", "f64", "svd"), total))


def polar_g(a, c):
    """U g(S) V^T and sum s / sum g for a task vector given as such (base
    zero): eps_in = eps_f32, tau = s_1 c eps_f32 sqrt(max(m, n))."""
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    tau = s[0] * c * EPS32 * np.sqrt(max(a.shape))
    g = s * s / (s * s + tau * tau)
    return (u * g) @ vt, s.sum() / g.sum(), tau


def with_spectrum(rng, shape, sv):
    m, n = shape
    u, _ = np.linalg.qr(rng.standard_normal((m, len(sv))))
    v, _ = np.linalg.qr(rng.standard_normal((n, len(sv))))
    return ((u * sv) @ v.T).astype(np.float32)


def spectrum(kind, d, tau_rel):
    x = np.arange(d) / (d - 1)
    if kind == "flat":
        return np.ones(d)
    if kind == "decaying":
        return 10.0 ** (-8 * x)
    if kind == "cluster":  # 16 directions from 3 tau to 0.3 tau
        return np.concatenate([np.linspace(1.0, 0.5, d - 16),
                               tau_rel * np.logspace(0.5, -0.5, 16)])
    return np.concatenate([np.linspace(1.0, 0.5, d // 2), np.zeros(d - d // 2)])


def iso_c(a, caplog, **params):
    base = {"w": np.zeros(a.shape, np.float32)}
    with caplog.at_level(logging.DEBUG, logger="libmerge"):
        out = libmerge.merge("iso_c", base, [{"w": a}], whiten="rank_aware", **params)
    return out["w"].astype(np.float64), routes(caplog)


def rel(got, want):
    return np.linalg.norm(got - want) / np.linalg.norm(want)


@pytest.mark.parametrize("shape", [(96, 160), (160, 96), (128, 128)])
@pytest.mark.parametrize("kind", ["flat", "decaying", "cluster", "rank_deficient"])
def test_gram_route_matches_numpy(shape, kind, caplog):
    rng = np.random.default_rng([shape[0], shape[1], len(kind)])
    d = min(shape)
    tau_rel = 10 * EPS32 * np.sqrt(max(shape))
    a = with_spectrum(rng, shape, spectrum(kind, d, tau_rel))
    p, mean, tau = polar_g(a.astype(np.float64), 10.0)
    if kind == "cluster":  # the cluster does straddle tau
        s = np.linalg.svd(a.astype(np.float64), compute_uv=False)
        assert (s > 2 * tau).sum() <= d - 10 and (s < tau).sum() >= 6
    got, r = iso_c(a, caplog, alpha=0.7)
    # Flat: cond 1, so f32 passes; the others need f64.
    want = {"f32": 1, "f64": 0, "svd": 0} if kind == "flat" else {"f32": 0, "f64": 1, "svd": 0}
    assert r == want, r
    err = rel(got, 0.7 * mean * p)
    assert err <= 1e-5, err


def test_floor_at_rounding_takes_the_svd(caplog):
    """tau ~ 3e-9 sigma_1 (whiten_floor=1e-3) over a spectrum decaying to
    1e-8: G's eigenvalues near tau^2 are rounding, the estimate is infinite
    and the SVD route runs (forced through the Gram route the same factor
    is off by ~5e-2: tests/c/test_linalg_whiten.c)."""
    rng = np.random.default_rng(5)
    shape = (96, 160)
    a = with_spectrum(rng, shape, spectrum("decaying", 96, 0))
    p, mean, _ = polar_g(a.astype(np.float64), 1e-3)
    got, r = iso_c(a, caplog, whiten_floor=1e-3)
    assert r == {"f32": 0, "f64": 0, "svd": 1}, r
    err = rel(got, mean * p)
    assert err <= 1e-7, err


def test_tsv_dropped_columns_take_the_gram_route(caplog):
    """Rank-4 tasks, k = 24: 20 of each task's columns are dropped (zero),
    so both concatenations are rank-deficient; the released Gram route
    cannot take them, the rank-aware one does."""
    rng = np.random.default_rng(9)
    shape = (96, 160)
    base = np.zeros(shape, np.float32)
    fts = [with_spectrum(rng, shape, np.linspace(1.0, 0.3, 4)) for _ in range(4)]
    with caplog.at_level(logging.DEBUG, logger="libmerge"):
        got = libmerge.merge("tsv", {"w": base}, [{"w": f} for f in fts],
                             whiten="rank_aware")["w"].astype(np.float64)
    r = routes(caplog)
    assert r == {"f32": 0, "f64": 2, "svd": 0}, r
    err = rel(got, wr.tsv(base, fts))
    assert err <= 1e-5, err


@pytest.mark.parametrize("method", ["tsv", "iso_c", "iso_cts"])
def test_gram_route_bit_identical_for_any_thread_count(method):
    """A 320 x 400 layer (the eigensolver's split back-transformation and
    the blocked products run on the idle threads at d >= 256)."""
    rng = np.random.default_rng(13)
    shape = (320, 400)
    fts = [with_spectrum(rng, shape, 0.05 * 0.97 ** np.arange(40)) for _ in range(4)]
    base = {"w": np.zeros(shape, np.float32)}
    runs = [libmerge.merge(method, base, [{"w": f} for f in fts], whiten="rank_aware",
                           threads=t)["w"].tobytes() for t in (1, 2)]
    assert runs[0] == runs[1]
