"""Merging and scoring for the quality benchmark: every strategy at its
paper default and at the scale libmerge.search picks on the validation
split (never the test split), full fine-tunes and LoRA adapters."""
import copy

import numpy as np
import torch

import libmerge
import libmerge.torch as lt

from models import accuracy

# label, method, paper-default parameters, scale parameter and search range,
# purify option. "cv" purification tunes the keep ratio on held-out rows.
FULL = [
    ("average", "average", {}, None, None),
    ("task_arithmetic", "task_arithmetic", {"lambda": 0.3}, ("lambda", 0.0, 1.5), None),
    ("ties", "ties", {"lambda": 1.0, "density": 0.2}, ("lambda", 0.0, 2.0), None),
    ("dare_ties", "dare_ties", {"lambda": 1.0, "density": 0.1}, ("lambda", 0.0, 2.0), None),
    ("tsv", "tsv", {"alpha": 1.0}, ("alpha", 0.0, 2.0), None),
    ("iso_c", "iso_c", {"alpha": 1.0}, ("alpha", 0.0, 2.0), None),
    ("iso_cts", "iso_cts", {"alpha": 1.0}, ("alpha", 0.0, 2.0), None),
    ("esm", "esm", {"alpha": 1.0}, ("alpha", 0.0, 2.0), None),
    ("task_arithmetic + purify 0.97", "task_arithmetic", {"lambda": 0.3}, ("lambda", 0.0, 1.5), 0.97),
    ("task_arithmetic + purify cv", "task_arithmetic", {"lambda": 0.3}, ("lambda", 0.0, 1.5), "cv"),
    ("ties + purify 0.97", "ties", {"lambda": 1.0, "density": 0.2}, ("lambda", 0.0, 2.0), 0.97),
    ("ties + purify cv", "ties", {"lambda": 1.0, "density": 0.2}, ("lambda", 0.0, 2.0), "cv"),
    ("tsv + purify 0.97", "tsv", {"alpha": 1.0}, ("alpha", 0.0, 2.0), 0.97),
    ("tsv + purify cv", "tsv", {"alpha": 1.0}, ("alpha", 0.0, 2.0), "cv"),
]
LORA = [
    ("task_arithmetic", "task_arithmetic", {"lambda": 0.3}, ("lambda", 0.0, 1.5), None),
    ("ties", "ties", {"lambda": 1.0, "density": 0.2}, ("lambda", 0.0, 2.0), None),
    ("knots", "knots", {"lambda": 1.0, "density": 0.2}, ("lambda", 0.0, 2.0), None),
    ("tsv", "tsv", {"alpha": 1.0}, ("alpha", 0.0, 2.0), None),
    ("esm", "esm", {"alpha": 1.0}, ("alpha", 0.0, 2.0), None),
    ("task_arithmetic + purify cv", "task_arithmetic", {"lambda": 0.3}, ("lambda", 0.0, 1.5), "cv"),
    ("nsc", "nsc", {}, None, None),
]


def collect(net, models, tasks, rows=256):
    """Stats of every fine-tuned model's layer inputs on its task's
    unlabeled training rows; a quarter of the rows held out for purify."""
    stats = libmerge.Stats(heldout_fraction=0.25)
    for i, (sd, task) in enumerate(zip(models, tasks)):
        m = copy.deepcopy(net)
        m.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()})
        lt.collect_stats(m, [torch.from_numpy(task["train"][0][:rows])], stats, model_index=i)
    return stats


def evaluate(net, merged, heads, tasks, split):
    return [accuracy(net, merged, h, t[split]) for h, t in zip(heads, tasks)]


def run_method(spec, net, base, models, heads, tasks, stats, adapters=None, nsc_steps=100,
               max_evals=8):
    """Test accuracies per task at the paper default and at the searched
    scale, and the scale found."""
    label, method, params, scale, purify = spec
    score = lambda merged: float(np.mean(evaluate(net, merged, heads, tasks, "val")))  # noqa: E731
    if method == "nsc":
        loaders = [[torch.from_numpy(t["val"][0])] for t in tasks]  # unlabeled
        sd = lt.nsc_merge(copy.deepcopy(net), adapters, loaders, steps=nsc_steps, lr=1e-3)
        merged = {k: v.numpy() for k, v in sd.items()}
        acc = evaluate(net, merged, heads, tasks, "test")
        return acc, acc, None
    opt = {}
    if purify is not None:
        opt["purify"] = {"keep": purify}
    kwargs = dict(stats=stats if (purify is not None or method == "esm") else None, **opt)
    default = libmerge.merge(method, base, models, **kwargs, **params)
    acc_default = evaluate(net, default, heads, tasks, "test")
    if scale is None:
        return acc_default, acc_default, None
    name, lo, hi = scale
    rest = {k: v for k, v in params.items() if k != name}
    best, _, _, merged = libmerge.search(method, base, models, score, param=name, lo=lo, hi=hi,
                                         max_evals=max_evals, **kwargs, **rest)
    return acc_default, evaluate(net, merged, heads, tasks, "test"), best
