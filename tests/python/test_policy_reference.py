"""The merge policy that moved from the bindings into the C library gives
the same numbers, bit for bit, as the Python code it replaced
(legacy_policy.py, a verbatim record of it): the held-out row split and
K-fold routing of Stats.observe, and purify={"keep": "cv"} tuning over a
held-out split, K folds or a host score, with and without a jointly tuned
scale. The C library's fold tuning adds a one-standard-error rule
(se_rule) and reports its gain: the comparisons turn the rule off
(se_rule=0, the legacy plain minimum) and leave out those two report keys,
which the legacy code never had."""
import numpy as np
import pytest

import libmerge
import legacy_policy as legacy
import reference as ref

# --- row routing -----------------------------------------------------------

BATCHES = [5, 7, 1, 4, 0, 9, 2]
KEYS = [(0, "a"), (1, "a"), (0, "b")]


def feed(stats, seed=0):
    rng = np.random.default_rng(seed)
    for n in BATCHES:
        for model, name in KEYS:
            stats.observe(model, name, rng.standard_normal((n, 4)).astype(np.float32))
    return stats


def same_stats(new, old):
    assert new.keys() == old.keys()
    for model, name in old.keys():
        g_new, n_new = new.get(model, name)
        g_old, n_old = old.get(model, name)
        assert n_new == n_old, (model, name)
        assert np.array_equal(g_new, g_old), (model, name)


# 0.4 -> 1/0.4 = 2.5 rounds to 2 (half to even), 0.6 -> 2, 0.9 -> every row.
@pytest.mark.parametrize("fraction", [0.25, 0.4, 0.3, 0.5, 0.6, 0.9, 0.125])
def test_heldout_split_matches_python(fraction):
    new = feed(libmerge.Stats(heldout_fraction=fraction))
    old = feed(legacy.Stats(heldout_fraction=fraction))
    same_stats(new, old)
    same_stats(new.heldout, old.heldout)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_fold_split_matches_python(k):
    new = feed(libmerge.Stats(folds=k))
    old = feed(legacy.Stats(folds=k))
    same_stats(new, old)
    assert len(new.folds) == len(old.folds) == k
    for a, b in zip(new.folds, old.folds):
        same_stats(a, b)


# --- keep="cv" tuning ------------------------------------------------------

T, D, SIG = 3, 12, 3
CANDS = [1.0, 0.75, 0.5, 0.25, 0.2]


