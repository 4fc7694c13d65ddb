"""`scope="model"` for ties and knots against references written from the
official code, not from ours:

- TIES (github.com/prateeksr/TIES-Merging, src/ties_minimal.ipynb and
  utils): every task vector flattened over the whole model into one row,
  topk_values_mask (k = d - int(d * K), torch.kthvalue of |x|, keep
  |x| >= kth), resolve_sign (sign of the column sum, zeros -> the sign of
  the sum of signs), disjoint_merge "mean" (agreeing entries / their
  count), times lambda.
- KnOTS (github.com/gstoica27/KnOTS, task_merger.py and masking_ops.py):
  per matrix, the SVD of [dW_1 | ... | dW_T] in f64 keeping s > 1e-5, cast
  to f32, blocks diag(s) V_t; every matrix's blocks of a task flattened
  together, the same mask, sign and disjoint mean, then U @ merged.

Tolerances: ties max |diff| <= 1e-6 * max |ref| (f32 storage of sums of at
most T values); knots <= 1e-4 * max |ref| (as test_knots.py: two LAPACKs'
SVDs in f64, blocks rounded to f32)."""
import os
import subprocess

import numpy as np
import pytest
import torch

import libmerge
import st_format

LMERGE = os.environ.get("LIBMERGE_LMERGE", "lmerge")


# --- reference, from the official code ------------------------------------

def topk_values_mask(M, K):
    """masking_ops.py / ties utils: rows of M are tasks."""
    M = torch.as_tensor(M)
    if K >= 1:
        return torch.ones_like(M, dtype=torch.bool)
    n, d = M.shape
    k = d - int(d * K)
    kth, _ = M.abs().kthvalue(k, dim=1, keepdim=True)
    return M.abs() >= kth


def resolve_sign(T):
    sign = torch.sign(T.sum(dim=0))
    sign[sign == 0] = torch.sign(sign.sum())
    return sign


def disjoint_mean(T, sign):
    keep = torch.where(sign.unsqueeze(0) > 0, T > 0, T < 0)
    sel = T * keep
    return sel.sum(dim=0) / torch.clamp((sel != 0).sum(dim=0).float(), min=1)


def ties_reference(base, models, density, lam):
    names = sorted(base)
    flat = torch.stack([torch.cat([torch.from_numpy(
        (m[k].astype(np.float64) - base[k]).reshape(-1)) for k in names])
        for m in models])
    pruned = flat * topk_values_mask(flat, density)
    merged = lam * disjoint_mean(pruned, resolve_sign(pruned))
    out, at = {}, 0
    for k in names:
        out[k] = merged[at:at + base[k].size].numpy().reshape(base[k].shape)
        at += base[k].size
    return out


def knots_reference(base, models, density, lam, weights):
    mats = [k for k in sorted(base) if base[k].ndim == 2]
    svd = {}
    for k in mats:
        X = np.concatenate([(m[k] - base[k]).astype(np.float64) for m in models], axis=1)
        U, s, V = np.linalg.svd(X, full_matrices=False)
        keep = s > 1e-5
        U, s, V = (a.astype(np.float32) for a in (U[:, keep], s[keep], V[keep]))
        n = base[k].shape[1]
        svd[k] = (U, [s[:, None] * V[:, t * n:(t + 1) * n] for t in range(len(models))])
    reps = torch.stack([torch.cat([torch.from_numpy(svd[k][1][t].reshape(-1)) for k in mats])
                        for t in range(len(models))]).double()
    masked = reps * topk_values_mask(reps, density)
    sign = resolve_sign(masked)
    masked = masked * torch.where(sign.unsqueeze(0) > 0, masked > 0, masked < 0)
    masked = masked * torch.tensor(weights, dtype=torch.float64)[:, None]
    merged = masked.sum(dim=0) / torch.clamp((masked != 0).sum(dim=0).double(), min=1)
    out, at = {}, 0
    for k in mats:
        U, blocks = svd[k]
        size = blocks[0].size
        out[k] = lam * (U.astype(np.float64) @ merged[at:at + size].numpy().reshape(blocks[0].shape))
        at += size
    for k in base:
        if base[k].ndim != 2:
            out[k] = lam * sum(w * (m[k] - base[k]).astype(np.float64)
                               for w, m in zip(weights, models))
    return out


# --- models -----------------------------------------------------------------

def mixed_scale_models(seed, T=3):
    """Tensors of very different magnitudes, so that a whole-model trim
    keeps most of the large one and little of the small ones, unlike a
    per-tensor trim."""
    rng = np.random.default_rng(seed)
    shapes = {"a.weight": (24, 16), "b.weight": (8, 40), "c.bias": (24,), "d.weight": (5, 7, 3)}
    scale = {"a.weight": 1.0, "b.weight": 0.1, "c.bias": 3.0, "d.weight": 0.01}
    base = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    models = [{k: (base[k] + scale[k] * rng.standard_normal(base[k].shape)).astype(np.float32)
               for k in base} for _ in range(T)]
    return base, models


