"""NSC merging. The null-space ratio, its gradient, the coefficient gradient,
the merged weight and the AdamW update are checked against numpy / torch
references written from the equations of NSC (Lee, Jeong, Yoon,
arXiv:2603.26317; github.com/wonyoung01/nsc_merging):
ratio |diff| <= 1e-6, gradients relative <= 1e-3 (the library returns
f32 dL/dZ; finite differences in f64), AdamW trajectory relative <= 1e-9.
The drivers run on a small torch MLP with LoRA adapters (nsc_toy.py)."""
import copy
import json

import numpy as np
import pytest

import libmerge
import st_format

D_OUT, D_IN, R = 7, 12, 3


def adapters(seed=0, n=2, scales=(0.5, 2.0)):
    rng = np.random.default_rng(seed)
    def f32(*shape):  # adapters come as f32; the library reads them so
        return rng.standard_normal(shape).astype(np.float32).astype(np.float64)
    return [{"l1.weight": (f32(R, D_IN), f32(D_OUT, R), scales[k % 2]),
             "l2.weight": (f32(R + 1, D_OUT), f32(5, R + 1), 1.0)}
            for k in range(n)]


def omega(z, a):
    """Null-space ratio per row: |(I - A^+ A) z| / |z| (projection form)."""
    p = a.T @ np.linalg.solve(a @ a.T, a)
    resid = z - z @ p
    return np.linalg.norm(resid, axis=1) / np.linalg.norm(z, axis=1)


def test_ratio_matches_numpy_for_any_scale():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((9, D_IN)).astype(np.float32)
    for scales in ((0.5, 2.0), (4.0, 1 / 3)):
        nsc = libmerge.NSC(adapters(scales=scales))
        for k in range(2):
            a = adapters(scales=scales)[k]["l1.weight"][0]
            want = omega(z.astype(np.float64), a).mean()
            assert abs(nsc.ratio(k, "l1.weight", z) - want) <= 1e-6


def test_ratio_gradient_by_finite_differences():
    rng = np.random.default_rng(2)
    z = rng.standard_normal((6, D_IN))
    nsc = libmerge.NSC(adapters())
    a = adapters()[1]["l1.weight"][0]
    mean, grad = nsc.ratio(1, "l1.weight", z.astype(np.float32), grad_scale=3.0)
    fd = np.zeros_like(z)
    h = 1e-6
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            zp, zm = z.copy(), z.copy()
            zp[i, j] += h
            zm[i, j] -= h
            fd[i, j] = 3.0 * (omega(zp, a).mean() - omega(zm, a).mean()) / (2 * h)
    assert np.abs(grad - fd).max() <= 1e-3 * np.abs(fd).max()


def test_rows_in_the_row_space_and_zero_rows():
    nsc = libmerge.NSC(adapters())
    a = adapters()[0]["l1.weight"][0]
    z = np.vstack([np.ones((1, R)) @ a, np.zeros((1, D_IN))]).astype(np.float32)
    mean, grad = nsc.ratio(0, "l1.weight", z, grad_scale=1.0)
    assert mean < 1e-3 and np.all(np.isfinite(grad))
    assert np.all(grad[1] == 0)


def test_lambda_gradient_is_the_dense_inner_product():
    rng = np.random.default_rng(3)
    ads = adapters()
    nsc = libmerge.NSC(ads)
    g = rng.standard_normal((D_OUT, D_IN)).astype(np.float32)
    got = nsc.accumulate("l1.weight", g)
    for k, ad in enumerate(ads):
        a, b, s = ad["l1.weight"]
        want = s * np.sum(g.astype(np.float64) * (b @ a))
        assert abs(got[k] - want) <= 1e-9 * max(1.0, abs(want))


def test_materialize_matches_numpy_in_f32_and_bf16():
    rng = np.random.default_rng(4)
    ads = adapters()
    nsc = libmerge.NSC(ads, init=0.3)
    nsc.set_lambdas("l1.weight", [0.7, -0.2])
    w0 = rng.standard_normal((D_OUT, D_IN)).astype(np.float32)
    want = w0 + sum(lam * s * (b @ a) for lam, (a, b, s) in
                    zip([0.7, -0.2], [ad["l1.weight"] for ad in ads]))
    got = nsc.materialize("l1.weight", w0)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    out = libmerge.BFloat16Array.from_bits(np.zeros((D_OUT, D_IN), np.uint16))
    nsc.materialize("l1.weight", w0, out=out)
    # One rounding from f64, so compare against a bf16-rounded reference
    # within one bf16 ulp (the reference's f32 step can double-round).
    np.testing.assert_allclose(libmerge.from_bfloat16(out), want, rtol=2 ** -7, atol=0)
    assert np.allclose(nsc.lambdas("l2.weight"), [0.3, 0.3])


