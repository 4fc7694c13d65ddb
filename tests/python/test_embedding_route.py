"""`embedding_route` of the SVD family (tsv, iso_c, iso_cts, knots): which
tensors count as embeddings (built-in names, `embedding_pattern`,
`embedding_rows`) and what each route gives them.

References, written from the methods' definitions and the official code
(github.com/AntoAndGar/task_singular_vectors TSVM_utils.py,
github.com/danielm1405/iso-merging iso.py: tensors they do not SVD get the
mean of the task vectors): `mean` is alpha * sum_t w_t tau_t / sum_t w_t
(knots: lambda * sum_t w_t tau_t), compared with 1e-6 relative tolerance
(f32 output); every tensor that is not an embedding is bit-identical to
the default route's; `randomized` (tsv) is within 1e-3 relative of the
exact SVD on spectra that decay (the randomized path's documented
accuracy, docs/methods/svd_family.md)."""
import numpy as np
import pytest

import libmerge

EMB, HEAD, MLP, BIG, NORM = ("model.embed_tokens.weight", "lm_head.weight",
                             "model.layers.0.mlp.up_proj.weight", "big.weight",
                             "model.norm.weight")


def decaying(rng, m, n, scale):
    """A task vector whose singular values decay (0.85^i), as fine-tuning
    updates do."""
    k = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal((m, k)))
    v, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return scale * (u * 0.85 ** np.arange(k)) @ v.T


def models(seed, T=2):
    rng = np.random.default_rng(seed)
    shapes = {EMB: (400, 64), HEAD: (400, 64), MLP: (96, 64), BIG: (320, 48), NORM: (64,)}
    base = {k: (0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
    fts = []
    for _ in range(T):
        fts.append({k: (base[k] + (decaying(rng, *s, 0.3) if len(s) == 2
                                   else 0.01 * rng.standard_normal(s))).astype(np.float32)
                    for k, s in shapes.items()})
    return base, fts


def mean_rule(base, fts, name, w, scale, divide=True):
    tau = sum(wi * (m[name] - base[name]).astype(np.float64) for wi, m in zip(w, fts))
    return base[name] + scale * tau / (sum(w) if divide else 1.0)


@pytest.mark.parametrize("method,scale_key", [("tsv", "alpha"), ("iso_c", "alpha"),
                                              ("iso_cts", "alpha"), ("knots", "lambda")])
def test_mean_route_by_name(method, scale_key):
    base, fts = models(1)
    w = [1.0, 0.5]
    params = {scale_key: 0.7}
    svd = libmerge.merge(method, base, fts, weights=w, **params)
    mean = libmerge.merge(method, base, fts, weights=w, embedding_route="mean", **params)
    for name in (EMB, HEAD):
        want = mean_rule(base, fts, name, w, 0.7, divide=method != "knots")
        np.testing.assert_allclose(mean[name], want, rtol=1e-6, atol=1e-7)
        assert not np.array_equal(mean[name], svd[name])
    for name in (MLP, BIG, NORM):
        np.testing.assert_array_equal(mean[name], svd[name])


def test_pattern_and_rows_choose_the_tensors():
    base, fts = models(2)
    svd = libmerge.merge("iso_c", base, fts)
    # A pattern replaces the built-in names.
    by_pattern = libmerge.merge("iso_c", base, fts, embedding_route="mean",
                                embedding_pattern=r"mlp\.up_proj")
    np.testing.assert_allclose(by_pattern[MLP], mean_rule(base, fts, MLP, [1, 1], 1.0),
                               rtol=1e-6, atol=1e-7)
    for name in (EMB, HEAD, BIG):
        np.testing.assert_array_equal(by_pattern[name], svd[name])
    # Rows: every 2-D tensor with >= 320 rows, besides the named ones.
    by_rows = libmerge.merge("iso_c", base, fts, embedding_route="mean", embedding_rows=320)
    for name in (EMB, HEAD, BIG):
        np.testing.assert_allclose(by_rows[name], mean_rule(base, fts, name, [1, 1], 1.0),
                                   rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(by_rows[MLP], svd[MLP])


def test_randomized_route_tsv():
    base, fts = models(3)
    exact = libmerge.merge("tsv", base, fts)
    rnd = libmerge.merge("tsv", base, fts, embedding_route="randomized")
    everywhere = libmerge.merge("tsv", base, fts, randomized=True)
    for name in (EMB, HEAD):
        d_exact = exact[name].astype(np.float64) - base[name]
        d_rnd = rnd[name].astype(np.float64) - base[name]
        assert np.abs(d_rnd - d_exact).max() <= 1e-3 * np.abs(d_exact).max()
        # The route is tsv's randomized path for these tensors (which falls
        # back to the exact ladder when its a-posteriori check fails).
        np.testing.assert_array_equal(rnd[name], everywhere[name])
    for name in (MLP, BIG, NORM):
        np.testing.assert_array_equal(rnd[name], exact[name])


def test_bad_settings_are_refused():
    base, fts = models(4)
    with pytest.raises(libmerge.Error, match="embedding_pattern"):
        libmerge.merge("tsv", base, fts, embedding_route="mean", embedding_pattern="(")
    with pytest.raises(libmerge.Error, match="svd"):
        libmerge.merge("iso_c", base, fts, embedding_route="randomized")
