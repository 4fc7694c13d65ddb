"""Realistic checkpoints (issue 23 item 8): scaled-down Llama-3, Mistral
(bf16), Qwen2 (tied), Gemma (tied), GPT-2 (Conv1D, tied), Phi-3 (fused
projections) and ViT checkpoints with their exact tensor names, layouts
and config.json (realistic/archs.py), merged through `lmerge run` with
mergekit YAML configs, then loaded strictly by a torch forward pass written
here (realistic/forward.py).

Every strategy `lmerge methods` lists runs on GPT-2 and Llama-3 (sharded
base); a representative set on the others. Checks: the output loads into
the architecture's module (names and shapes exact), dtypes are the base's,
tied embeddings stay stored once (no lm_head where the source had none),
the forward pass is finite, and for linear / task arithmetic its logits
equal those of numpy-merged weights (f64) to 1e-5 of the largest logit
(f32 outputs) or 2e-2 (bf16 outputs: each weight rounded to 8 bits).
`test_forward_detects_layout_errors` shows the comparison is sensitive to
the faults it is there for (a transposed square Conv1D, an untied head)."""
import os
import subprocess

import numpy as np
import pytest
import torch

import libmerge
from realistic import archs, forward

LMERGE = os.environ.get("LIBMERGE_LMERGE", "lmerge")

# method -> (merge-wide parameters, per-model weights or None, how many fine-tunes)
METHODS = {
    "linear": ({}, [0.5, 0.3, 0.2], 3),
    "task_arithmetic": ({"lambda": 0.7}, [1.0, 0.5, 0.8], 3),
    "average": ({}, None, 3),
    "ties": ({"density": 0.5}, [1.0, 1.0, 1.0], 3),
    "dare_linear": ({"density": 0.5}, [1.0, 1.0, 1.0], 3),
    "dare_ties": ({"density": 0.5}, [1.0, 1.0, 1.0], 3),
    "tsv": ({}, None, 3),
    "iso_c": ({}, None, 3),
    "iso_cts": ({}, None, 3),
    "knots": ({}, None, 3),
    "esm": ({"alpha": 0.5}, None, 3),
    "slerp": ({"t": 0.4}, None, 1),
    "nuslerp": ({}, [0.6, 0.4], 2),
    "multislerp": ({}, [1.0, 1.0, 1.0], 3),
    "karcher": ({}, None, 3),
    "model_stock": ({}, None, 3),
    "nearswap": ({"t": 0.05}, None, 1),
    "arcee_fusion": ({}, None, 1),
    "passthrough": ({}, None, 1),
    "breadcrumbs": ({"density": 0.9, "gamma": 0.01}, [1.0, 1.0, 1.0], 3),
    "breadcrumbs_ties": ({"density": 0.9, "gamma": 0.01}, [1.0, 1.0, 1.0], 3),
    "della": ({"density": 0.5, "epsilon": 0.1}, [1.0, 1.0, 1.0], 3),
    "della_linear": ({"density": 0.5, "epsilon": 0.1}, [1.0, 1.0, 1.0], 3),
    "sce": ({"select_topk": 0.5}, None, 3),
    "ram": ({}, None, 3),
    "ramplus_tl": ({}, None, 3),
}
EVERY = ("gpt2", "llama3")
REPRESENTATIVE = ("linear", "task_arithmetic", "ties", "dare_linear", "tsv",
                  "iso_cts", "knots", "esm", "slerp")
CASES = ([(a, m) for a in EVERY for m in METHODS]
         + [(a, m) for a in archs.ARCHS if a not in EVERY for m in REPRESENTATIVE])


def lmerge_methods():
    r = subprocess.run([LMERGE, "methods"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in r.stdout.splitlines()
            if line and not line[0].isspace()}


def test_every_listed_strategy_is_exercised():
    """A strategy added to `lmerge methods` must get a row in METHODS (or,
    for LoRA-only strategies, a test of its own: nsc below)."""
    assert lmerge_methods() == set(METHODS) | {"nsc"}


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    root = tmp_path_factory.mktemp("realistic")
    return {a: archs.write_family(root, a) for a in archs.ARCHS}, root


def conv1d_hooks(model, stats, t):
    """GPT-2's Conv1D is not an nn.Linear, so collect_stats does not see
    it; its input rows are recorded here under the stored weight's name."""
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, forward.Conv1D):
            def hook(m, inp, out, name=name):
                x = inp[0].detach().reshape(-1, inp[0].shape[-1])
                stats.observe(t, name + ".weight", x.numpy().astype(np.float32))
            handles.append(mod.register_forward_hook(hook))
    return handles


