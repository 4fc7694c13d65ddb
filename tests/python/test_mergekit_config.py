"""mergekit configs through `lmerge run`: mergekit's six example configs
(examples/*.yml of github.com/arcee-ai/mergekit, re-typed in
tests/python/mergekit_examples/ with only the model names replaced) on
generated scaled-down Llama-style models, compared with the independent
evaluator mergekit_config_eval.py; the output folder as mergekit writes
it; and every config key lmerge refuses.

Tolerances: outputs written in f32 (--dtype f32) must be within 1e-5
(max abs diff) of the reference; outputs in the configs' float16 within
one float16 ulp of the reference rounded to float16, bfloat16 within one
bfloat16 ulp (lmerge computes in f32 and rounds once, mergekit computes in
the dtype itself).
"""
import json
import os
import re
import subprocess

import numpy as np
import pytest

import mergekit_config_eval as mk
import st_format

yaml = pytest.importorskip("yaml")

LMERGE = os.environ.get("LIBMERGE_LMERGE")
pytestmark = pytest.mark.skipif(not LMERGE, reason="LIBMERGE_LMERGE is not set")
EXAMPLES = os.path.join(os.path.dirname(__file__), "mergekit_examples")


def run(*args):
    return subprocess.run([LMERGE, *map(str, args)], capture_output=True, text=True)


def strategies():
    """Strategy name -> its parameter lines, from `lmerge methods`."""
    out, cur = {}, None
    for line in run("methods").stdout.splitlines():
        if line and not line.startswith(" "):
            cur = line.split()[0]
            out[cur] = ""
        elif cur:
            out[cur] += line + "\n"
    return out


def need(strategy, *params):
    have = strategies()
    if strategy not in have or any(p not in have[strategy] for p in params):
        pytest.skip("libmerge strategy %s%s is not in this build yet"
                    % (strategy, " with " + ", ".join(params) if params else ""))


def need_param(strategy, param, text):
    """Skip unless `lmerge methods` shows `param` of `strategy` with `text`
    (e.g. "per model") in its description line."""
    lines = strategies().get(strategy, "").splitlines()
    if not any(l.split()[:1] == [param] and text in l for l in lines):
        pytest.skip("libmerge strategy %s has no %s %s in this build yet"
                    % (strategy, param, text))


