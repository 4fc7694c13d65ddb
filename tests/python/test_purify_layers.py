"""purify keep="cv" with per_layer=True: the fold curves split per tensor
and the paired standard-error rule applied to each, against the numpy
reference (reference.pave, reference.heldout_drift: the released PAVE
written from the paper) run layer by layer, and the rule from its
definition (test_purify._paired_one_se). Two planted layers whose truths
differ (keep 0.25 and 1/3): one global keep cannot fit both. Tolerances:
merged weights max |diff| <= 1e-4 max |ref| (f32 output of an f64
computation); gains relative 1e-4 of the summed drift."""
import numpy as np
import pytest

import libmerge
import reference as ref
from test_purify import _paired_one_se

T, D, K = 3, 24, 4
CANDS = [1.0, 0.9, 0.75, 0.5, 1 / 3, 0.25, 0.2]
SIGNAL = {"a.weight": 6, "b.weight": 8}   # truths 0.25 and 1/3


def planted(seed, rows=32):
    """Per layer, each task's inputs on its own `sig`-dim subspace; its task
    vector is signal there plus noise on the other tasks' subspaces."""
    rng = np.random.default_rng(seed)
    base = {name: np.zeros((D, D), np.float32) for name in SIGNAL}
    base["a.bias"] = np.zeros(D, np.float32)
    models = [dict(base) for _ in range(T)]
    xs = [{} for _ in range(T)]
    for name, sig in SIGNAL.items():
        q, _ = np.linalg.qr(rng.standard_normal((D, D)))
        subs = [q[:, t * sig:(t + 1) * sig] for t in range(T)]
        for t in range(T):
            others = np.hstack([subs[s] for s in range(T) if s != t])
            tau = (rng.standard_normal((D, sig)) @ subs[t].T
                   + 0.5 * rng.standard_normal((D, others.shape[1])) @ others.T)
            models[t] = dict(models[t], **{name: tau.astype(np.float32)})
            xs[t][name] = (rng.standard_normal((rows, sig)) @ subs[t].T
                           + 0.05 * rng.standard_normal((rows, D))).astype(np.float32)
    return base, models, xs


def stats_of(xs, **kw):
    s = libmerge.Stats(**kw)
    for t, x in enumerate(xs):
        for name, r in x.items():
            s.observe(t, name, r)
    return s


def reference_layer(base, models, xs, name, se_rule):
    """Per-fold drift of one layer at every candidate (the layer alone,
    uniform allocation), and the rule's choice, gain and SE on it."""
    b, ms = {name: base[name]}, [{name: m[name]} for m in models]
    per_fold = []
    for f in range(K):
        train = [{name: x[name][np.arange(len(x[name])) % K != f]} for x in xs]
        held = [{name: x[name][np.arange(len(x[name])) % K == f]} for x in xs]
        row = []
        for keep in CANDS:
            taus = ref.pave(b, ms, train, keep, "uniform")
            row.append(ref.heldout_drift({name: b[name] + sum(tv[name] for tv in taus)},
                                         ms, held))
        per_fold.append(row)
    return np.asarray(per_fold), _paired_one_se(per_fold, CANDS, se_rule)[0]


@pytest.mark.parametrize("se_rule", [1.0, 0.0])
def test_per_layer_keep_against_numpy(se_rule):
    base, models, xs = planted(3)
    report = {}
    got = libmerge.merge("task_arithmetic", base, models, stats=stats_of(xs, folds=K),
                         purify={"keep": "cv", "per_layer": True, "candidates": CANDS,
                                 "allocation": "uniform", "se_rule": se_rule,
                                 "report": report}, **{"lambda": 1.0})
    curves, want = {}, {}
    for name in SIGNAL:
        curves[name], want[name] = reference_layer(base, models, xs, name, se_rule)
    assert report["keep"] == want
    assert report["per_layer"] and report["objective"] == "%d-fold held-out drift" % K
    # Each layer keeps its own truth: a single ratio could not.
    assert want == {"a.weight": 0.25, "b.weight": 1 / 3}
    # The merge is PAVE at each layer's ratio.
    for name, keep in want.items():
        taus = ref.pave({name: base[name]}, [{name: m[name]} for m in models],
                        [{name: x[name]} for x in xs], keep, "uniform")
        want_w = base[name].astype(np.float64) + sum(tv[name] for tv in taus)
        scale = np.abs(want_w).max()
        assert np.abs(got[name] - want_w).max() <= 1e-4 * scale, name
    assert (got["a.bias"] == base["a.bias"]).all()
    # Gain over keep 1.0: per fold, the sum over layers (the drift is additive).
    one = CANDS.index(1.0)
    diff = sum(c[:, one] - c[:, CANDS.index(want[n])] for n, c in curves.items())
    total = sum(c.sum() for c in curves.values())
    assert abs(report["gain"] - diff.sum()) <= 1e-4 * total
    assert abs(report["gain_se"] - diff.std(ddof=1) / np.sqrt(K) * K) <= 1e-4 * total


def test_per_layer_same_bits_on_any_thread_count():
    base, models, xs = planted(7)
    outs = [libmerge.merge("task_arithmetic", base, models, stats=stats_of(xs, folds=K),
                           threads=threads,
                           purify={"keep": "cv", "per_layer": True, "candidates": CANDS})
            for threads in (1, 4)]
    for name in base:
        assert (outs[0][name] == outs[1][name]).all()


def test_per_layer_model_allocation_becomes_layer():
    """Under allocation "model" a layer's ranks depend on every layer's
    ratio, so the tuner switches to per-layer allocation: the result is
    the "layer" allocation's, bit for bit."""
    base, models, xs = planted(5)
    outs = []
    for allocation in ("model", "layer"):
        outs.append(libmerge.merge(
            "task_arithmetic", base, models, stats=stats_of(xs, folds=K),
            purify={"keep": "cv", "per_layer": True, "candidates": CANDS,
                    "allocation": allocation}))
    for name in base:
        assert (outs[0][name] == outs[1][name]).all()


def test_per_layer_needs_folds_and_cv():
    base, models, xs = planted(0)
    with pytest.raises(libmerge.InvalidArgumentError, match="folds"):
        libmerge.merge("task_arithmetic", base, models,
                       stats=stats_of(xs, heldout_fraction=0.25),
                       purify={"keep": "cv", "per_layer": True})
    with pytest.raises(ValueError, match="per_layer needs keep"):
        libmerge.merge("task_arithmetic", base, models, stats=stats_of(xs, folds=K),
                       purify={"keep": 0.9, "per_layer": True})