@pytest.fixture(scope="module")
def stats_files(families):
    """One statistics file per architecture: every fine-tune's own forward
    on its own inputs, hooked by libmerge.torch.collect_stats."""
    import libmerge.torch
    fams, root = families
    out = {}
    for arch, (_, fts) in fams.items():
        cfg = archs.CONFIGS[arch]
        stats = libmerge.Stats()
        for t, d in enumerate(fts):
            m = forward.load(cfg, archs.read_float(d), torch.float32)
            hs = conv1d_hooks(m, stats, t)
            x = forward.inputs(cfg, 100 + t, batch=4)
            batch = x.float() if x.is_floating_point() else x
            libmerge.torch.collect_stats(m, [batch], stats, model_index=t)
            for h in hs:
                h.remove()
        path = os.path.join(str(root), arch + ".lmstats")
        stats.save(path)
        out[arch] = path
    return out


def config_text(method, base, fts, stats=None):
    params, weights, n = METHODS[method]
    models = fts[:n]
    lines = ["merge_method: %s" % method]
    if method not in ("linear", "passthrough"):  # these take no base
        lines.append("base_model: %s" % base)
    lines.append("models:")
    for i, d in enumerate(models):
        lines.append("  - model: %s" % d)
        if weights:
            lines.append("    parameters: {weight: %r}" % weights[i])
    if params:
        lines.append("parameters: {%s}" % ", ".join("%s: %r" % kv for kv in params.items()))
    if stats:
        lines.append("stats: %s" % stats)
    return "\n".join(lines) + "\n"