def write_model(d, tensors, n_layers, card=True):
    d.mkdir(parents=True)
    st_format.write(d / "model.safetensors", tensors)
    (d / "config.json").write_text(json.dumps(mk.llama_config(n_layers), indent=2))
    (d / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {}}}')
    (d / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    if card:
        (d / "README.md").write_text("# the input model's own card\n")


def family(tmp_path, names, base, n_layers, seed, hidden=8):
    """A base and fine-tunes of it, written as model directories; returns
    {reference: tensors} and {name in the example: path}."""
    rng = np.random.default_rng(seed)
    b = mk.llama(rng, n_layers, hidden=hidden)
    models, paths = {}, {}
    for i, n in enumerate(names):
        t = b if n == base else mk.llama(rng, n_layers, like=b, noise=0.1 + 0.05 * i)
        p = tmp_path / ("m%d" % i)
        write_model(p, t, n_layers)
        models[str(p)] = t
        paths[n] = str(p)
    return models, paths


def example(name, paths, tmp_path):
    """The example config with model names replaced by paths (longest
    names first, so no name is a prefix of another's replacement)."""
    text = open(os.path.join(EXAMPLES, name + ".yml")).read()
    for n in sorted(paths, key=len, reverse=True):
        text = re.sub(r"(?<![\w/.-])%s(?![\w/.-])" % re.escape(n), paths[n], text)
    cfg = tmp_path / (name + ".yml")
    cfg.write_text(text)
    return cfg, yaml.safe_load(text)


def check(cfg, parsed, models, tmp_path, out_name="out"):
    """Runs the config twice: as written (its float16) and with --dtype f32;
    both against the evaluator."""
    want = mk.evaluate(parsed, models)
    out32 = tmp_path / (out_name + "32")
    r = run("run", cfg, "-o", out32, "--dtype", "f32", "-q")
    assert r.returncode == 0, r.stderr
    got = st_format.read_dir(out32)
    assert sorted(got) == sorted(want)
    worst = max(float(np.max(np.abs(got[k].astype(np.float64) - want[k]))) for k in want)
    assert worst <= 1e-5, worst
    out = tmp_path / out_name
    r = run("run", cfg, "-o", out, "-q")
    assert r.returncode == 0, r.stderr
    got = st_format.read_dir(out)
    for k, v in want.items():
        if parsed.get("dtype") == "bfloat16":  # raw bits; one bf16 ulp
            g = (got[k].astype(np.uint32) << 16).view(np.float32).astype(np.float64)
            assert np.all(np.abs(g - v) <= np.abs(v) * 2.0**-7), k
            continue
        assert got[k].dtype == np.float16, k
        ref = v.astype(np.float16)
        ulp = np.spacing(np.abs(ref)).astype(np.float64)
        assert np.all(np.abs(got[k].astype(np.float64) - ref.astype(np.float64))
                      <= ulp), k
    return out, want


def test_example_linear(tmp_path):
    names = ["psmathur/orca_mini_v3_13b", "WizardLM/WizardLM-13B-V1.2",
             "garage-bAInd/Platypus2-13B"]
    models, paths = family(tmp_path, names, None, 4, 1)
    cfg, parsed = example("linear", paths, tmp_path)
    out, _ = check(cfg, parsed, models, tmp_path)
    # No base_model: the first model is the donor of config.json.
    conf = json.loads((out / "config.json").read_text())
    assert conf["torch_dtype"] == "float16"
    assert conf["num_hidden_layers"] == 4


def test_example_orcamini_platy_44layer(tmp_path):
    """passthrough of overlapping layer ranges: 24 + 20 = 44 layers,
    renumbered, config.json says so."""
    names = ["psmathur/orca_mini_v3_13b", "garage-bAInd/Platypus2-13B"]
    models, paths = family(tmp_path, names, None, 40, 2)
    cfg, parsed = example("orcamini-platy-44layer", paths, tmp_path)
    out, want = check(cfg, parsed, models, tmp_path)
    a, b = (models[paths[n]] for n in names)
    assert len([k for k in want if k.endswith("q_proj.weight")]) == 44
    np.testing.assert_array_equal(
        st_format.read_dir(tmp_path / "out32")["model.layers.24.mlp.up_proj.weight"],
        b["model.layers.20.mlp.up_proj.weight"])
    np.testing.assert_array_equal(
        st_format.read_dir(tmp_path / "out32")["model.layers.23.mlp.up_proj.weight"],
        a["model.layers.23.mlp.up_proj.weight"])
    conf = json.loads((out / "config.json").read_text())
    assert conf["num_hidden_layers"] == 44 and conf["torch_dtype"] == "float16"


def test_example_ties(tmp_path):
    need("ties", "divide", "none")
    need_param("ties", "density", "model")
    names = ["TheBloke/Llama-2-13B-fp16", "psmathur/orca_mini_v3_13b",
             "garage-bAInd/Platypus2-13B", "WizardLM/WizardMath-13B-V1.0"]
    # hidden 16: density 0.1 keeps int(0.1 * 16) = 1 entry of a norm
    # (mergekit refuses to keep none)
    models, paths = family(tmp_path, names, names[0], 4, 3, hidden=16)
    cfg, parsed = example("ties", paths, tmp_path)
    check(cfg, parsed, models, tmp_path)


def test_example_bio_merge(tmp_path):
    need("ties", "divide", "none")
    names = ["mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-Instruct-v0.2",
             "BioMistral/BioMistral-7B"]
    models, paths = family(tmp_path, names, names[0], 3, 4)
    cfg, parsed = example("bio-merge", paths, tmp_path)
    check(cfg, parsed, models, tmp_path)


def test_example_gradient_slerp(tmp_path):
    """t per tensor: a gradient for self_attn, another for mlp, 0.5 for the
    rest, over 40 layers (t = i / 39)."""
    need("slerp")
    if mk.geo is None:
        pytest.skip("mergekit_reference_geo.py is not in this tree yet")
    names = ["psmathur/orca_mini_v3_13b", "garage-bAInd/Platypus2-13B"]
    models, paths = family(tmp_path, names, names[0], 40, 11)
    cfg, parsed = example("gradient-slerp", paths, tmp_path)
    check(cfg, parsed, models, tmp_path)


def test_example_arcee_fusion(tmp_path):
    need("arcee_fusion")
    if mk.geo is None:
        pytest.skip("mergekit_reference_geo.py is not in this tree yet")
    names = ["model_a", "model_b"]
    models, paths = family(tmp_path, names, names[0], 3, 12)
    cfg, parsed = example("arcee_fusion", paths, tmp_path)
    check(cfg, parsed, models, tmp_path)


GRADIENTS = """merge_method: task_arithmetic
base_model: {base}
models:
  - model: {a}
    parameters:
      weight: [0, 0.5, 1]
  - model: {b}
    parameters:
      weight:
        - filter: mlp
          value: [1, 0]
        - filter: "*"
          value: 0.25
  - model: {base}
parameters:
  lambda:
    - filter: self_attn
      value: [0.5, 1.5]
    - value: 1.0
"""


def test_gradients_filters_precedence(tmp_path):
    """Per-tensor, per-model weights (a gradient, a filter list with a
    gradient and '*') and a per-tensor lambda; the base listed under
    models is not a task (mergekit drops it)."""
    names = ["base", "a", "b"]
    models, paths = family(tmp_path, names, "base", 5, 5)
    text = GRADIENTS.format(**paths)
    cfg = tmp_path / "g.yml"
    cfg.write_text(text)
    want = mk.evaluate(yaml.safe_load(text), models)
    r = run("run", cfg, "-o", tmp_path / "out", "-q")
    assert r.returncode == 0, r.stderr
    got = st_format.read_dir(tmp_path / "out")
    worst = max(float(np.max(np.abs(got[k] - want[k]))) for k in want)
    assert worst <= 1e-5, worst
    # The weights really differ per tensor: a plain mean would be far off.
    base, a, b = (models[paths[n]] for n in names)
    k = "model.layers.0.mlp.up_proj.weight"
    assert np.max(np.abs(want[k] - (base[k] + (a[k] - base[k]) * 0 + (b[k] - base[k])))) < 1e-6


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    names = ["base", "a", "b"]
    models, paths = family(tmp_path, names, "base", 5, 6)
    cfg = tmp_path / "g.yml"
    cfg.write_text(GRADIENTS.format(**paths))
    r = run("run", "--dry-run", cfg)
    assert r.returncode == 0, r.stderr
    assert "method: task_arithmetic (mergekit) -> libmerge strategy task_arithmetic" in r.stdout
    assert "models (2):" in r.stdout  # the listed base is not a task
    assert re.search(r"weight \[%s\]: per tensor, 0 \(" % re.escape(paths["a"]), r.stdout)
    assert "lambda: per tensor" in r.stdout
    assert "model.layers.4.mlp.up_proj.weight  t=1" in r.stdout
    r = run("run", "--dry-run", cfg, "-o", tmp_path / "never")
    assert r.returncode == 0 and not (tmp_path / "never").exists()


def test_output_folder_as_mergekit_writes_it(tmp_path):
    names = ["psmathur/orca_mini_v3_13b", "garage-bAInd/Platypus2-13B"]
    models, paths = family(tmp_path, names, None, 40, 7)
    cfg, _ = example("orcamini-platy-44layer", paths, tmp_path)
    out = tmp_path / "deep" / "er" / "out"  # missing parents are created
    r = run("run", cfg, "-o", out, "-q")
    assert r.returncode == 0, r.stderr
    files = sorted(os.listdir(out))
    assert files == ["README.md", "config.json", "mergekit_config.yml",
                     "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert (out / "mergekit_config.yml").read_text() == cfg.read_text()
    card = (out / "README.md").read_text()
    assert "input model's own card" not in card
    assert "passthrough" in card and paths[names[1]] in card and cfg.read_text() in card
    conf = json.loads((out / "config.json").read_text())
    assert conf["num_hidden_layers"] == 44 and conf["torch_dtype"] == "float16"
    assert conf["hidden_size"] == 8  # everything else kept
    assert (out / "tokenizer.json").read_text() == \
        (tmp_path / "m0" / "tokenizer.json").read_text()


def test_model_plus_lora(tmp_path):
    """MODEL+LORA: the adapter is applied to the model first (W + s B A)."""
    rng = np.random.default_rng(8)
    base = mk.llama(rng, 2)
    ft = mk.llama(rng, 2, like=base)
    write_model(tmp_path / "base", base, 2)
    write_model(tmp_path / "ft", ft, 2)
    lora = tmp_path / "lora"
    lora.mkdir()
    target = "model.layers.1.self_attn.q_proj"
    A = rng.standard_normal((2, 8)).astype(np.float32)
    B = rng.standard_normal((8, 2)).astype(np.float32)
    st_format.write(lora / "adapter_model.safetensors",
                    {"base_model.model.%s.lora_A.weight" % target: A,
                     "base_model.model.%s.lora_B.weight" % target: B})
    (lora / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}))
    cfg = tmp_path / "c.yml"
    cfg.write_text("merge_method: linear\nmodels:\n  - model: %s\n    parameters: {weight: 1}\n"
                   "  - model: %s+%s\n    parameters: {weight: 3}\ndtype: float32\n"
                   % (tmp_path / "base", tmp_path / "ft", lora))
    r = run("run", cfg, "-o", tmp_path / "out", "-q")
    assert r.returncode == 0, r.stderr
    got = st_format.read_dir(tmp_path / "out")
    k = target + ".weight"
    ft_lora = ft[k].astype(np.float64) + (4 / 2) * (B.astype(np.float64) @ A)
    np.testing.assert_allclose(got[k], (base[k] + 3 * ft_lora) / 4, atol=1e-5, rtol=0)
    k2 = "model.layers.0.mlp.up_proj.weight"
    np.testing.assert_allclose(got[k2], (base[k2] + 3.0 * ft[k2]) / 4, atol=1e-6, rtol=0)