def test_adamw_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    ads = adapters()
    nsc = libmerge.NSC(ads, lr=0.05, weight_decay=0.01)
    lam = torch.nn.Parameter(torch.full((2,), 0.4, dtype=torch.float64))
    opt = torch.optim.AdamW([lam], lr=0.05, weight_decay=0.01)
    dense = [s * (b @ a) for a, b, s in (ad["l1.weight"] for ad in ads)]
    for _ in range(6):
        g = rng.standard_normal((D_OUT, D_IN)).astype(np.float32)
        nsc.accumulate("l1.weight", g)
        nsc.accumulate("l1.weight", g)  # accumulates: twice the gradient
        nsc.step()
        opt.zero_grad()
        lam.grad = torch.tensor([2 * np.sum(g.astype(np.float64) * d) for d in dense])
        opt.step()
        np.testing.assert_allclose(nsc.lambdas("l1.weight"), lam.detach().numpy(), rtol=1e-9)


def test_modules_missing_from_an_adapter():
    ads = adapters()
    ads[1] = {"l1.weight": ads[1]["l1.weight"]}
    nsc = libmerge.NSC(ads)
    assert nsc.modules == ["l1.weight", "l2.weight"]
    assert list(nsc.lambdas("l2.weight")) == [0.4, 0.0]
    with pytest.raises(libmerge.NotFoundError, match="task 1 has no adapter for 'l2.weight'"):
        nsc.ratio(1, "l2.weight", np.ones((2, D_OUT), np.float32))


def test_bad_adapters_and_inputs():
    ads = adapters()
    a, b, s = ads[1]["l1.weight"]
    ads[1]["l1.weight"] = (np.hstack([a, a[:, :1]]), b, s)
    with pytest.raises(libmerge.ShapeError, match="module 'l1.weight'"):
        libmerge.NSC(ads)
    ads = adapters()
    a, b, s = ads[0]["l1.weight"]
    ads[0]["l1.weight"] = (np.vstack([a[:2], a[:1]]), b, s)  # rank-deficient A
    with pytest.raises(libmerge.Error, match="singular"):
        libmerge.NSC(ads, ridge=0.0)
    nsc = libmerge.NSC(adapters())
    with pytest.raises(libmerge.ShapeError, match="width 12"):
        nsc.ratio(0, "l1.weight", np.ones((2, 5), np.float32))
    with pytest.raises(KeyError, match="no adapter targets"):
        nsc.lambdas("l3.weight")
    with pytest.raises(libmerge.OutOfRangeError, match="lr"):
        libmerge.NSC(adapters(), lr=0)


# --- drivers on a torch MLP ----------------------------------------------

@pytest.fixture(scope="module")
def toy():
    pytest.importorskip("torch")
    import nsc_toy
    net, tasks = nsc_toy.build(2)
    loaders = [[t["val"][0][:128]] for t in tasks]
    return nsc_toy, net, tasks, loaders


def evaluate(toy, state_dict):
    nsc_toy, net, tasks, loaders = toy
    import libmerge.torch as lt
    m = copy.deepcopy(net)
    m.load_state_dict(state_dict)
    acc = np.mean([nsc_toy.accuracy(m, t["head"], t["test"]) for t in tasks])
    return acc, lt.nsc_objective(m, [t["adapter"] for t in tasks], loaders)


def test_nsc_lowers_the_objective_and_keeps_up_with_task_arithmetic(toy):
    import libmerge.torch as lt
    nsc_toy, net, tasks, loaders = toy
    ads = [t["adapter"] for t in tasks]
    before = copy.deepcopy(net.state_dict())
    ta_acc, ta_obj = evaluate(toy, nsc_toy.task_arithmetic(net, ads, 0.4))
    report = {}
    merged = lt.nsc_merge(net, ads, loaders, steps=100, lr=1e-3, report=report)
    acc, obj = evaluate(toy, merged)
    assert obj < ta_obj - 1e-3            # started from TA at 0.4
    assert report["objective"][-1] < report["objective"][0]
    assert abs(report["objective"][0] - ta_obj) < 1e-6
    # Measured: NSC 0.925 vs TA 0.915 mean held-out accuracy.
    assert acc >= ta_acc
    for k, v in net.state_dict().items():     # the base model is untouched
        assert (v == before[k]).all()


