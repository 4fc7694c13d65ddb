"""libmerge.torch.teacher_score with fully fine-tuned teachers, against
its definition computed here (each teacher loaded into a copy of the
model, KL of the softmax over the last dimension in f64; relative 1e-6:
both run the model in f32): as a search objective and as purification's
tuning score."""
import copy

import numpy as np
import pytest

import libmerge

torch = pytest.importorskip("torch")


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(10, 16)
        self.fc2 = torch.nn.Linear(16, 5)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = Net()
    base = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    g = np.random.default_rng(1)
    teachers = [{k: (v + 0.3 * g.standard_normal(v.shape)).astype(np.float32)
                 for k, v in base.items()} for _ in range(3)]
    loaders = [[torch.from_numpy(g.standard_normal((40, 10)).astype(np.float32))]
               for _ in teachers]
    return net, base, teachers, loaders


def reference(net, teachers, loaders, merged):
    def log_probs(sd, k):
        m = copy.deepcopy(net)
        m.load_state_dict({n: torch.from_numpy(np.asarray(v, np.float32)) for n, v in sd.items()})
        with torch.no_grad():
            return torch.log_softmax(m(loaders[k][0]).double(), dim=1).numpy()
    kl = []
    for k, t in enumerate(teachers):
        p, q = log_probs(t, k), log_probs(merged, k)
        kl.append(np.mean(np.sum(np.exp(p) * (p - q), axis=1)))
    return -float(np.mean(kl))


def test_score_matches_its_definition_and_leaves_the_model(setup):
    import libmerge.torch as lt
    net, base, teachers, loaders = setup
    before = copy.deepcopy(net.state_dict())
    score = lt.teacher_score(net, teachers, loaders)
    for lam in (0.0, 0.4, 1.0):
        merged = libmerge.merge("task_arithmetic", base, teachers, **{"lambda": lam})
        want = reference(net, teachers, loaders, merged)
        assert want < 0
        assert abs(score(merged) - want) <= 1e-6 * abs(want), lam
    assert score(teachers[0]) < 0 and abs(reference(net, teachers[:1], loaders[:1],
                                                    teachers[0])) == 0.0
    for n, v in net.state_dict().items():
        assert torch.equal(v, before[n]), n


def test_partial_teachers_keep_the_models_other_tensors(setup):
    """A teacher that gives only fc1 keeps the model's fc2 (and its bias)."""
    import libmerge.torch as lt
    net, base, teachers, loaders = setup
    partial = [{"fc1.weight": t["fc1.weight"]} for t in teachers]
    full = [dict(base, **p) for p in partial]
    merged = libmerge.merge("task_arithmetic", base, teachers, **{"lambda": 0.5})
    got = lt.teacher_score(net, partial, loaders)(merged)
    assert abs(got - reference(net, full, loaders, merged)) <= 1e-6 * abs(got)


def test_search_and_purify_tuning_take_it(setup):
    """As libmerge.search's objective the best point is the score's maximum
    over the curve; as purification's `score` the chosen keep ratio is the
    candidate whose merge scores highest (each recomputed here)."""
    import libmerge.torch as lt
    net, base, teachers, loaders = setup
    score = lt.teacher_score(net, teachers, loaders)
    res = libmerge.search("task_arithmetic", base, teachers, score, param="lambda",
                          lo=0.0, hi=1.5)
    assert res[1] == max(s for _, s in res[2])
    assert abs(score(res[3]) - res[1]) <= 1e-12
    stats = libmerge.Stats(folds=2)
    for k, t in enumerate(teachers):
        m = Net()
        m.load_state_dict({n: torch.from_numpy(v) for n, v in t.items()})
        lt.collect_stats(m, [torch.from_numpy(np.random.default_rng(k).standard_normal(
            (64, 10)).astype(np.float32))], stats, model_index=k)
    candidates = [1.0, 0.9, 0.6, 0.3]
    report = {}
    libmerge.merge("task_arithmetic", base, teachers, stats=stats, **{"lambda": 0.4},
                   purify={"keep": "cv", "candidates": candidates, "score": score,
                           "report": report})
    each = [score(libmerge.merge("task_arithmetic", base, teachers, stats=stats,
                                 **{"lambda": 0.4}, purify={"keep": c})) for c in candidates]
    assert report["objective"] == "host score"
    assert report["keep"] == candidates[int(np.argmax(each))]


def test_bad_arguments_are_named(setup):
    import libmerge.torch as lt
    net, base, teachers, loaders = setup
    with pytest.raises(ValueError, match="3 loaders for 2 teachers"):
        lt.teacher_score(net, teachers[:2], loaders)
    with pytest.raises(ValueError, match="no tensor 'fc9.weight'"):
        lt.teacher_score(net, [{"fc9.weight": np.zeros((2, 2), np.float32)}] * 3, loaders)
    with pytest.raises(ValueError, match="batches must be >= 1"):
        lt.teacher_score(net, teachers, loaders, batches=0)
