"""The `nsc` strategy: W0 + sum_k lambda_{l,k} w_k s_k B_k A_k with the
coefficients of a table written by the NSC optimisers (NSC.save_coefficients,
libmerge.torch.nsc_merge(coefficients=...)), read back by merge("nsc", ...)
and `lmerge run`. References are numpy in f64 from the adapters' factors and
the table (NSC: Lee, Jeong, Yoon, arXiv:2603.26317). Tolerance: |diff| <=
1e-5 (the library forms s B A in f32 before summing in f64; every value
here is O(1)); unadapted tensors and equal inputs bit for bit."""
import json
import os
import subprocess

import numpy as np
import pytest

import libmerge
import st_format

RNG = np.random.default_rng(11)
TOL = 1e-5


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def make(n_tasks=2):
    base = {"l1.weight": f32(7, 12), "l1.bias": f32(7), "l2.weight": f32(5, 7)}
    # Task 1 adapts l1 only: its l2 coefficient is ignored.
    ads = [{"l1.weight": (f32(3, 12), f32(7, 3), 0.5 + k),
            **({"l2.weight": (f32(2, 7), f32(5, 2), 2.0)} if k != 1 else {})}
           for k in range(n_tasks)]
    return base, ads


def reference(base, ads, table, weights):
    out = {k: v.astype(np.float64) for k, v in base.items()}
    for k, ad in enumerate(ads):
        for name, (a, b, s) in ad.items():
            lam = table["modules"][name][k]
            out[name] += lam * weights[k] * s * (b.astype(np.float64) @ a.astype(np.float64))
    return out


def save_table(path, ads, lambdas, names=None):
    nsc = libmerge.NSC([libmerge.LoraAdapter(a) for a in ads])
    for module, values in lambdas.items():
        nsc.set_lambdas(module, values)
    nsc.save_coefficients(path, names)
    nsc.close()
    with open(path) as f:
        return json.load(f)


LAMBDAS = {"l1.weight": [0.7, -0.2], "l2.weight": [1.3, 0.0]}


def test_merge_matches_numpy(tmp_path):
    base, ads = make()
    path = tmp_path / "coef.json"
    table = save_table(path, ads, LAMBDAS, ["math", "code \"v2\""])
    assert table["format"] == "libmerge-nsc-coefficients" and table["version"] == 1
    assert table["tasks"] == ["math", "code \"v2\""]
    # Saved exactly (task 1 has no adapter on l2: saved as 0).
    assert table["modules"] == LAMBDAS
    weights = [1.0, 0.5]
    got = libmerge.merge("nsc", base, [libmerge.LoraAdapter(a) for a in ads],
                         weights=weights, coefficients=str(path))
    want = reference(base, ads, table, weights)
    for k in base:
        assert got[k].dtype == np.float32
        assert np.abs(got[k] - want[k]).max() <= TOL, k
    assert (got["l1.bias"] == base["l1.bias"]).all()
    # The same numbers as per-(tensor, model) lambdas: the same bits.
    again = libmerge.merge("nsc", base, [libmerge.LoraAdapter(a) for a in ads],
                           weights=weights, **{"lambda": LAMBDAS})
    for k in base:
        assert (again[k] == got[k]).all()


def test_load_coefficients_round_trip(tmp_path):
    _, ads = make()
    save_table(tmp_path / "c.json", ads, LAMBDAS)
    nsc = libmerge.NSC([libmerge.LoraAdapter(a) for a in ads])
    nsc.load_coefficients(tmp_path / "c.json")
    assert list(nsc.lambdas("l1.weight")) == LAMBDAS["l1.weight"]
    assert list(nsc.lambdas("l2.weight")) == LAMBDAS["l2.weight"]
    with pytest.raises(ValueError):
        nsc.save_coefficients(tmp_path / "d.json", ["only one"])
    nsc.close()


def write_table(path, tasks, modules):
    path.write_text(json.dumps({"format": "libmerge-nsc-coefficients", "version": 1,
                                "tasks": tasks, "modules": modules}))
    return str(path)