def test_spsa_lowers_the_objective_deterministically(toy):
    import libmerge.torch as lt
    nsc_toy, net, tasks, loaders = toy
    ads = [t["adapter"] for t in tasks]
    _, ta_obj = evaluate(toy, nsc_toy.task_arithmetic(net, ads, 0.4))
    r1, r2 = {}, {}
    m1 = lt.nsc_merge_spsa(net, ads, loaders, steps=60, lr=1e-3, report=r1)
    m2 = lt.nsc_merge_spsa(net, ads, loaders, steps=60, lr=1e-3, report=r2)
    assert abs(r1["first"] - ta_obj) < 1e-6
    assert r1["last"] < r1["first"] - 5e-4
    assert evaluate(toy, m1)[1] < ta_obj
    for k in m1:
        assert (m1[k] == m2[k]).all()


def write_peft(path, adapter, alpha=8.0):
    path.mkdir()
    tensors = {}
    for name, (a, b, s) in adapter.items():
        module = name[:-len(".weight")]
        tensors["base_model.model.%s.lora_A.weight" % module] = a.astype(np.float32)
        tensors["base_model.model.%s.lora_B.weight" % module] = b.astype(np.float32)
    r = next(iter(adapter.values()))[0].shape[0]
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": alpha,
        "target_modules": sorted({n.split(".")[0] for n in adapter})}))
    st_format.write(str(path / "adapter_model.safetensors"), tensors)
    return path


def test_driver_merges_peft_directories_in_one_call(toy, tmp_path):
    import libmerge.torch as lt
    nsc_toy, net, tasks, loaders = toy
    dirs = [write_peft(tmp_path / ("task%d" % k), t["adapter"]) for k, t in enumerate(tasks)]
    from_dirs = lt.nsc_merge(net, dirs, loaders, steps=5)
    from_arrays = lt.nsc_merge(net, [t["adapter"] for t in tasks], loaders, steps=5)
    for k in from_dirs:
        assert np.abs((from_dirs[k] - from_arrays[k]).numpy()).max() <= 1e-6


# --- safe NSC: target rule, frozen modules, bounds, early stopping --------

def test_default_targets_are_the_last_quarter_of_the_blocks():
    from libmerge.torch_nsc import default_targets
    llama = ["model.layers.%d.self_attn.%s.weight" % (b, p)
             for b in range(32) for p in ("q_proj", "v_proj")]
    # The released LLaVA script: blocks 24-31 of 32 (it keeps only v_proj).
    want = ["model.layers.%d.self_attn.%s" % (b, p) for b in range(24, 32)
            for p in ("q_proj", "v_proj")]
    assert default_targets(llama) == want
    vit = ["vision_model.encoder.layers.%d.mlp.fc%d.weight" % (b, i)
           for b in range(12) for i in (1, 2)]
    assert default_targets(vit) == [n[:-7] for n in vit[-6:]]       # 3 of 12 blocks
    assert default_targets(["h.0.attn.c_attn.weight", "h.1.attn.c_attn.weight"]) == \
        ["h.1.attn.c_attn"]                                          # at least one block
    # Block indices need not be contiguous or sorted in the adapters.
    assert default_targets(["blocks.7.fc.weight", "blocks.2.fc.weight", "blocks.5.fc.weight",
                            "blocks.9.fc.weight"]) == ["blocks.9.fc"]
    # No block index: the last quarter of the modules (at least one).
    assert default_targets(["fc1.weight", "fc2.weight", "fc3.weight"]) == ["fc3"]
    assert default_targets(["a%d.weight" % i for i in range(8)]) == ["a6", "a7"]