def planted(seed=3, n_train=8, n_heldout=40):
    """test_purify's planted-noise problem, smaller."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    subs = [q[:, t * SIG:(t + 1) * SIG] for t in range(T)]
    base = {"w": (0.1 * rng.standard_normal((D, D))).astype(np.float32),
            "v": (0.1 * rng.standard_normal((D, D))).astype(np.float32),
            "b": np.zeros(D, np.float32)}
    models, train, held = [], [], []
    for t in range(T):
        others = np.hstack([subs[s] for s in range(T) if s != t])
        m = {}
        for name in ("w", "v"):
            tau = (rng.standard_normal((D, SIG)) @ subs[t].T
                   + 0.5 * rng.standard_normal((D, others.shape[1])) @ others.T)
            m[name] = (base[name] + tau).astype(np.float32)
        m["b"] = rng.standard_normal(D).astype(np.float32)
        models.append(m)

        def draw(n):
            return (rng.standard_normal((n, SIG)) @ subs[t].T
                    + 0.05 * rng.standard_normal((n, D))).astype(np.float32)
        train.append({"w": draw(n_train), "v": draw(n_train)})
        held.append({"w": draw(n_heldout), "v": draw(n_heldout)})
    return base, models, train, held


def observe(cls, rows, **kw):
    s = cls(**kw)
    for t, per in enumerate(rows):
        for name, x in per.items():
            s.observe(t, name, x)
    return s


def drift_score(models, held):
    hs = [{k: v for k, v in h.items()} for h in held]

    def score(merged):
        return -sum(ref.heldout_drift({"w": merged[k]}, [{"w": m[k]} for m in models],
                                      [{"w": h[k]} for h in hs]) for k in ("w", "v"))
    return score


def without_gain(report):
    return {k: v for k, v in report.items() if k not in ("gain", "gain_se")}


def both(method, case, **params):
    """(new merged, new report), (old merged, old report) for one case."""
    base, models, train, held = planted()
    out = []
    for cls, merge in ((libmerge.Stats, libmerge.merge), (legacy.Stats, legacy.merge)):
        kw = {"heldout_fraction": 0.5} if case.get("split") == "fraction" else \
             {"folds": 3} if case.get("split") == "folds" else {}
        stats = observe(cls, train, **kw)
        purify = {"keep": "cv", "candidates": case.get("candidates", CANDS),
                  "allocation": case.get("allocation", "uniform")}
        if merge is libmerge.merge:
            purify["se_rule"] = 0
        report = {}
        purify["report"] = report
        if case.get("heldout"):
            purify["heldout"] = observe(cls, held)
        if case.get("folds"):
            purify["folds"] = [observe(cls, [{k: v[f::2] for k, v in h.items()}
                                             for h in held]) for f in range(2)]
        if case.get("score"):
            purify["score"] = drift_score(models, held)
        if case.get("scale"):
            purify["scale"] = case["scale"]
        merged = merge(method, base, models, stats=stats, purify=purify, **params)
        out.append((merged, without_gain(report)))
    return out


CASES = {
    "heldout": {"heldout": True},
    "fraction": {"split": "fraction"},
    "stats_folds": {"split": "folds"},
    "explicit_folds": {"folds": True},
    "score": {"score": True},
    "heldout_scale": {"heldout": True, "scale": ("lambda", [0.5, 1.0, 1.5])},
    "folds_scale": {"split": "folds", "scale": ("lambda", [1.5, 0.5, 1.0]),
                    "allocation": "model"},
    "score_scale": {"score": True, "scale": ("lambda", [0.5, 1.0])},
    "heldout_over_folds": {"heldout": True, "folds": True, "allocation": "layer"},
    "score_over_heldout": {"score": True, "heldout": True},
    "explicit_over_stats": {"split": "folds", "heldout": True},
    "duplicate_candidates": {"heldout": True, "candidates": [0.5, 1.0, 0.5, 0.25]},
    # Neither choice is the first or the truth: the joint rule decides.
    "coarse_scale": {"heldout": True, "candidates": [1.0, 0.9, 0.6, 0.4],
                     "scale": ("lambda", [2.0, 0.3, 0.6])},
    "coarse_folds_scale": {"split": "folds", "candidates": [1.0, 0.9, 0.6, 0.4],
                           "scale": ("lambda", [2.0, 0.3, 0.6])},
    "coarse_score_scale": {"score": True, "candidates": [1.0, 0.9, 0.6, 0.4],
                           "scale": ("lambda", [2.0, 0.3, 0.6])},
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_cv_tuning_matches_python(name):
    (new, new_report), (old, old_report) = both("task_arithmetic", CASES[name],
                                                **{"lambda": 1.0})
    assert new_report == old_report
    assert list(new) == list(old)
    for k in old:
        assert np.array_equal(new[k], old[k]), k


def test_cv_tuning_esm_scale_matches_python():
    case = {"split": "folds", "scale": ("alpha", [0.5, 1.0])}
    (new, new_report), (old, old_report) = both("esm", case)
    assert new_report == old_report
    for k in old:
        assert np.array_equal(new[k], old[k]), k


def test_fixed_keep_report_matches_python():
    base, models, train, _ = planted()
    reports = []
    for cls, merge in ((libmerge.Stats, libmerge.merge), (legacy.Stats, legacy.merge)):
        report = {}
        merge("ties", base, models, stats=observe(cls, train),
              purify={"keep": 0.6, "report": report})
        reports.append(report)
    assert reports[0] == reports[1] == {"keep": 0.6}