def exact_delta_models(seed):
    """Task vectors exactly representable (base 0), with many equal
    magnitudes so that ties at the threshold matter (the official code keeps
    every one); task t's values are integers times 64^-t, so no column sum
    is exactly zero unless every entry is."""
    rng = np.random.default_rng(seed)
    shapes = {"x.weight": (16, 12), "y.weight": (30,), "z.weight": (6, 6)}
    base = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    models = [{k: (rng.integers(-6, 7, size=s) * 64.0 ** -t).astype(np.float32)
               for k, s in shapes.items()} for t in range(3)]
    return base, models


def max_rel(got, want):
    scale = max(np.abs(v).max() for v in want.values())
    return max(np.abs(got[k].astype(np.float64) - want[k]).max() for k in want) / scale


# --- ties ---------------------------------------------------------------------

@pytest.mark.parametrize("density", [0.2, 0.55])
def test_ties_model_scope_matches_official(density):
    base, models = mixed_scale_models(1)
    want = ties_reference(base, models, density, 0.7)
    out = libmerge.merge("ties", base, models, scope="model", density=density,
                         **{"lambda": 0.7})
    got = {k: out[k].astype(np.float64) - base[k] for k in base}
    assert max_rel(got, want) <= 1e-6
    per_tensor = libmerge.merge("ties", base, models, density=density, **{"lambda": 0.7})
    assert max(np.abs(per_tensor[k] - out[k]).max() for k in base) > 1e-2


def test_ties_model_scope_keeps_every_tie_at_the_threshold():
    base, models = exact_delta_models(2)
    want = ties_reference(base, models, 0.3, 1.0)
    out = libmerge.merge("ties", base, models, scope="model", density=0.3)
    assert max_rel(out, want) <= 1e-6
    # The data exercises the rule: ties at the threshold make the official
    # mask keep more than int(d * density) entries of task 0.
    flat = np.concatenate([models[0][k].reshape(-1) for k in sorted(base)])[None, :]
    assert topk_values_mask(flat, 0.3).sum() > int(flat.size * 0.3)


def test_ties_model_scope_threads_and_per_tensor_density():
    base, models = mixed_scale_models(3)
    one = libmerge.merge("ties", base, models, scope="model", density=0.3, threads=1)
    many = libmerge.merge("ties", base, models, scope="model", density=0.3, threads=4)
    for k in base:
        np.testing.assert_array_equal(one[k], many[k])
    with pytest.raises(libmerge.Error, match="b.weight"):
        libmerge.merge("ties", base, models, scope="model",
                       density={"b.weight": 0.5})


def test_ties_model_scope_through_lmerge_run(tmp_path):
    """The file sink path: `scope: model` in a config gives the library's
    numbers (mergekit's ties with its defaults otherwise)."""
    base, models = mixed_scale_models(4, T=2)
    paths = []
    for i, m in enumerate([base] + models):
        p = tmp_path / ("m%d.safetensors" % i)
        st_format.write(p, m)
        paths.append(p)
    cfg = tmp_path / "merge.yaml"
    cfg.write_text("merge_method: ties\nbase_model: %s\nmodels:\n%s"
                   "parameters: {density: 0.25, scope: model}\n" % (
                       paths[0], "".join("  - model: %s\n    parameters: {weight: 1.0}\n" % p
                                         for p in paths[1:])))
    r = subprocess.run([LMERGE, "run", cfg, "-o", tmp_path / "out"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = st_format.read(tmp_path / "out" / "model.safetensors")[0]
    want = libmerge.merge("ties", base, models, scope="model", density=0.25,
                          weights_in_election=True, divide="weights")
    for k in base:
        np.testing.assert_array_equal(got[k], want[k])


# --- knots --------------------------------------------------------------------

def lora_like_models(seed, T=3, R=3):
    rng = np.random.default_rng(seed)
    shapes = {"q.weight": (20, 16), "v.weight": (12, 24), "q.bias": (20,)}
    scale = {"q.weight": 1.0, "v.weight": 0.05}
    base = {k: (0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
    models = []
    for _ in range(T):
        m = {}
        for k, s in shapes.items():
            if len(s) == 2:
                d = scale[k] * rng.standard_normal((s[0], R)) @ rng.standard_normal((R, s[1]))
            else:
                d = 0.01 * rng.standard_normal(s)
            m[k] = (base[k] + d).astype(np.float32)
        models.append(m)
    return base, models


def test_knots_model_scope_matches_official():
    base, models = lora_like_models(5)
    want = knots_reference(base, models, 0.3, 0.6, [1.0, 1.0, 1.0])
    out = libmerge.merge("knots", base, models, scope="model", density=0.3,
                         **{"lambda": 0.6})
    got = {k: out[k].astype(np.float64) - base[k] for k in base}
    assert max_rel(got, want) <= 1e-4
    per_tensor = libmerge.merge("knots", base, models, density=0.3, **{"lambda": 0.6})
    assert np.abs(per_tensor["q.weight"] - out["q.weight"]).max() > 1e-3