def run(tmp_path, text):
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(text)
    out = tmp_path / "out"
    r = subprocess.run([LMERGE, "run", str(cfg), "-o", str(out), "--threads", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return str(out), r.stderr


def reference(method, base, fts):
    """numpy (f64) merged weights of linear / task arithmetic, from the
    stored values: mergekit's definitions (linear: weighted mean of the
    models; task_arithmetic: base + lambda * sum w_t (ft_t - base))."""
    params, weights, n = METHODS[method]
    models = fts[:n]
    out = {}
    for k in base:
        if method == "linear":
            out[k] = sum(w * m[k].astype(np.float64) for w, m in zip(weights, models)) / sum(weights)
        else:
            tv = sum(w * (m[k].astype(np.float64) - base[k]) for w, m in zip(weights, models))
            out[k] = base[k] + params["lambda"] * tv
    return out


def logits(arch, tensors, seed=7):
    cfg = archs.CONFIGS[arch]
    with torch.no_grad():
        return forward.load(cfg, tensors)(forward.inputs(cfg, seed)).numpy()


def tolerance(arch):
    return 2e-2 if archs.CONFIGS[arch]["torch_dtype"] == "bfloat16" else 1e-5


@pytest.mark.parametrize("arch,method", CASES)
def test_merge_loads_and_runs(arch, method, families, stats_files, tmp_path):
    fams, _ = families
    base_dir, ft_dirs = fams[arch]
    stats = stats_files[arch] if method == "esm" else None
    out, err = run(tmp_path, config_text(method, base_dir, ft_dirs, stats))

    # names, shapes and dtypes as the base stored them; a tied head stays
    # absent (Qwen2, Gemma, GPT-2 store the embedding once)
    base_dtypes = archs.header_dtypes(base_dir)
    assert archs.header_dtypes(out) == base_dtypes
    merged = archs.read_float(out)
    base = archs.read_float(base_dir)
    assert {k: v.shape for k, v in merged.items()} == {k: v.shape for k, v in base.items()}
    if archs.CONFIGS[arch].get("tie_word_embeddings"):
        assert "lm_head.weight" not in merged
    if arch == "gpt2":
        assert "Conv1D" in err

    y = logits(arch, merged)           # strict load: a misnamed tensor fails here
    assert np.isfinite(y).all()
    fts = [archs.read_float(d) for d in ft_dirs]
    if method in ("linear", "task_arithmetic"):
        ref = logits(arch, reference(method, base, fts))
        err_rel = np.abs(y - ref).max() / np.abs(ref).max()
        assert err_rel <= tolerance(arch), err_rel
    elif method == "passthrough":       # one model, copied unchanged
        for k, v in merged.items():
            np.testing.assert_array_equal(v, fts[0][k])
    else:
        # the merge did something: not the base's output
        assert np.abs(y - logits(arch, base)).max() > 1e-4


def test_forward_detects_layout_errors(families, tmp_path):
    """The checks fail on the faults they are there to catch: GPT-2's
    square attn.c_proj written [out, in] instead of [in, out] diverges from
    the reference far beyond the tolerance, and an lm_head written next to
    a tied embedding (an untied output) does not load."""
    fams, _ = families
    base_dir, ft_dirs = fams["gpt2"]
    out, _ = run(tmp_path, config_text("task_arithmetic", base_dir, ft_dirs))
    merged = archs.read_float(out)
    ref = logits("gpt2", reference("task_arithmetic", archs.read_float(base_dir),
                                   [archs.read_float(d) for d in ft_dirs]))
    name = "transformer.h.0.attn.c_proj.weight"
    assert merged[name].shape[0] == merged[name].shape[1]
    bad = dict(merged, **{name: merged[name].T})
    assert np.abs(logits("gpt2", bad) - ref).max() / np.abs(ref).max() > 100 * tolerance("gpt2")

    untied = dict(merged, **{"lm_head.weight": merged["transformer.wte.weight"]})
    with pytest.raises(RuntimeError, match="lm_head"):
        logits("gpt2", untied)


@pytest.mark.parametrize("out_dtype,want,tol", [(None, "BF16", 2e-2), ("float32", "F32", 1e-5)])
def test_bf16_base_with_f32_finetunes(out_dtype, want, tol, families, tmp_path):
    """Issue 23's mixed-dtype bullet on a real layout: Mistral's bf16 base
    with fine-tunes saved in f32 (their own config says float32). The
    output takes the base's dtype unless `dtype` says otherwise, loads into
    the Mistral module, and its task-arithmetic logits match numpy's
    (tolerance as above: bf16 rounding of every weight, or f32)."""
    fams, root = families
    base_dir, ft_dirs = fams["mistral"]
    f32_dirs = []
    for i, d in enumerate(ft_dirs):
        p = os.path.join(str(root), "mistral_f32_%d" % i)
        if not os.path.exists(p):
            archs.write_checkpoint(p, "mistral", archs.read_float(d), dtype="float32")
        f32_dirs.append(p)
    assert set(archs.header_dtypes(f32_dirs[0]).values()) == {"F32"}
    text = config_text("task_arithmetic", base_dir, f32_dirs)
    if out_dtype:
        text += "dtype: %s\n" % out_dtype
    out, _ = run(tmp_path, text)
    assert set(archs.header_dtypes(out).values()) == {want}
    merged = archs.read_float(out)
    ref = logits("mistral", reference("task_arithmetic", archs.read_float(base_dir),
                                      [archs.read_float(d) for d in f32_dirs]))
    y = logits("mistral", merged)
    assert np.abs(y - ref).max() / np.abs(ref).max() <= tol


@pytest.mark.parametrize("arch", sorted(archs.LORA_TARGETS))
def test_nsc_lora_adapters(arch, families, tmp_path):
    """`nsc` merges LoRA adapters, so it gets PEFT adapter directories
    (GPT-2's with fan_in_fan_out: true on its Conv1D weights) and an
    explicit lambda: base + lambda * sum_k (alpha / r) B_k A_k, in the
    stored layout. The output loads into the architecture's module and its
    logits match numpy's merged weights to 1e-5 of the largest logit."""
    fams, root = families
    base_dir, _ = fams[arch]
    base = archs.read_float(base_dir)
    dirs, deltas = archs.write_adapters(tmp_path, arch, base)
    lam = 0.7
    text = "merge_method: nsc\nbase_model: %s\nmodels:\n%sparameters: {lambda: %r}\n" % (
        base_dir, "".join("  - model: %s\n" % d for d in dirs), lam)
    out, _ = run(tmp_path, text)
    merged = archs.read_float(out)
    assert archs.header_dtypes(out) == archs.header_dtypes(base_dir)
    want = {k: v.astype(np.float64) + lam * sum(d.get(k, 0.0) for d in deltas)
            for k, v in base.items()}
    assert any(k in deltas[0] for k in want)
    y, ref = logits(arch, merged), logits(arch, want)
    assert np.abs(y - ref).max() / np.abs(ref).max() <= tolerance(arch)
    assert np.abs(ref - logits(arch, base)).max() > 1e-3   # the adapters matter