def test_bad_tables_name_the_file_and_key(tmp_path):
    base, ads = make()
    loras = [libmerge.LoraAdapter(a) for a in ads]
    p = write_table(tmp_path / "missing.json", ["a", "b"], {"l1.weight": [1, 1]})
    with pytest.raises(libmerge.NotFoundError, match="missing.json.*'l2.weight'"):
        libmerge.merge("nsc", base, loras, coefficients=p)
    p = write_table(tmp_path / "count.json", ["a"], {"l1.weight": [1], "l2.weight": [1]})
    with pytest.raises(libmerge.InvalidArgumentError, match="count.json.*'tasks' lists 1"):
        libmerge.merge("nsc", base, loras, coefficients=p)
    # Python's json writes NaN unless told not to; it is not JSON.
    p = write_table(tmp_path / "nan.json", ["a", "b"],
                    {"l1.weight": [float("nan"), 1], "l2.weight": [1, 1]})
    with pytest.raises(libmerge.Error, match="nan.json.*NaN"):
        libmerge.merge("nsc", base, loras, coefficients=p)
    p = write_table(tmp_path / "row.json", ["a", "b"],
                    {"l1.weight": [1, 2, 3], "l2.weight": [1, 1]})
    with pytest.raises(libmerge.Error, match=r"row.json.*modules\['l1.weight'\] has 3 values"):
        libmerge.merge("nsc", base, loras, coefficients=p)
    with pytest.raises(libmerge.InvalidArgumentError, match="no coefficients"):
        libmerge.merge("nsc", base, loras)
    with pytest.raises(libmerge.Error, match="not a LoRA adapter"):
        libmerge.merge("nsc", base, [loras[0], base], **{"lambda": 0.5})


def test_optimiser_inside_the_plan(tmp_path):
    """merge_with_forward (lm_plan_set_nsc_forward) runs the same SPSA as a
    standalone NSC with the same seed and options (lambdas bit for bit) and
    merges with its table (bit for bit; within 1e-5 of materialize)."""
    from libmerge.nsc import merge_with_forward
    base, ads = make()
    x = RNG.standard_normal((16, 12)).astype(np.float32)

    def evaluate(nsc, task, step):
        w1 = nsc.materialize("l1.weight", base["l1.weight"])
        # Task 1 has no adapter on l2: it reports l1's inputs instead.
        if task == 0:
            nsc.observe(0, "l2.weight", x @ w1.T)
        else:
            nsc.observe(1, "l1.weight", x)

    path = tmp_path / "inside.json"
    loras = [libmerge.LoraAdapter(a) for a in ads]
    got = merge_with_forward(base, loras, evaluate, steps=6, seed=4,
                             coefficients=path)
    alone = libmerge.NSC(loras, seed=4)
    alone.spsa(lambda task, step: evaluate(alone, task, step), steps=6)
    table = json.loads(path.read_text())
    for m in alone.modules:
        assert table["modules"][m] == list(alone.lambdas(m))
    assert table["modules"]["l1.weight"] != [0.4, 0.4]
    for m in alone.modules:
        assert np.abs(got[m] - alone.materialize(m, base[m])).max() <= TOL
    alone.close()
    again = libmerge.merge("nsc", base, loras, coefficients=str(path))
    for k in base:
        assert (again[k] == got[k]).all()

    def stop(nsc, task, step):
        raise KeyError("host stopped")
    with pytest.raises(KeyError, match="host stopped"):
        merge_with_forward(base, loras, stop, steps=2)


# --- the torch drivers' tables ------------------------------------------

def toy_model():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 8))


def toy_adapters(n=2):
    g = np.random.default_rng(5)
    dims = {"0.weight": (16, 12), "2.weight": (16, 16), "4.weight": (8, 16)}
    return [{m: ((g.standard_normal((4, i)) / 4).astype(np.float32),
                 (g.standard_normal((o, 4)) / 4).astype(np.float32), 2.0)
             for m, (o, i) in dims.items()} for _ in range(n)]


