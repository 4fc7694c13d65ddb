"""Tied embeddings merge once: a state dict whose lm_head is the embedding
(one array under two names, as torch's tied weights) and model files that
store identical copies (through `lmerge run`) give an lm_head byte-equal
to the merged embedding under DARE, whose masks are drawn per tensor name;
and that embedding equals the merge of a model without any lm_head (so
the tie changes nothing but the alias). Untied copies stay separate."""
import os
import subprocess

import numpy as np

import libmerge
import st_format

LMERGE = os.environ.get("LIBMERGE_LMERGE", "lmerge")
RNG = np.random.default_rng(17)
EMB, HEAD, NORM = "model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"


def tied_model():
    e = RNG.standard_normal((32, 8)).astype(np.float32)
    return {EMB: e, NORM: RNG.standard_normal(8).astype(np.float32), HEAD: e}


def without_head(m):
    return {k: v for k, v in m.items() if k != HEAD}


def test_state_dict_with_shared_arrays():
    base, fts = tied_model(), [tied_model(), tied_model()]
    merged = libmerge.merge("dare_linear", base, fts, density=0.5, seed=3)
    np.testing.assert_array_equal(merged[HEAD], merged[EMB])
    alone = libmerge.merge("dare_linear", without_head(base),
                           [without_head(m) for m in fts], density=0.5, seed=3)
    np.testing.assert_array_equal(merged[EMB], alone[EMB])


def test_untied_copies_are_merged_separately():
    base, fts = tied_model(), [tied_model(), tied_model()]
    fts[1][HEAD] = fts[1][HEAD].copy()  # this fine-tune stores its own copy
    merged = libmerge.merge("dare_linear", base, fts, density=0.5, seed=3)
    assert not np.array_equal(merged[HEAD], merged[EMB])


def run_files(tmp_path, models):
    paths = []
    for i, m in enumerate(models):
        p = tmp_path / ("m%d.safetensors" % i)
        st_format.write(p, {k: np.array(v) for k, v in m.items()})
        paths.append(p)
    cfg = tmp_path / "merge.yaml"
    cfg.write_text("merge_method: dare_linear\nbase_model: %s\nmodels:\n%s"
                   "parameters: {density: 0.5}\n" % (
                       paths[0], "".join("  - model: %s\n" % p for p in paths[1:])))
    out = tmp_path / "out"
    r = subprocess.run([LMERGE, "run", cfg, "-o", out], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return st_format.read(out / "model.safetensors")[0], r.stderr


def test_lmerge_ties_identical_copies(tmp_path):
    got, err = run_files(tmp_path, [tied_model(), tied_model(), tied_model()])
    np.testing.assert_array_equal(got[HEAD], got[EMB])
    assert "'lm_head.weight' is tied to 'model.embed_tokens.weight'" in err


def test_lmerge_keeps_different_heads_apart(tmp_path):
    models = [tied_model(), tied_model(), tied_model()]
    models[2][HEAD] = models[2][HEAD] + 0.01
    got, err = run_files(tmp_path, models)
    assert "tied" not in err
    assert not np.array_equal(got[HEAD], got[EMB])
