"""esm against reference.esm_layer, a numpy implementation of the released
algorithm that takes the SVD of the output shift dO = X dW^T (the library
uses the Gram route dW (X^T X) dW^T from accumulated statistics), plus the
routing, alpha and layer-scaling rules. Tolerance: max |diff| <= 1e-4 *
max |ref|."""
import re

import numpy as np
import pytest

import libmerge
import reference as ref

T, D_OUT, D_IN = 4, 48, 40
RNG = np.random.default_rng(21)
LAYERS = ["blocks.0.fc.weight", "blocks.1.fc.weight", "blocks.0.proj.weight"]


def make(n_rows=160, shapes=None):
    shapes = shapes or {name: (D_OUT, D_IN) for name in LAYERS}
    base = {k: (0.05 * RNG.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
    base["blocks.0.norm.bias"] = np.zeros(D_IN, np.float32)
    base["head.weight"] = (0.05 * RNG.standard_normal((10, D_IN))).astype(np.float32)
    models, xs = [], []
    for t in range(T):
        m = {k: v + (RNG.standard_normal((v.shape[0], 6)) @ RNG.standard_normal((6, v.shape[-1])) * 0.02
                     + 0.001 * RNG.standard_normal(v.shape)).astype(np.float32)
             if v.ndim == 2 else v + 0.01 * RNG.standard_normal(v.shape).astype(np.float32)
             for k, v in base.items()}
        models.append(m)
        # Inputs with a decaying spectrum, as real activations have.
        xs.append({k: (RNG.standard_normal((n_rows, s[1])) * 0.9 ** np.arange(s[1])).astype(np.float32)
                   for k, s in shapes.items()})
    stats = libmerge.Stats()
    for t in range(T):
        for k in shapes:
            stats.observe(t, k, xs[t][k])
    return base, models, xs, stats


def taus(base, models, key):
    return [m[key] - base[key] for m in models]


def group(name):
    return re.sub(r"(^|\.)\d+(?=\.|$)", r"\1#", name)


def reference_model(base, models, xs, alpha=1.0, layer_scaling=True, esd=LAYERS, **opts):
    """Generic preset: ESD for layers with stats, TSV for other matrices,
    mean elsewhere; alpha everywhere; layer scaling over ESD/TSV tensors
    grouped by name with indices removed."""
    merged = {}
    for key in base:
        tv = taus(base, models, key)
        if key in esd:
            merged[key] = ref.esm_layer(tv, [x[key] for x in xs], **opts)
        elif base[key].ndim == 2:
            merged[key] = ref.tsv(tv)
        else:
            merged[key] = np.mean(np.stack(tv).astype(np.float64), 0)
    if layer_scaling:
        mats = [k for k in merged if base[k].ndim == 2]
        norms = {k: np.linalg.norm(merged[k]) for k in mats}
        for k in mats:
            same = [norms[j] for j in mats if group(j) == group(k)]
            merged[k] = merged[k] * (norms[k] / np.mean(same)) ** 2
    return {k: alpha * v for k, v in merged.items()}


def check(out, base, want):
    for k, w in want.items():
        got = out[k].astype(np.float64) - base[k]
        err = np.abs(got - w).max() / np.abs(w).max()
        assert err <= 1e-4, (k, err)


def test_full_model_matches_released_algorithm():
    base, models, xs, stats = make()
    out = libmerge.merge("esm", base, models, stats=stats, alpha=0.7)
    check(out, base, reference_model(base, models, xs, alpha=0.7))


@pytest.mark.parametrize("switch", ["inter_task", "eig_weighting", "inter_dim", "layer_scaling"])
def test_each_ablation_switch(switch):
    base, models, xs, stats = make()
    on = libmerge.merge("esm", base, models, stats=stats)
    off = libmerge.merge("esm", base, models, stats=stats, **{switch: False})
    kw = {switch: False}
    check(off, base, reference_model(base, models, xs, **kw))
    assert not np.allclose(on["blocks.0.fc.weight"], off["blocks.0.fc.weight"])


def test_eig_power_and_rank():
    base, models, xs, stats = make()
    out = libmerge.merge("esm", base, models, stats=stats, eig_power=0.3, rank=5,
                         layer_scaling=False)
    check(out, base, reference_model(base, models, xs, layer_scaling=False,
                                     eig_power=0.3, k=5))


def test_fewer_rows_than_outputs_padding():
    base, models, xs, stats = make(n_rows=30)  # 30 < d_out = 48
    ident = libmerge.merge("esm", base, models, stats=stats, pad="identity", layer_scaling=False)
    check(ident, base, reference_model(base, models, xs, layer_scaling=False, pad_identity=True))
    comp = libmerge.merge("esm", base, models, stats=stats, layer_scaling=False)
    check(comp, base, reference_model(base, models, xs, layer_scaling=False))
    assert not np.allclose(ident["blocks.0.fc.weight"], comp["blocks.0.fc.weight"])


def test_sign_flip_invariance():
    base, models, xs, stats = make()
    ref.FLIP_RNG = np.random.default_rng(4)
    try:
        want = reference_model(base, models, xs)
    finally:
        ref.FLIP_RNG = None
    check(libmerge.merge("esm", base, models, stats=stats), base, want)


def test_missing_stats_for_a_forced_layer():
    base, models, xs, stats = make()
    with pytest.raises(libmerge.NotFoundError, match="head.weight.*task 0"):
        libmerge.merge("esm", base, models, stats=stats, esd_pattern=r"head\.weight$")


def test_clip_vit_preset_routing():
    prefix = "visual.transformer.resblocks.%d."
    shapes = {prefix % 0 + "attn.in_proj_weight": (D_OUT, D_IN),
              prefix % 1 + "attn.in_proj_weight": (D_OUT, D_IN),
              prefix % 0 + "attn.out_proj.weight": (D_IN, D_IN),
              prefix % 1 + "attn.out_proj.weight": (D_IN, D_IN)}
    base, models, xs, stats = make(shapes=shapes)
    base["text_projection"] = (0.05 * RNG.standard_normal((D_IN, 16))).astype(np.float32)
    for m in models:
        m["text_projection"] = base["text_projection"] + 0.01
    out = libmerge.merge("esm", base, models, stats=stats, preset="clip-vit", alpha=0.5)
    esd = [k for k in shapes if "in_proj" in k]
    merged = {}
    for k in base:
        tv = taus(base, models, k)
        if k in esd:
            merged[k] = ref.esm_layer(tv, [x[k] for x in xs])
        elif base[k].ndim == 2 and k != "text_projection":
            merged[k] = ref.tsv(tv)
        else:
            merged[k] = np.mean(np.stack(tv).astype(np.float64), 0)
    scaled = list(shapes)
    norms = {k: np.linalg.norm(merged[k]) for k in scaled}
    for k in scaled:
        same = [norms[j] for j in scaled if group(j) == group(k)]
        merged[k] = merged[k] * (norms[k] / np.mean(same)) ** 2
    for k in merged:
        if k in esd:
            merged[k] = 0.5 * merged[k]  # alpha only on ESD tensors
    check(out, base, merged)