@pytest.mark.parametrize("driver", ["nsc_merge", "nsc_merge_spsa"])
def test_torch_driver_table_reproduces_its_merge(tmp_path, driver):
    """The table a driver saves, merged by the strategy, gives the state
    dict the driver returned (lm_nsc_materialize: f64, rounded once)
    within 1e-5; the table holds the driver's final lambdas exactly."""
    import torch
    import libmerge.torch as lt
    model, ads = toy_model(), toy_adapters()
    g = torch.Generator().manual_seed(1)
    loaders = [[torch.randn(32, 12, generator=g)] for _ in ads]
    path = tmp_path / "coef.json"
    report = {}
    merged = getattr(lt, driver)(model, ads, loaders, target_modules=["2", "4"],
                                 steps=5, report=report, coefficients=str(path),
                                 scale_rule="fixed")
    table = json.loads(path.read_text())
    assert table["tasks"] == ["task0", "task1"]
    for name, lam in report["lambdas"].items():
        assert table["modules"][name] == list(lam)
    # The optimiser moved them ("4" runs after every target: SPSA freezes it).
    assert table["modules"]["0.weight"] != [0.4, 0.4]
    assert (table["modules"]["4.weight"] == [0.4, 0.4]) == (driver == "nsc_merge_spsa")
    base = {k: v.numpy() for k, v in model.state_dict().items()}
    got = libmerge.merge("nsc", base, [libmerge.LoraAdapter(a) for a in ads],
                         coefficients=str(path))
    for k, v in merged.items():
        assert np.abs(got[k] - v.numpy()).max() <= TOL, k


# --- lmerge run ------------------------------------------------------------

LMERGE = os.environ.get("LIBMERGE_LMERGE")


def write_peft(path, adapter, alpha):
    path.mkdir()
    tensors = {}
    for name, (a, b, _) in adapter.items():
        module = name[:-len(".weight")]
        tensors["base_model.model.%s.lora_A.weight" % module] = a
        tensors["base_model.model.%s.lora_B.weight" % module] = b
    r = next(iter(adapter.values()))[0].shape[0]
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": alpha,
        "target_modules": sorted({n[:-len(".weight")] for n in adapter})}))
    st_format.write(str(path / "adapter_model.safetensors"), tensors)


CONFIG = """merge_method: nsc
base_model: {base}
models:
  - model: {a}
  - model: {b}
{params}"""


@pytest.mark.skipif(not LMERGE, reason="LIBMERGE_LMERGE is not set")
def test_lmerge_run_nsc(tmp_path):
    base, _ = make()
    g = np.random.default_rng(3)
    # PEFT scale alpha / r: ranks 2 and 3, alphas 4 and 3.
    ads = [{"l1.weight": (g.standard_normal((r, 12)).astype(np.float32),
                          g.standard_normal((7, r)).astype(np.float32), alpha / r),
            "l2.weight": (g.standard_normal((r, 7)).astype(np.float32),
                          g.standard_normal((5, r)).astype(np.float32), alpha / r)}
           for r, alpha in ((2, 4.0), (3, 3.0))]
    (tmp_path / "base").mkdir()
    st_format.write(str(tmp_path / "base" / "model.safetensors"), base)
    for k, (ad, alpha) in enumerate(zip(ads, (4.0, 3.0))):
        write_peft(tmp_path / ("task%d" % k), ad, alpha)
    lambdas = {"l1.weight": [0.55, 0.25], "l2.weight": [-0.1, 0.9]}
    table = save_table(tmp_path / "coef.json", ads, lambdas)
    def config(params, name):
        p = tmp_path / name
        p.write_text(CONFIG.format(base=tmp_path / "base", a=tmp_path / "task0",
                                   b=tmp_path / "task1", params=params))
        return p
    good = config("parameters:\n  coefficients: %s\n" % (tmp_path / "coef.json"), "m.yaml")
    r = subprocess.run([LMERGE, "run", str(good), "-o", str(tmp_path / "out"), "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = st_format.read_dir(str(tmp_path / "out"))
    want = reference(base, ads, table, [1.0, 1.0])
    for k in base:
        assert np.abs(got[k] - want[k]).max() <= TOL, k
    assert (got["l1.bias"] == base["l1.bias"]).all()

    r = subprocess.run([LMERGE, "run", str(config("", "none.yaml")), "-o",
                        str(tmp_path / "out2"), "--quiet"], capture_output=True, text=True)
    assert r.returncode != 0
    assert "none.yaml:1: merge_method nsc needs 'parameters: {coefficients: PATH}'" in r.stderr
    assert not (tmp_path / "out2").exists()
    bad = write_table(tmp_path / "short.json", ["a", "b"], {"l1.weight": [1, 1]})
    r = subprocess.run([LMERGE, "run", str(config("parameters:\n  coefficients: %s\n" % bad,
                                                  "bad.yaml")),
                        "-o", str(tmp_path / "out3"), "--quiet"], capture_output=True, text=True)
    assert r.returncode != 0 and "short.json" in r.stderr and "'l2.weight'" in r.stderr
    assert not (tmp_path / "out3").exists()
