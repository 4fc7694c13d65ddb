"""Weights stored [in, out] (GPT-2 Conv1D, lm_plan_set_transposed): merging
the transposed checkpoint with the tensor flagged must give exactly the
transpose of merging the usual [out, in] checkpoint — for every strategy
whose result depends on the orientation (ESM and purification with
activation statistics keyed by input dimension, the SVD family, KnOTS)
and for the elementwise ones. The same numbers flow through the same
arithmetic, so the comparison is bit-exact."""
import numpy as np
import pytest

import libmerge

RNG = np.random.default_rng(23)
T = 3
CONV = "transformer.h.0.attn.c_attn.weight"      # [out, in] = (24, 16) as usual
OTHER = "transformer.h.0.mlp.dense.weight"       # (20, 16), not Conv1D


def models():
    base = {CONV: (0.1 * RNG.standard_normal((24, 16))).astype(np.float32),
            OTHER: (0.1 * RNG.standard_normal((20, 16))).astype(np.float32),
            "transformer.ln_f.bias": np.zeros(16, np.float32)}
    fts = [{k: (v + 0.05 * RNG.standard_normal(v.shape)).astype(np.float32)
            for k, v in base.items()} for _ in range(T)]
    stats = libmerge.Stats()
    for t in range(T):
        for k in (CONV, OTHER):
            x = (RNG.standard_normal((48, 16)) * 0.85 ** np.arange(16)).astype(np.float32)
            stats.observe(t, k, x)
    return base, fts, stats


def stored(m):
    """The checkpoint as GPT-2 stores it: CONV as [in, out]."""
    return {k: (np.ascontiguousarray(v.T) if k == CONV else v) for k, v in m.items()}


@pytest.mark.parametrize("method,params,with_stats", [
    ("esm", {}, True),
    ("tsv", {}, False),
    ("iso_c", {}, False),
    ("iso_cts", {}, False),
    ("knots", {}, False),
    ("ties", {"density": 0.5}, False),
    ("task_arithmetic", {"lambda": 0.7}, False),
])
def test_transposed_layout_is_the_transpose(method, params, with_stats):
    base, fts, stats = models()
    kw = dict(params, stats=stats if with_stats else None, seed=1)
    usual = libmerge.merge(method, base, fts, **kw)
    got = libmerge.merge(method, stored(base), [stored(m) for m in fts],
                         transposed=[CONV], **kw)
    assert got[CONV].shape == (16, 24)
    np.testing.assert_array_equal(got[CONV], usual[CONV].T)
    np.testing.assert_array_equal(got[OTHER], usual[OTHER])


def test_purify_sees_the_usual_layout():
    base, fts, stats = models()
    opts = {"keep": 0.9}
    usual = libmerge.merge("task_arithmetic", base, fts, stats=stats, purify=dict(opts))
    got = libmerge.merge("task_arithmetic", stored(base), [stored(m) for m in fts],
                         stats=stats, purify=dict(opts), transposed=[CONV])
    np.testing.assert_array_equal(got[CONV], usual[CONV].T)


def test_bad_transposed_names():
    base, fts, _ = models()
    with pytest.raises(libmerge.NotFoundError, match="c_proj"):
        libmerge.merge("task_arithmetic", base, fts, transposed=["transformer.h.0.attn.c_proj.weight"])
    with pytest.raises(libmerge.ShapeError, match="ln_f"):
        libmerge.merge("task_arithmetic", base, fts, transposed=["transformer.ln_f.bias"])


def test_lmerge_flags_gpt2_conv1d(tmp_path):
    """`lmerge run` on a GPT-2 checkpoint (config.json model_type gpt2)
    merges its Conv1D weights as [out, in]: equal to merging the usual
    layout in Python and transposing."""
    import json
    import os
    import subprocess
    import st_format
    base, fts, _ = models()
    dirs = []
    for i, m in enumerate([base] + fts):
        d = tmp_path / ("m%d" % i)
        d.mkdir()
        st_format.write(d / "model.safetensors", stored(m))
        (d / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
        dirs.append(d)
    cfg = tmp_path / "merge.yaml"
    cfg.write_text("merge_method: tsv\nbase_model: %s\nmodels:\n%s" % (
        dirs[0], "".join("  - model: %s\n" % d for d in dirs[1:])))
    r = subprocess.run([os.environ["LIBMERGE_LMERGE"], "run", cfg, "-o", tmp_path / "out"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "Conv1D" in r.stderr
    got = st_format.read(tmp_path / "out" / "model.safetensors")[0]
    usual = libmerge.merge("tsv", base, fts)
    np.testing.assert_array_equal(got[CONV], usual[CONV].T)