REFUSED = [
    ("modules: {{}}\n", ":{n}: 'modules' (per-module merges"),
    ("parameters:\n  t: 0.5\n", ":{n1}: task_arithmetic has no parameter 't'"),
    ("parameters:\n  lambda: lots\n", ":{n1}: parameter 'lambda': 'lots' is not a number"),
    ("bogus: 1\n", ":{n}: unknown key 'bogus'"),
    ("dtype: float8\n", ":{n}: unknown dtype 'float8'"),
]


@pytest.mark.parametrize("extra,message", REFUSED)
def test_refused_keys_name_the_line(tmp_path, extra, message):
    names = ["base", "a"]
    _, paths = family(tmp_path, names, "base", 2, 9)
    text = "merge_method: task_arithmetic\nbase_model: %s\nmodels:\n  - model: %s\n" % (
        paths["base"], paths["a"])
    n = text.count("\n") + 1
    cfg = tmp_path / "c.yml"
    cfg.write_text(text + extra.format())
    r = run("run", cfg, "-o", tmp_path / "out")
    assert r.returncode == 1 and message.format(n=n, n1=n + 1) in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


BAD = [
    # a merge-wide parameter under a model: mergekit would ignore it
    ("merge_method: ties\nbase_model: {base}\nmodels:\n  - model: {a}\n"
     "    parameters: {{normalize: false}}\n",
     ":5: 'normalize' is a merge-wide parameter of ties"),
    ("merge_method: slerp\nbase_model: {base}\nmodels:\n  - model: {a}\n  - model: {b}\n"
     "parameters: {{t: 0.5}}\n", "slerp merges 1 model besides the base"),
    ("merge_method: linear\nbase_model: {base}\nmodels:\n  - model: {a}\n"
     "    parameters: {{weight: 1}}\n", "linear needs parameter 'weight' for model"),
    ("merge_method: ties\nmodels:\n  - model: {a}\n", ":1: ties needs 'base_model'"),
    ("merge_method: esm\nbase_model: {base}\nslices:\n  - sources:\n"
     "      - {{model: {a}, layer_range: [0, 2]}}\n",
     ":3: slices need a mergekit merge_method"),
    ("merge_method: passthrough\nslices:\n  - sources:\n"
     "      - {{model: {a}, layer_range: [0, 3]}}\n", "layer_range [0, 3] but"),
    ("merge_method: linear\nslices:\n  - sources:\n"
     "      - {{model: {a}, layer_range: [0, 2]}}\n"
     "      - {{model: {b}, layer_range: [0, 1]}}\n",
     ":5: every source of a slice must hold the same number of layers"),
    ("merge_method: ties\nbase_model: {base}\nslices:\n  - sources:\n"
     "      - {{model: {a}, layer_range: [0, 2]}}\n",
     ":4: ties needs base_model"),
    ("merge_method: average\nbase_model: {base}\nmodels:\n  - model: {a}\n"
     "parameters:\n  normalize:\n    - filter: mlp\n      value: 0\n",
     ":6: 'normalize' is set for some tensors only"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_bad_configs(tmp_path, text, message):
    names = ["base", "a", "b"]
    _, paths = family(tmp_path, names, "base", 2, 10)
    cfg = tmp_path / "c.yml"
    cfg.write_text(text.format(**paths))
    r = run("run", cfg, "-o", tmp_path / "out")
    if "slerp" in text and "slerp" not in strategies():
        pytest.skip("slerp not in this build")
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["nuslerp", "multislerp"])
def test_interpolation_without_base_model(tmp_path, method):
    """mergekit's nuslerp and multislerp without base_model interpolate the
    models themselves (the strategies' with_base=false), compared with the
    geometric references (mergekit_reference_geo.py) within 1e-5."""
    need(method, "with_base")
    if mk.geo is None:
        pytest.skip("mergekit_reference_geo.py is not in this tree")
    names = ["x", "y"]
    models, paths = family(tmp_path, names, None, 2, 13)
    cfg = tmp_path / "c.yml"
    cfg.write_text("merge_method: %s\nmodels:\n  - model: %s\n    parameters: {weight: 0.7}\n"
                   "  - model: %s\n    parameters: {weight: 0.3}\ndtype: float32\n"
                   % (method, paths["x"], paths["y"]))
    r = run("run", cfg, "-o", tmp_path / "out", "-q")
    assert r.returncode == 0, r.stderr
    got = st_format.read_dir(tmp_path / "out")
    x, y = models[paths["x"]], models[paths["y"]]
    ref = mk.geo.nuslerp if method == "nuslerp" else mk.geo.multislerp
    worst = max(float(np.max(np.abs(got[k] - ref([x[k], y[k]], [0.7, 0.3], None))))
                for k in got)
    assert worst <= 1e-5, worst


ALL_METHODS = ["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear",
               "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "sce",
               "ram", "ramplus_tl", "slerp", "nuslerp", "multislerp", "karcher",
               "model_stock", "nearswap", "arcee_fusion", "passthrough"]


@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_mergekit_method_runs_with_its_defaults(tmp_path, method):
    """Each of mergekit's method names maps to a strategy of this build and
    runs with mergekit's defaults (only the parameters it requires given);
    --dry-run names the strategy. The numbers of each method are checked
    against the references in test_mergekit_sparse.py /
    test_mergekit_geo.py and the examples above."""
    need(method)
    n = 1 if method in ("slerp", "nearswap", "arcee_fusion", "passthrough") else 2
    if method == "model_stock":
        n = 2
    models, paths = family(tmp_path, ["base", "a", "b"], "base", 2, 14, hidden=16)
    weighted = method in ("linear", "task_arithmetic", "ties", "dare_ties", "dare_linear",
                          "breadcrumbs", "breadcrumbs_ties", "della", "della_linear",
                          "nuslerp", "multislerp")
    text = "merge_method: %s\n" % method
    if method not in ("linear", "passthrough"):
        text += "base_model: %s\n" % paths["base"]
    text += "models:\n"
    for name in ["a", "b"][:n]:
        text += "  - model: %s\n" % paths[name]
        if weighted:
            text += "    parameters: {weight: 0.5}\n"
    if method in ("slerp", "nearswap"):
        text += "parameters: {t: 0.4}\n"
    cfg = tmp_path / "c.yml"
    cfg.write_text(text)
    r = run("run", "--dry-run", cfg)
    assert r.returncode == 0 and "-> libmerge strategy %s" % method in r.stdout, r.stderr
    r = run("run", cfg, "-o", tmp_path / "out", "-q")
    assert r.returncode == 0, r.stderr
    got = st_format.read_dir(tmp_path / "out")
    assert sorted(got) == sorted(models[paths["base"]])
    assert all(np.all(np.isfinite(v)) for v in got.values())
