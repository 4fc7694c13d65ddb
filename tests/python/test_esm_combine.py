"""esm combine="spectral" (not in the released code; docs/methods/esm.md,
"Spectral combine"): ESM's essential basis with TSV-M's form, the
directions' weights (A_cat's row norms) kept between the orthogonalised
bases, against reference.esm_layer(combine="spectral") (max |diff| <= 1e-4
* max |ref|), and against a first-principles case: one task whose inputs
have X^T X = I, where the essential subspace is the task vector's left
singular basis, A = P^T dW has rows sigma_i v_i^T, and the spectral merge
with the scalings off must be the rank-k truncated SVD of dW."""
import numpy as np
import pytest

import libmerge
import esm_released
import reference as ref
from test_esm import check, make, reference_model

OFF = dict(inter_task=False, eig_weighting=False, inter_dim=False, layer_scaling=False)


@pytest.mark.parametrize("opts", [{}, OFF, {"inter_dim": False}])
def test_spectral_matches_reference(opts):
    base, models, xs, stats = make()
    out = esm_released.merge(base, models, stats=stats, alpha=0.7, combine="spectral", **opts)
    check(out, base, reference_model(base, models, xs, alpha=0.7, combine="spectral", **opts))
    polar = esm_released.merge(base, models, stats=stats, alpha=0.7, **opts)
    assert not np.allclose(out["blocks.0.fc.weight"], polar["blocks.0.fc.weight"], atol=1e-4)


def test_one_task_with_white_inputs_is_the_truncated_svd():
    rng = np.random.default_rng(4)
    d_out, d_in, k = 12, 10, 4
    q, _ = np.linalg.qr(rng.standard_normal((64, d_in)))  # X^T X = I
    base = {"w": np.zeros((d_out, d_in), np.float32)}
    tau = (rng.standard_normal((d_out, d_in)) * 0.7 ** np.arange(d_in)).astype(np.float32)
    stats = libmerge.Stats()
    stats.observe(0, "w", q.astype(np.float32))
    out = esm_released.merge(base, [{"w": tau}], stats=stats, combine="spectral", rank=k, **OFF)
    u, s, vt = np.linalg.svd(tau.astype(np.float64))
    want = (u[:, :k] * s[:k]) @ vt[:k]
    err = np.abs(out["w"] - want).max() / np.abs(want).max()
    assert err <= 1e-4, err


def test_polar_is_the_released_default_bit_for_bit():
    base, models, xs, stats = make()
    a = esm_released.merge(base, models, stats=stats)
    b = esm_released.merge(base, models, stats=stats, combine="polar")
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_unknown_combine_is_refused():
    base, models, xs, stats = make()
    with pytest.raises(libmerge.Error):
        esm_released.merge(base, models, stats=stats, combine="isotropic")
