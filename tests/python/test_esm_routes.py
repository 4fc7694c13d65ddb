"""ESM's routes to each task's essential subspace (docs/methods/esm.md,
"Routes by cost"): gram (eigenvectors of dW C dW^T), output (SVD of the
output shift, through a factor of C) and randomized (range finder applied
to G implicitly). Each is checked against reference.esm_layer, the released
algorithm in numpy (SVD of dO = X dW^T). Tolerance: max |diff| <= 1e-4 *
max |ref| for the exact routes and for the randomized one where its sketch
spans rank G; 2e-2 where it only approximates. Also: which route `auto`
takes, the memory guard and its errors."""
import numpy as np
import pytest

import libmerge
import esm_released
import reference as ref

T = 4
NAME = "lm_head.weight"


def make(d_out, d_in, n_rows, rank=6, seed=0, decay=0.9, noise=1e-3):
    """One [d_out, d_in] layer, T low-rank-plus-noise task vectors, inputs
    with a decaying spectrum (as activations have)."""
    rng = np.random.default_rng(seed)
    base = {NAME: (0.05 * rng.standard_normal((d_out, d_in))).astype(np.float32)}
    models, xs, stats = [], [], libmerge.Stats()
    for t in range(T):
        tv = (rng.standard_normal((d_out, rank)) @ rng.standard_normal((rank, d_in)) * 0.02
              + noise * rng.standard_normal((d_out, d_in)))
        models.append({NAME: (base[NAME] + tv).astype(np.float32)})
        x = (rng.standard_normal((n_rows, d_in)) * decay ** np.arange(d_in)).astype(np.float32)
        xs.append(x)
        stats.observe(t, NAME, x)
    taus = [m[NAME].astype(np.float64) - base[NAME] for m in models]
    return base, models, xs, stats, taus


def merged(base, models, stats, **opts):
    out = esm_released.merge(base, models, stats=stats, layer_scaling=False, **opts)
    return out[NAME].astype(np.float64) - base[NAME]


def rel(got, want):
    return np.abs(got - want).max() / np.abs(want).max()


def test_output_shift_svd_is_the_gram_eigenbasis():
    """The identity the output route rests on (esm_subspace.c): with
    C = X^T X = R^T R, G = dW C dW^T = (X dW^T)^T (X dW^T) = (R dW^T)^T (R dW^T),
    so G's eigenvectors with nonzero eigenvalues are the right singular
    vectors of dO = X dW^T and of B = R dW^T, with eigenvalues s^2."""
    rng = np.random.default_rng(3)
    dw = rng.standard_normal((30, 8))
    x = rng.standard_normal((20, 8))
    g = dw @ (x.T @ x) @ dw.T
    ev, vec = np.linalg.eigh(g)
    ev, vec = ev[::-1][:8], vec[:, ::-1][:, :8]     # rank G = 8
    _, s, vh = np.linalg.svd(x @ dw.T, full_matrices=False)
    w, v = np.linalg.eigh(x.T @ x)
    r = np.sqrt(w)[:, None] * v.T                    # R^T R = X^T X
    _, sb, vbh = np.linalg.svd(r @ dw.T, full_matrices=False)
    np.testing.assert_allclose(s[:8] ** 2, ev, rtol=1e-9)
    np.testing.assert_allclose(sb[:8] ** 2, ev, rtol=1e-9)
    # Same directions up to sign: |<v_i, p_i>| = 1.
    np.testing.assert_allclose(np.abs(np.sum(vh[:8].T * vec, 0)), 1, atol=1e-8)
    np.testing.assert_allclose(np.abs(np.sum(vbh[:8].T * vec, 0)), 1, atol=1e-8)


@pytest.mark.parametrize("route", ["gram", "output"])
@pytest.mark.parametrize("n_rows,pad", [(160, "complete"), (30, "complete"), (30, "identity")])
def test_exact_routes_match_released(route, n_rows, pad):
    """k = 12 <= rank dO: both exact routes give the released merge,
    including the padding rules with n = 30 < d_out = 48."""
    base, models, xs, stats, taus = make(48, 40, n_rows)
    want = ref.esm_layer(taus, xs, pad_identity=pad == "identity")
    got = merged(base, models, stats, esd_route=route, pad=pad)
    assert rel(got, want) <= 1e-4, rel(got, want)


@pytest.mark.parametrize("route", ["gram", "output", "randomized"])
@pytest.mark.parametrize("n_rows,pad", [(64, "complete"), (400, "complete"),
                                        (64, "identity"), (400, "identity")])
def test_head_shape_every_route_agrees(route, n_rows, pad):
    """An lm_head-like layer (d_out = 300 >> d_in = 16): k = 75 exceeds
    rank dO <= 16, where the released directions past the rank are an
    arbitrary null-space basis; every route keeps the rank's directions and
    matches the reference with keep_rank (the randomized sketch, 16 + 10
    columns, spans rank G, so it is exact too)."""
    if route == "randomized" and pad == "identity" and n_rows < 300:
        pytest.skip("refused: tested in test_randomized_refuses_identity_pad")
    base, models, xs, stats, taus = make(300, 16, n_rows)
    want = ref.esm_layer(taus, xs, pad_identity=pad == "identity", keep_rank=True)
    got = merged(base, models, stats, esd_route=route, pad=pad)
    assert rel(got, want) <= 1e-4, rel(got, want)


