"""NSC's label-free teacher scale (docs/methods/nsc.md "Teacher scale"):
the score is checked against a reference written from its definition
(teacher k = W0 + s_k B_k A_k built in numpy from the factors; KL of the
softmax over the last dimension, f64; relative 1e-6: both run the
model in f32), the drivers'
default against the released fixed scale followed by the documented
search, and the model is left as it was."""
import copy

import numpy as np
import pytest

import libmerge

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def toy():
    import nsc_toy
    net, tasks = nsc_toy.build(2)
    loaders = [[t["val"][0][:128]] for t in tasks]
    heads = [t["head"] for t in tasks]
    return net, [t["adapter"] for t in tasks], loaders, lambda k, f: heads[k](f)


def reference_score(net, adapters, loaders, outputs, merged):
    """-(1/K) sum_k mean_rows KL(softmax(teacher_k) || softmax(merged))."""
    def log_probs(weights, k):
        m = copy.deepcopy(net)
        m.load_state_dict({n: torch.from_numpy(np.asarray(v, np.float32))
                           for n, v in weights.items()})
        with torch.no_grad():
            z = outputs(k, m(loaders[k][0])).double()
        return torch.log_softmax(z, dim=1).numpy()
    base = {n: v.numpy().astype(np.float64) for n, v in net.state_dict().items()}
    kl = []
    for k, adapter in enumerate(adapters):
        own = dict(base)
        for name, (a, b, s) in adapter.items():
            own[name] = base[name] + s * (np.asarray(b, np.float64) @ np.asarray(a, np.float64))
        p, q = log_probs(own, k), log_probs(merged, k)
        kl.append(np.mean(np.sum(np.exp(p) * (p - q), axis=1)))
    return -float(np.mean(kl))


def task_arithmetic(net, adapters, lam):
    out = {n: v.numpy().copy() for n, v in net.state_dict().items()}
    for adapter in adapters:
        for name, (a, b, s) in adapter.items():
            out[name] = (out[name] + lam * s * (b.astype(np.float64) @ a)).astype(np.float32)
    return out


def test_teacher_score_matches_its_definition(toy):
    import libmerge.torch as lt
    net, ads, loaders, outputs = toy
    score = lt.nsc_teacher_score(net, ads, loaders, outputs=outputs)
    for lam in (0.0, 0.3, 1.0):
        merged = task_arithmetic(net, ads, lam)
        want = reference_score(net, ads, loaders, outputs, merged)
        assert want < 0
        assert abs(score(merged) - want) <= 1e-6 * abs(want), lam


def test_a_single_teachers_own_scale_is_found(toy):
    """One adapter: the merge at alpha = 1 is the teacher itself (KL 0,
    exactly), so the search on the teacher score lands at 1 within its
    tolerance."""
    import libmerge.torch as lt
    net, ads, loaders, outputs = toy
    one = ads[:1]
    score = lt.nsc_teacher_score(net, one, loaders[:1], outputs=outputs)
    ones = {n: [1.0] for n in one[0]}
    own = libmerge.merge("nsc", {n: v.numpy() for n, v in net.state_dict().items()},
                         [libmerge.LoraAdapter(one[0])], **{"lambda": ones})
    assert score(own) == 0.0
    res = lt.nsc_scale_search(net, one, {n: [0.5] for n in one[0]}, score)
    assert abs(res[0] - 2.0) <= 0.02


def test_scoring_leaves_the_model_as_it_was(toy):
    import libmerge.torch as lt
    net, ads, loaders, outputs = toy
    before = copy.deepcopy(net.state_dict())
    net.train()
    score = lt.nsc_teacher_score(net, ads, loaders, outputs=outputs)
    score(task_arithmetic(net, ads, 0.7))
    assert net.training
    net.eval()
    for n, v in net.state_dict().items():
        assert torch.equal(v, before[n]), n


@pytest.mark.parametrize("driver", ["nsc_merge", "nsc_merge_spsa"])
def test_default_is_the_fixed_run_scaled_by_the_teacher_search(toy, driver):
    """The default (scale_rule="teacher") returns the released run's
    coefficients times the alpha nsc_scale_search picks on the teacher
    score of the first batch per task: same alpha, same merge bit for bit."""
    import libmerge.torch as lt
    net, ads, loaders, outputs = toy
    run = getattr(lt, driver)
    fixed, default = {}, {}
    run(net, ads, loaders, steps=10, report=fixed, scale_rule="fixed")
    merged = run(net, ads, loaders, steps=10, report=default, outputs=outputs)
    assert fixed["scale_rule"] == "fixed" and default["scale_rule"] == "teacher"
    for n, lam in fixed["lambdas"].items():
        assert list(default["unscaled_lambdas"][n]) == list(lam), n
    want = lt.nsc_scale_search(net, ads, fixed["lambdas"],
                               lt.nsc_teacher_score(net, ads, loaders, outputs=outputs))
    assert default["alpha"] == want[0]
    assert want[0] != 1.0      # the scale moved: the check below is not vacuous
    for n, v in merged.items():
        assert np.array_equal(v.numpy(), np.asarray(want[3][n], np.float32)), n


def test_one_shot_loaders_keep_their_first_batch(toy):
    """Generators cannot be re-read: the teacher scale uses the batches the
    optimiser drew, so a generator gives the list's result."""
    import libmerge.torch as lt
    net, ads, loaders, outputs = toy
    listed = lt.nsc_merge(net, ads, loaders, steps=3, outputs=outputs)
    once = lt.nsc_merge(net, ads, [iter(list(l)) for l in loaders], steps=3, outputs=outputs)
    for n, v in listed.items():
        assert torch.equal(v, once[n]), n


def test_bad_arguments_are_named(toy):
    import libmerge.torch as lt
    net, ads, loaders, outputs = toy
    with pytest.raises(ValueError, match="scale_rule must be one of"):
        lt.nsc_merge(net, ads, loaders, steps=1, scale_rule="labels")
    with pytest.raises(ValueError, match="scale_rule='fixed'"):
        lt.nsc_merge_spsa(net, ads, loaders, steps=1, scale_rule="fixed",
                          scale_score=lambda sd: 0.0)
    with pytest.raises(ValueError, match="2 loaders for 1 adapters"):
        lt.nsc_teacher_score(net, ads[:1], loaders, outputs=outputs)
    with pytest.raises(ValueError, match="pass outputs="):
        lt.nsc_teacher_score(net, ads, loaders, outputs=lambda k, f: {"features": f})


def test_stale_gradients_do_not_enter_the_run(toy):
    """A model fresh from training holds its last .grad: the gradient
    driver must not add it to its first step (it did before 0.3), and
    gives it back afterwards."""
    import libmerge.torch as lt
    net, ads, loaders, _ = toy
    clean, stale = {}, {}
    lt.nsc_merge(net, ads, loaders, steps=3, report=clean, scale_rule="fixed")
    grads = {}
    for name, p in net.named_parameters():
        p.grad = torch.full_like(p, 5.0)
        grads[name] = p.grad
    lt.nsc_merge(net, ads, loaders, steps=3, report=stale, scale_rule="fixed")
    for n, lam in clean["lambdas"].items():
        assert list(stale["lambdas"][n]) == list(lam), n
    for name, p in net.named_parameters():
        assert p.grad is grads[name], name
        p.grad = None
