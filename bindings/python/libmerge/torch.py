"""Collecting activation statistics from a PyTorch model (optional: needs
torch; `import libmerge.torch`).

    import libmerge, libmerge.torch
    stats = libmerge.Stats()
    for t, (model, loader) in enumerate(zip(finetuned_models, unlabeled_loaders)):
        libmerge.torch.collect_stats(model, loader, stats, model_index=t,
                                     batches=1)
    merged = libmerge.merge("esm", base_sd, [m.state_dict() ...], stats=stats)

Forward hooks record the rows entering every chosen nn.Linear (the
statistics key is "<module name>.weight", the weight's state-dict name) and
nn.MultiheadAttention in-projection ("<name>.in_proj_weight", the query
input, as the released ESM code does). Labels are never used.
"""
import re

import numpy as np
import torch

from . import Stats

from .torch_nsc import (nsc_merge, nsc_merge_spsa, nsc_objective, nsc_scale_search,
                        nsc_teacher_score)
from .torch_teacher import teacher_score

__all__ = ["collect_stats", "state_dict_to_numpy", "nsc_merge", "nsc_merge_spsa",
           "nsc_objective", "nsc_scale_search", "nsc_teacher_score", "teacher_score"]


def _rows(x):
    x = x.detach()
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x.reshape(-1, x.shape[-1]).cpu().numpy().astype(np.float32, copy=False)


def _pattern_list(patterns, what):
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise ValueError("libmerge.torch.collect_stats: %s pattern %r is "
                             "not a regular expression: %s" % (what, p, e)) from None
    return out


def collect_stats(model, batches, stats=None, *, model_index=0, modules=None,
                  max_batches=None, prefix="", include=None, exclude=None):
    """Run `batches` (an iterable of inputs, or of (inputs, labels) pairs
    whose labels are ignored) through `model` in eval mode without gradients
    and add each hooked layer's input rows to `stats` (a new Stats if None)
    under `model_index`. `modules`: names of the modules to hook (default:
    every nn.Linear and nn.MultiheadAttention). `include` / `exclude`:
    regular expressions (a string or a list) searched in each module name;
    a module is hooked when it matches some `include` pattern (all do when
    None) and no `exclude` pattern, e.g. `exclude=["lm_head"]` keeps the
    output head out of ESM's essential-subspace route. `prefix` is prepended
    to the state-dict names. Returns the Stats."""
    stats = stats if stats is not None else Stats()
    handles = []
    wanted = set(modules) if modules is not None else None
    inc = _pattern_list(include, "include")
    exc = _pattern_list(exclude, "exclude")

    def linear_hook(name):
        def hook(module, inputs, output):
            stats.observe(model_index, prefix + name + ".weight", _rows(inputs[0]))
        return hook

    def attention_hook(name):
        # torch 1.13 hooks see positional inputs only: the query is first.
        def hook(module, inputs, output):
            if not inputs:
                raise RuntimeError("libmerge.torch: %s was called with keyword "
                                   "arguments only; pass the query "
                                   "positionally" % name)
            query = inputs[0]
            if not getattr(module, "batch_first", False):
                query = query.transpose(0, 1)
            stats.observe(model_index, prefix + name + ".in_proj_weight", _rows(query))
        return hook

    for name, module in model.named_modules():
        if wanted is not None and name not in wanted:
            continue
        if inc and not any(p.search(name) for p in inc):
            continue
        if any(p.search(name) for p in exc):
            continue
        if isinstance(module, torch.nn.Linear) and not isinstance(
                module, torch.nn.modules.linear.NonDynamicallyQuantizableLinear):
            handles.append(module.register_forward_hook(linear_hook(name)))
        elif isinstance(module, torch.nn.MultiheadAttention):
            handles.append(module.register_forward_hook(attention_hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return stats


def state_dict_to_numpy(state_dict):
    """float32/float16/float64 numpy arrays from a state dict (bfloat16
    becomes libmerge.BFloat16Array); non-float entries are skipped."""
    from . import BFloat16Array
    out = {}
    for k, v in state_dict.items():
        if not torch.is_floating_point(v):
            continue
        v = v.detach().cpu().contiguous()
        if v.dtype == torch.bfloat16:
            out[k] = BFloat16Array.from_bits(v.view(torch.int16).numpy().view(np.uint16))
        else:
            out[k] = v.numpy()
    return out