def test_randomized_approximates_when_sketch_is_smaller_than_rank():
    """k = 5 (rank=5), sketch 15 columns < rank G = 64: the range finder
    with two power iterations recovers the top directions of a decaying
    spectrum to 2e-2 of the exact merge, and is seeded (same bytes again)."""
    base, models, xs, stats, taus = make(256, 64, 200, rank=5, decay=0.95)
    exact = merged(base, models, stats, esd_route="output", rank=5)
    want = ref.esm_layer(taus, xs, k=5)
    assert rel(exact, want) <= 1e-4
    fast = merged(base, models, stats, esd_route="randomized", rank=5)
    again = merged(base, models, stats, esd_route="randomized", rank=5, threads=1)
    assert fast.tobytes() == again.tobytes()
    assert rel(fast, exact) <= 2e-2, rel(fast, exact)


@pytest.mark.parametrize("shape,n_rows,opts,budget,chosen", [
    ((48, 40), 160, {}, 2.0, "gram"),        # G 48 x 48 is the cheapest
    ((300, 16), 400, {}, 2.0, "output"),     # B 16 x 300 instead of G 300 x 300
    # rank 5, one thread: with the inputs (512 KiB), the merged result and
    # the concatenation, a 15-column sketch (1.1 MiB in all) fits 1.3 MiB,
    # the output route (1.7 MiB) and gram (2.7 MiB) do not
    ((256, 64), 200, {"rank": 5, "threads": 1}, 1.3 / 1024, "randomized"),
])
def test_auto_takes_the_cheapest_route(shape, n_rows, opts, budget, chosen):
    """auto runs the same computation as the forced route it picks (bytes
    equal; the exact routes can also agree to the last f32 bit, so the
    choice under a budget is pinned by the others being refused there)."""
    base, models, _, stats, _ = make(*shape, n_rows, rank=4)
    forced = merged(base, models, stats, esd_route=chosen, memory_budget=budget, **opts)
    auto = merged(base, models, stats, memory_budget=budget, **opts)
    assert auto.tobytes() == forced.tobytes()
    if chosen == "randomized":
        for r in ("gram", "output"):
            with pytest.raises(libmerge.OutOfRangeError, match="memory_budget"):
                merged(base, models, stats, esd_route=r, memory_budget=budget, **opts)
        exact = merged(base, models, stats, esd_route="output", **opts)
        assert auto.tobytes() != exact.tobytes()


def test_memory_guard_names_tensor_and_size():
    base, models, _, stats, _ = make(300, 16, 400)
    # Forced route over the budget: an error, nothing allocated.
    with pytest.raises(libmerge.OutOfRangeError,
                       match=r"'lm_head\.weight'.*esd_route=gram needs [0-9]+ bytes.*"
                             r"above memory_budget 1073742 bytes"):
        merged(base, models, stats, esd_route="gram", memory_budget=1e-3)
    # auto: even the randomized route is over a tiny budget.
    with pytest.raises(libmerge.OutOfRangeError,
                       match=r"'lm_head\.weight' \(300 x 16, 4 tasks\): the cheapest route "
                             r"output needs [0-9]+ bytes .*2 threads.*memory_budget"):
        merged(base, models, stats, memory_budget=1e-6, threads=2)


def test_guard_estimates_a_32k_vocabulary_without_allocating():
    """A 32000 x 64 head with a 1 MiB budget is refused from the estimate
    (G alone would be 7.6 GiB), before any large allocation."""
    rng = np.random.default_rng(0)
    base = {NAME: np.zeros((32000, 64), np.float32)}
    models = [{NAME: (0.01 * rng.standard_normal((32000, 64))).astype(np.float32)}
              for _ in range(2)]
    stats = libmerge.Stats()
    for t in range(2):
        stats.observe(t, NAME, rng.standard_normal((100, 64)).astype(np.float32))
    with pytest.raises(libmerge.OutOfRangeError,
                       match=r"esd_route=gram needs [0-9]+ bytes \(3[0-9]\.[0-9]+ GiB = 1 thread"):
        esm_released.merge(base, models, stats=stats, esd_route="gram", memory_budget=1.0,
                           threads=1)


def test_randomized_refuses_identity_pad():
    base, models, _, stats, _ = make(300, 16, 64)
    with pytest.raises(libmerge.Error, match=r"'lm_head\.weight'.*randomized.*pad=identity"):
        merged(base, models, stats, esd_route="randomized", pad="identity")


def test_lapack_limit_names_tensor_and_auto_routes_around_it():
    """G for a 40000-row head needs a dsyevd workspace of 3.2e9 elements,
    past the 32-bit LAPACK integer: the forced gram route is refused before
    allocating, auto takes the output route (B is 8 x 40000) and matches the
    reference."""
    rng = np.random.default_rng(2)
    d_out, d_in = 40000, 8
    base = {NAME: np.zeros((d_out, d_in), np.float32)}
    taus = [(0.01 * rng.standard_normal((d_out, d_in))).astype(np.float32) for _ in range(2)]
    models = [{NAME: t} for t in taus]
    xs = [rng.standard_normal((50, d_in)).astype(np.float32) for _ in range(2)]
    stats = libmerge.Stats()
    for t, x in enumerate(xs):
        stats.observe(t, NAME, x)
    with pytest.raises(libmerge.Error, match=r"'lm_head\.weight' \(40000 x 8\).*LAPACK"):
        esm_released.merge(base, models, stats=stats, esd_route="gram", memory_budget=100.0)
    out = esm_released.merge(base, models, stats=stats, layer_scaling=False)[NAME]
    want = ref.esm_layer(taus, xs, keep_rank=True)
    assert rel(out.astype(np.float64), want) <= 1e-4