def test_spsa_freezes_the_modules_after_every_target(toy):
    """Targets fc2: fc2's own coefficients and fc3's act after its input,
    so their gradient is exactly zero; SPSA leaves them at init (without
    the freeze they wander with the perturbations)."""
    import libmerge.torch as lt
    nsc_toy, net, tasks, loaders = toy
    ads = [t["adapter"] for t in tasks]
    frozen, loose = {}, {}
    lt.nsc_merge_spsa(net, ads, loaders, ["fc2"], steps=20, lr=1e-2, report=frozen, scale_rule="fixed")
    lt.nsc_merge_spsa(net, ads, loaders, ["fc2"], steps=20, lr=1e-2, report=loose, scale_rule="fixed",
                      freeze_after_targets=False)
    assert frozen["frozen"] == ["fc2.weight", "fc3.weight"]
    for name in ("fc2.weight", "fc3.weight"):
        assert list(frozen["lambdas"][name]) == [0.4, 0.4]
        assert max(abs(v - 0.4) for v in loose["lambdas"][name]) > 1e-3
    assert max(abs(v - 0.4) for v in frozen["lambdas"]["fc1.weight"]) > 1e-3
    # Same perturbation stream, same zero-gradient modules: fc1 follows the
    # same path whether the others are frozen or not.
    np.testing.assert_allclose(frozen["lambdas"]["fc1.weight"], loose["lambdas"]["fc1.weight"],
                               rtol=0, atol=1e-12)


def test_bounds_and_trust_region_hold_in_both_drivers(toy):
    import libmerge.torch as lt
    nsc_toy, net, tasks, loaders = toy
    ads = [t["adapter"] for t in tasks]
    free, boxed, trust = {}, {}, {}
    lt.nsc_merge(net, ads, loaders, steps=60, lr=0.05, lambda_min=-np.inf, report=free, scale_rule="fixed")
    lt.nsc_merge(net, ads, loaders, steps=60, lr=0.05, report=boxed, scale_rule="fixed", lambda_max=0.6)
    lt.nsc_merge_spsa(net, ads, loaders, steps=60, lr=0.05, report=trust, scale_rule="fixed", trust_radius=0.05)
    all_free = np.concatenate(list(free["lambdas"].values()))
    all_boxed = np.concatenate(list(boxed["lambdas"].values()))
    all_trust = np.concatenate(list(trust["lambdas"].values()))
    assert all_free.min() < 0 or all_free.max() > 0.6  # the bounds have something to stop
    assert all_boxed.min() >= 0 and all_boxed.max() <= 0.6
    assert np.abs(all_trust - 0.4).max() <= 0.05 + 1e-15


def test_early_stopping_keeps_the_best_heldout_point(toy):
    """The returned coefficients are those after best_step steps (a run of
    exactly that many steps gives them bit for bit), the held-out objective
    there is the curve's minimum and never above the start."""
    import libmerge.torch as lt
    nsc_toy, net, tasks, loaders = toy
    ads = [t["adapter"] for t in tasks]
    held = [[t["val"][0][128:256]] for t in tasks]
    report = {}
    lt.nsc_merge(net, ads, loaders, steps=80, lr=0.05, report=report, scale_rule="fixed", heldout_loaders=held,
                 eval_every=5, patience=2)
    steps, values = zip(*report["heldout"])
    assert steps[0] == 0 and report["best_step"] in steps
    assert min(values) == values[steps.index(report["best_step"])] <= values[0]
    again = {}
    merged = lt.nsc_merge(net, ads, loaders, steps=report["best_step"], lr=0.05, report=again, scale_rule="fixed")
    for name, lam in report["lambdas"].items():
        assert list(lam) == list(again["lambdas"][name]), name
    net2 = copy.deepcopy(net)
    net2.load_state_dict(merged)
    assert abs(lt.nsc_objective(net2, ads, held) - min(values)) < 1e-9


def test_spsa_in_chunks_is_the_same_run(toy):
    """Held-out checks run SPSA in chunks of eval_every steps: with a
    patience that never stops it, the result is the one-call run's."""
    import libmerge.torch as lt
    nsc_toy, net, tasks, loaders = toy
    ads = [t["adapter"] for t in tasks]
    held = [[t["val"][0][128:256]] for t in tasks]
    one, chunks = {}, {}
    lt.nsc_merge_spsa(net, ads, loaders, steps=25, report=one, scale_rule="fixed")
    lt.nsc_merge_spsa(net, ads, loaders, steps=25, report=chunks, scale_rule="fixed", heldout_loaders=held,
                      eval_every=10, patience=100)
    assert one["curve"] == chunks["curve"]
    assert [s for s, _ in chunks["heldout"]] == [0, 10, 20, 25]
    # The kept coefficients are those of a one-call run of best_step steps.
    best = {}
    lt.nsc_merge_spsa(net, ads, loaders, steps=chunks["best_step"], report=best, scale_rule="fixed")
    for name, lam in chunks["lambdas"].items():
        assert list(lam) == list(best["lambdas"][name]), name


