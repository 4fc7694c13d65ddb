"""PyTorch drivers for NSC merging (re-exported by libmerge.torch):
gradient-based (AdamW through libmerge, the released method) and
gradient-free (SPSA)."""
import itertools

import numpy as np
import torch

from .nsc import NSC

__all__ = ["nsc_merge", "nsc_merge_spsa", "nsc_objective"]


class _Ratio(torch.autograd.Function):
    """Mean null-space ratio of a module's inputs, computed by libmerge,
    with libmerge's d(mean)/dz as the backward pass."""

    @staticmethod
    def forward(ctx, z, nsc, task, module):
        mean, grad = nsc.ratio(task, module, z.detach().float().cpu().numpy(), grad_scale=1.0)
        ctx.save_for_backward(torch.from_numpy(grad).to(z.device, z.dtype))
        return z.new_tensor(mean)

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return g * grad, None, None, None


def _inputs(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _run(model, batch):
    if isinstance(batch, dict):
        return model(**batch)
    return model(_inputs(batch))


class _Setup:
    """Binds NSC modules ("<module>.weight") to the model's submodules,
    remembers W0 and restores the model afterwards."""

    def __init__(self, model, nsc, target_modules):
        self.model, self.nsc = model, nsc
        self.weights = {}
        for name in nsc.modules:
            if not name.endswith(".weight"):
                raise ValueError("NSC: adapter target %r is not a '<module>.weight'" % name)
            module = model.get_submodule(name[:-len(".weight")])
            w = module.weight
            if tuple(w.shape) != nsc.shape(name):
                raise ValueError("NSC: %s is %s in the model but %s in the adapters" %
                                 (name, tuple(w.shape), nsc.shape(name)))
            self.weights[name] = w
        self.w0 = {n: w.detach().float().cpu().numpy().copy() for n, w in self.weights.items()}
        if target_modules is None:
            # Released default: the last quarter of the adapted layers.
            names = list(self.weights)
            target_modules = [n[:-len(".weight")] for n in names[len(names) - max(1, len(names) // 4):]]
        self.targets = [t[:-len(".weight")] if t.endswith(".weight") else t for t in target_modules]
        for t in self.targets:
            if t + ".weight" not in self.weights:
                raise ValueError("NSC: target module %r has no adapter (adapted: %s)" %
                                 (t, ", ".join(n[:-7] for n in self.weights)))
        self.requires_grad = {p: p.requires_grad for p in model.parameters()}
        self.training = model.training

    def materialize(self):
        with torch.no_grad():
            for name, w in self.weights.items():
                merged = self.nsc.materialize(name, self.w0[name])
                w.copy_(torch.from_numpy(merged).to(w.device, w.dtype))

    def hooks(self, on_input):
        handles = []
        for t in self.targets:
            module = self.model.get_submodule(t)
            handles.append(module.register_forward_pre_hook(
                lambda mod, inp, t=t: on_input(t + ".weight", inp[0])))
        return handles

    def merged_state_dict(self):
        self.materialize()
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def restore(self):
        with torch.no_grad():
            for name, w in self.weights.items():
                w.copy_(torch.from_numpy(self.w0[name]).to(w.device, w.dtype))
        for p, flag in self.requires_grad.items():
            p.requires_grad_(flag)
        self.model.train(self.training)


def _task_names(adapters):
    """Adapter paths as task names when every adapter is a path, else None
    ("task0", ...)."""
    paths = [str(a) for a in adapters
             if isinstance(a, (str, bytes)) or hasattr(a, "__fspath__")]
    return paths if len(paths) == len(adapters) else None


def _finish(nsc, adapters, coefficients):
    if coefficients is not None:
        nsc.save_coefficients(coefficients, _task_names(adapters))


def nsc_merge(model, adapters, unlabeled_loaders, target_modules=None, *, steps=100,
              lr=1e-3, init=None, weight_decay=0.01, report=None, coefficients=None):
    """NSC-merge LoRA `adapters` (one per task: PEFT directories,
    libmerge.LoraAdapter or {"<module>.weight": (A, B, scale)}) into the
    base `model` (its weights are W0; it is left unchanged). Each step draws
    one batch per task from `unlabeled_loaders` (cycled; a batch is a tensor,
    an (inputs, ...) tuple whose other items are ignored, or a dict of
    keyword arguments), measures the null-space ratio of the task's own A at
    `target_modules` (module names; default the last quarter of the adapted
    modules) in the merged model, back-propagates the mean over tasks and
    lets libmerge turn the weight gradients into an AdamW step on the
    coefficients. Returns the merged state dict; `report` (a dict) gets the
    objective per step and the final coefficients. `coefficients`: a path
    where the final coefficients are saved as a table (JSON,
    NSC.save_coefficients) for merge("nsc", ..., coefficients=path) and
    `lmerge run` with `merge_method: nsc`."""
    adapters = list(adapters)
    nsc = NSC(adapters, init=init, lr=lr, weight_decay=weight_decay)
    if len(unlabeled_loaders) != nsc.n_tasks:
        raise ValueError("nsc_merge: %d loaders for %d adapters" %
                         (len(unlabeled_loaders), nsc.n_tasks))
    setup = _Setup(model, nsc, target_modules)
    iters = [itertools.cycle(loader) for loader in unlabeled_loaders]
    history = []
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for w in setup.weights.values():
            w.requires_grad_(True)
        model.eval()
        for _ in range(steps):
            setup.materialize()
            total = 0.0
            for task, it in enumerate(iters):
                ratios = []
                handles = setup.hooks(lambda name, z: ratios.append(_Ratio.apply(z, nsc, task, name)))
                try:
                    _run(model, next(it))
                finally:
                    for h in handles:
                        h.remove()
                loss = torch.stack(ratios).mean() / nsc.n_tasks
                loss.backward()
                total += float(loss)
            for name, w in setup.weights.items():
                # A module after every target gets no gradient: its terms
                # only see weight decay, as in the released optimiser.
                if w.grad is not None:
                    nsc.accumulate(name, w.grad.detach().float().cpu().numpy())
                    w.grad = None
            nsc.step()
            history.append(total)
        merged = setup.merged_state_dict()
    finally:
        setup.restore()
    if report is not None:
        report["objective"] = history
        report["lambdas"] = {n: nsc.lambdas(n) for n in nsc.modules}
    _finish(nsc, adapters, coefficients)
    nsc.close()
    return merged


def nsc_objective(model, adapters_or_nsc, unlabeled_loaders, target_modules=None, batches=1):
    """The NSC objective (mean over tasks of the mean null-space ratio at the
    target modules) of `model` as it is, on `batches` batches per task."""
    nsc = adapters_or_nsc if isinstance(adapters_or_nsc, NSC) else NSC(adapters_or_nsc)
    setup = _Setup(model, nsc, target_modules)
    per_task = []
    with torch.no_grad():
        for task, loader in enumerate(unlabeled_loaders):
            values = []
            handles = setup.hooks(lambda name, z: values.append(
                nsc.ratio(task, name, z.float().cpu().numpy())))
            try:
                for batch in itertools.islice(loader, batches):
                    _run(model, batch)
            finally:
                for h in handles:
                    h.remove()
            per_task.append(np.mean(values))
    return float(np.mean(per_task))


def nsc_merge_spsa(model, adapters, unlabeled_loaders, target_modules=None, *, steps=100,
                   perturbation=0.05, lr=1e-2, init=None, seed=0, report=None,
                   coefficients=None):
    """Gradient-free NSC (libmerge's SPSA driver): no backward pass, two
    merged forward passes per task and step. Same arguments and result as
    `nsc_merge` (`coefficients` included); `report` gets the objective
    before and after and the per-step curve."""
    adapters = list(adapters)
    nsc = NSC(adapters, init=init, lr=lr, seed=seed)
    if len(unlabeled_loaders) != nsc.n_tasks:
        raise ValueError("nsc_merge_spsa: %d loaders for %d adapters" %
                         (len(unlabeled_loaders), nsc.n_tasks))
    setup = _Setup(model, nsc, target_modules)
    iters = [itertools.cycle(loader) for loader in unlabeled_loaders]
    batches = [next(it) for it in iters]

    def evaluate(task, step):
        # The same batch per task and step for L+ and L-, as SPSA needs.
        if evaluate.step != step:
            evaluate.step = step
            for t, it in enumerate(iters):
                batches[t] = next(it)
        setup.materialize()
        handles = setup.hooks(lambda name, z: nsc.observe(task, name, z.detach().float().cpu().numpy()))
        try:
            with torch.no_grad():
                _run(model, batches[task])
        finally:
            for h in handles:
                h.remove()
    evaluate.step = 0

    try:
        model.eval()
        first, last, curve = nsc.spsa(evaluate, steps=steps, perturbation=perturbation, lr=lr)
        merged = setup.merged_state_dict()
    finally:
        setup.restore()
    if report is not None:
        report.update(first=first, last=last, curve=curve,
                      lambdas={n: nsc.lambdas(n) for n in nsc.modules})
    _finish(nsc, adapters, coefficients)
    nsc.close()
    return merged