# --- the global scale searched on validation ---------------------------------

def scaled_reference(net, adapters, lambdas, alpha):
    """W0 + alpha * sum_k lambda[m][k] s_k B_k A_k in f64 from the factors."""
    out = {k: v.detach().numpy().astype(np.float64) for k, v in net.state_dict().items()}
    for k, adapter in enumerate(adapters):
        for name, (a, b, s) in adapter.items():
            out[name] = out[name] + alpha * lambdas[name][k] * s * (
                np.asarray(b, np.float64) @ np.asarray(a, np.float64))
    return out


def test_scale_search_finds_the_best_alpha_and_merges_it(toy, tmp_path):
    """A score peaked at a known alpha: the search lands within its
    tolerance, moves the bracket when the peak is past it, and the merge is
    W0 + alpha sum c s B A (1e-5), the same from a table file."""
    import libmerge.torch as lt
    nsc_toy, net, tasks, loaders = toy
    ads = [t["adapter"] for t in tasks]
    lambdas = {k: [0.35 + 0.1 * i, 0.5 - 0.1 * i] for i, k in enumerate(sorted(ads[0]))}

    def peaked(target):
        want = scaled_reference(net, ads, lambdas, target)
        return lambda sd: -sum(float(np.sum((sd[k] - want[k]) ** 2)) for k in lambdas)

    res = lt.nsc_scale_search(net, ads, lambdas, peaked(0.3))
    assert abs(res[0] - 0.3) <= 0.01 and not res.widened
    assert res[1] == max(s for _, s in res[2])
    want = scaled_reference(net, ads, lambdas, res[0])
    for k in want:
        assert np.abs(res[3][k] - want[k]).max() <= 1e-5, k
    far = lt.nsc_scale_search(net, ads, lambdas, peaked(2.2))
    assert far.widened >= 1 and abs(far[0] - 2.2) <= 0.02
    # The same coefficients as a table file: the same merges.
    nsc = libmerge.NSC(ads)
    for k, v in lambdas.items():
        nsc.set_lambdas(k, v)
    path = tmp_path / "coef.json"
    nsc.save_coefficients(str(path))
    nsc.close()
    again = lt.nsc_scale_search(net, ads, path, peaked(0.3))
    assert again[0] == res[0]
    for k in want:
        assert (again[3][k] == res[3][k]).all()


def test_drivers_return_the_scale_searched_merge(toy, tmp_path):
    """With scale_score the drivers return the optimised coefficients times
    the alpha searched on it: the merge is the reference at the reported
    (scaled) lambdas, the best point of the search, and the saved table
    gives it again."""
    import libmerge.torch as lt
    nsc_toy, net, tasks, loaders = toy
    ads = [t["adapter"] for t in tasks]

    def val_accuracy(sd):
        m = copy.deepcopy(net)
        m.load_state_dict({k: torch_from(v) for k, v in sd.items()})
        return float(np.mean([nsc_toy.accuracy(m, t["head"], t["val"]) for t in tasks]))

    for driver in (lt.nsc_merge, lt.nsc_merge_spsa):
        report, path = {}, tmp_path / ("%s.json" % driver.__name__)
        merged = driver(net, ads, loaders, steps=20, report=report, scale_score=val_accuracy,
                        coefficients=str(path))
        alpha = report["alpha"]
        assert alpha == max(report["scale_curve"], key=lambda c: c[1])[0]
        for k, v in report["lambdas"].items():
            assert np.allclose(v, alpha * np.asarray(report["unscaled_lambdas"][k]),
                               rtol=1e-12, atol=0), k
        want = scaled_reference(net, ads, report["lambdas"], 1.0)
        for k in want:
            assert np.abs(merged[k].numpy() - want[k]).max() <= 1e-5, k
        table = libmerge.merge("nsc", {k: v.numpy() for k, v in net.state_dict().items()},
                               [libmerge.LoraAdapter(a) for a in ads], coefficients=str(path))
        for k in want:
            assert np.abs(table[k] - merged[k].numpy()).max() <= 1e-5, k


def torch_from(v):
    import torch
    return torch.from_numpy(np.asarray(v, np.float32))
