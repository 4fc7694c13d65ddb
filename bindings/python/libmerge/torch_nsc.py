"""PyTorch drivers for NSC merging (re-exported by libmerge.torch):
gradient-based (AdamW through libmerge, the released method) and
gradient-free (SPSA)."""
import itertools

import numpy as np
import torch

from . import _merge
from .nsc import NSC, LoraAdapter
from .torch_teacher import TeacherScore, first_batches, run_batch as _run

__all__ = ["nsc_merge", "nsc_merge_spsa", "nsc_objective", "nsc_scale_search",
           "nsc_teacher_score"]

SCALE_RULES = ("teacher", "fixed")


def _block(name):
    """The block index of a module path: its first integer component
    ("model.layers.30.self_attn.v_proj" -> 30), or None."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def default_targets(modules):
    """The paper's target layers: every adapted module in the last quarter
    of the transformer blocks (max(1, B // 4) of B blocks; a block is the
    first integer component of the module path). The released LLaVA script
    targets blocks 24-31 of 32 too, but only their v_proj adapters: pass
    target_modules to reproduce it. Modules without a block index: the
    last quarter of the adapted modules, in the adapters' order."""
    names = [n[:-len(".weight")] for n in modules]
    blocks = sorted({b for b in map(_block, names) if b is not None})
    if blocks:
        last = set(blocks[len(blocks) - max(1, len(blocks) // 4):])
        return [n for n in names if _block(n) in last]
    return names[len(names) - max(1, len(names) // 4):]


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
            target_modules = default_targets(list(self.weights))
        self.targets = [t[:-len(".weight")] if t.endswith(".weight") else t for t in target_modules]
        for t in self.targets:
            if t + ".weight" not in self.weights:
                raise ValueError("NSC: target module %r has no adapter (adapted: %s)" %
                                 (t, ", ".join(n[:-7] for n in self.weights)))
        self.requires_grad = {p: p.requires_grad for p in model.parameters()}
        self.training = model.training
        # A freshly trained model still holds its last gradients: the first
        # backward would add to them. Kept aside and given back at restore.
        self.grads = {n: w.grad for n, w in self.weights.items()}
        for w in self.weights.values():
            w.grad = None

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

    def after_every_target(self, batch):
        """The adapted modules whose coefficients cannot change any target's
        input: first called at or after the last call of a target in one
        forward pass over `batch` (or never called). Their gradient is
        exactly zero, so SPSA must not perturb them."""
        calls = []
        handles = [self.model.get_submodule(n[:-len(".weight")]).register_forward_pre_hook(
            lambda mod, inp, n=n: calls.append(n)) for n in self.weights]
        try:
            with torch.no_grad():
                _run(self.model, batch)
        finally:
            for h in handles:
                h.remove()
        targets = {t + ".weight" for t in self.targets}
        last = max((i for i, n in enumerate(calls) if n in targets), default=-1)
        if last < 0:
            raise ValueError("NSC: no target module (%s) ran in the forward pass" %
                             ", ".join(self.targets))
        first = {}
        for i, n in enumerate(calls):
            first.setdefault(n, i)
        return [n for n in self.weights if first.get(n, len(calls)) >= last]

    def merged_state_dict(self):
        self.materialize()
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def restore(self):
        with torch.no_grad():
            for name, w in self.weights.items():
                w.copy_(torch.from_numpy(self.w0[name]).to(w.device, w.dtype))
        for name, w in self.weights.items():
            w.grad = self.grads[name]
        for p, flag in self.requires_grad.items():
            p.requires_grad_(flag)
        self.model.train(self.training)


def _objective(setup, nsc, batches):
    """Mean over tasks of the mean null-space ratio at the targets, with
    the model as it is, on each task's list of batches."""
    per_task = []
    with torch.no_grad():
        for task, task_batches in enumerate(batches):
            values = []
            handles = setup.hooks(lambda name, z: values.append(
                nsc.ratio(task, name, z.float().cpu().numpy())))
            try:
                for batch in task_batches:
                    _run(setup.model, batch)
            finally:
                for h in handles:
                    h.remove()
            per_task.append(np.mean(values))
    return float(np.mean(per_task))


class _EarlyStop:
    """Held-out early stopping (not in the released code): the objective on
    fixed unseen batches, measured at the start and every `eval_every`
    steps; the run stops after `patience` checks without a new best and
    the best coefficients seen (the start included) are kept."""

    def __init__(self, setup, nsc, loaders, eval_every, patience, batches):
        if len(loaders) != nsc.n_tasks:
            raise ValueError("NSC: %d held-out loaders for %d adapters" %
                             (len(loaders), nsc.n_tasks))
        if eval_every < 1 or patience < 1 or batches < 1:
            raise ValueError("NSC: eval_every, patience and heldout_batches must be >= 1")
        self.setup, self.nsc = setup, nsc
        self.batches = [list(itertools.islice(loader, batches)) for loader in loaders]
        if any(not b for b in self.batches):
            raise ValueError("NSC: a held-out loader is empty")
        self.eval_every, self.patience = eval_every, patience
        self.curve, self.best, self.best_step, self.misses = [], None, 0, 0
        self.best_lambdas = None

    def check(self, step):
        """Measures after `step` steps; True when the run should stop."""
        self.setup.materialize()
        value = _objective(self.setup, self.nsc, self.batches)
        self.curve.append((step, value))
        if self.best is None or value < self.best:
            self.best, self.best_step, self.misses = value, step, 0
            self.best_lambdas = {n: self.nsc.lambdas(n) for n in self.nsc.modules}
        else:
            self.misses += 1
        return self.misses >= self.patience

    def keep_best(self, report):
        for n, values in self.best_lambdas.items():
            self.nsc.set_lambdas(n, values)
        if report is not None:
            report.update(heldout=self.curve, best_step=self.best_step)


def _early_stop(setup, nsc, heldout_loaders, eval_every, patience, heldout_batches):
    if heldout_loaders is None:
        return None
    return _EarlyStop(setup, nsc, heldout_loaders, eval_every, patience, heldout_batches)


def _task_names(adapters):
    """Adapter paths as task names when every adapter is a path, else None
    ("task0", ...)."""
    paths = [str(a) for a in adapters
             if isinstance(a, (str, bytes)) or hasattr(a, "__fspath__")]
    return paths if len(paths) == len(adapters) else None


def _finish(nsc, adapters, coefficients):
    if coefficients is not None:
        nsc.save_coefficients(coefficients, _task_names(adapters))


def _lora(a):
    if isinstance(a, LoraAdapter):
        return a
    if isinstance(a, (str, bytes)) or hasattr(a, "__fspath__"):
        return LoraAdapter.from_peft(a)
    return LoraAdapter(a)


def nsc_scale_search(model, adapters, coefficients, score, *, lo=0.0, hi=1.5, tol=0.01,
                     max_evals=15, widen=4, threads=0):
    """One global scale alpha for NSC's coefficients, chosen on validation
    (not in the released code; docs/methods/nsc.md "Safe NSC"): merges
    W0 + alpha * sum_k c[m][k] s_k B_k A_k (the `nsc` strategy's `alpha`)
    and maximises `score(state_dict) -> float` (numpy state dict; e.g.
    accuracy on a labeled validation split) by libmerge.search, the search
    every other method's scale gets: golden section on [lo, hi] (task
    arithmetic's bracket), moved past an edge at most `widen` times.
    `coefficients`: {"<module>.weight": one value per task} (a driver's
    report["lambdas"]) or a table path (the drivers' `coefficients=`).
    `model` gives W0 and is not changed. Returns libmerge.search's
    SearchResult: (alpha, best score, curve, merged state dict)."""
    return _alpha_search(model, adapters, coefficients, score, None, lo=lo, hi=hi, tol=tol,
                         max_evals=max_evals, widen=widen, threads=threads)


def _f32_base(model, names):
    """W0 as f32 numpy, every tensor or only `names` (the adapted ones: a
    language model's other tensors need not be copied)."""
    sd = model.state_dict()
    return {k: sd[k].detach().float().cpu().numpy() for k in (sd if names is None else names)}


def _alpha_search(model, adapters, coefficients, score, names, lo=0.0, hi=1.5, tol=0.01,
                  max_evals=15, widen=4, threads=0):
    """nsc_scale_search (the same defaults), merging only `names` when
    given (each candidate then holds just those tensors)."""
    if isinstance(coefficients, (str, bytes)) or hasattr(coefficients, "__fspath__"):
        given = dict(coefficients=str(coefficients))
    else:
        given = {"lambda": {k: [float(x) for x in v] for k, v in coefficients.items()}}
    return _merge.search("nsc", _f32_base(model, names), [_lora(a) for a in adapters], score,
                         param="alpha", lo=lo, hi=hi, tol=tol, max_evals=max_evals,
                         widen=widen, threads=threads, **given)


def _adapter_teachers(model, adapters):
    """Task k's own fine-tuned weights, W0 + s_k B_k A_k (its adapter
    alone, merged by the library), for the adapted tensors."""
    adapters = [_lora(a) for a in adapters]
    names = _adapted(adapters)
    missing = [n for n in names if n not in model.state_dict()]
    if missing:
        raise ValueError("NSC teacher scale: the model has no tensor %s" % missing[0])
    base = _f32_base(model, names)
    teachers = [_merge.merge("nsc", base, [a], **{"lambda": {n: [1.0] for n in a.factors}})
                for a in adapters]
    return teachers, names


def _adapted(adapters):
    return sorted({n for a in adapters for n in a.factors})


def _nsc_teacher(model, adapters, task_batches, outputs, who):
    teachers, names = _adapter_teachers(model, adapters)
    return TeacherScore(model, teachers, task_batches, outputs, who, names=names)


def nsc_teacher_score(model, adapters, unlabeled_loaders, *, outputs=None, batches=1):
    """libmerge.torch.teacher_score with each adapter's own model (W0 +
    s_k B_k A_k) as task k's teacher: the label-free score the NSC drivers
    search their global scale on by default (docs/methods/nsc.md "Teacher
    scale"). Only the adapted tensors of a candidate are loaded."""
    adapters = list(adapters)
    return _nsc_teacher(model, adapters, first_batches(unlabeled_loaders, len(adapters), batches,
                                                       "nsc_teacher_score", "adapters"),
                        outputs, "nsc_teacher_score")


def _check_scale(scale_rule, scale_score, scale_batches):
    if scale_rule not in SCALE_RULES:
        raise ValueError("NSC: scale_rule must be one of %s, not %r" %
                         (", ".join(SCALE_RULES), scale_rule))
    if scale_rule == "fixed" and scale_score is not None:
        raise ValueError("NSC: scale_score searches the scale; scale_rule='fixed' keeps it")
    if scale_batches < 1:
        raise ValueError("NSC: scale_batches must be >= 1")


class _Recorded:
    """A loader cycled as the drivers draw from it, keeping its first `keep`
    batches for the teacher scale (one-shot iterators included, without
    drawing anything the optimiser would not)."""

    def __init__(self, loader, keep):
        self.it, self.keep, self.kept = itertools.cycle(loader), keep, []

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.it)
        if len(self.kept) < self.keep:
            self.kept.append(batch)
        return batch

    def first(self):
        while len(self.kept) < self.keep:
            next(self)
        return self.kept


def _final_scale(model, nsc, adapters, iters, scale_rule, scale_score, outputs, report):
    """None at scale_rule="fixed", else the merge scaled by the alpha
    searched on `scale_score` (labels) or, by default, the teacher score on
    the first batches the optimiser drew per task (`iters`)."""
    if report is not None:
        report["scale_rule"] = "score" if scale_score is not None else scale_rule
    if scale_score is None and scale_rule == "fixed":
        return None
    if scale_score is not None:
        return _scaled(model, nsc, adapters, scale_score, report)
    teacher = _nsc_teacher(model, adapters, [it.first() for it in iters], outputs,
                           "NSC teacher scale")
    return _scaled(model, nsc, adapters, teacher, report, names=sorted(teacher.names))


def _scaled(model, nsc, adapters, scale_score, report, names=None):
    """The driver's result with its coefficients times the alpha
    nsc_scale_search picks on `scale_score` (the coefficients in `nsc`
    scaled too, so a saved table gives the same merge). With `names` the
    candidates hold only those tensors (a score that loads what it is
    given); the others are the model's own."""
    lambdas = {n: nsc.lambdas(n) for n in nsc.modules}
    res = _alpha_search(model, adapters, lambdas, scale_score, names)
    alpha = res[0]
    for n, v in lambdas.items():
        nsc.set_lambdas(n, alpha * v)
    if report is not None:
        report.update(alpha=alpha, scale_curve=res[2], unscaled_lambdas=lambdas)
    sd = model.state_dict()
    return {k: torch.from_numpy(np.asarray(res[3][k])).to(v.dtype) if k in res[3]
            else v.detach().clone() for k, v in sd.items()}


def nsc_merge(model, adapters, unlabeled_loaders, target_modules=None, *, steps=100,
              lr=1e-3, init=None, weight_decay=0.01, report=None, coefficients=None,
              lambda_min=0.0, lambda_max=None, trust_radius=None,
              heldout_loaders=None, eval_every=10, patience=3, heldout_batches=1,
              scale_score=None, scale_rule="teacher", outputs=None, scale_batches=1):
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
    `lmerge run` with `merge_method: nsc`.

    Safeguards (not in the released code; docs/methods/nsc.md): every
    update is projected onto [lambda_min, lambda_max] (default [0, inf);
    lambda_min=-inf is the released optimiser) and onto the initial
    coefficients +- trust_radius (default unbounded). With
    `heldout_loaders` (one per task, batches not used for training) the
    objective on their first `heldout_batches` batches is measured at the
    start and every `eval_every` steps; the run stops after `patience`
    checks without improvement and returns the best coefficients seen, so
    it never ends above its start on those batches (report: "heldout",
    "best_step").

    Scale (not in the released code; docs/methods/nsc.md "Teacher
    scale"): after the optimisation one global alpha times every
    coefficient is searched (nsc_scale_search) and the scaled merge is
    returned; report gets "alpha", "scale_curve", "unscaled_lambdas" and
    "scale_rule", "lambdas" and `coefficients` the scaled values. What it
    maximises: `scale_score` (score(state_dict) -> float, e.g. accuracy on
    a labeled validation split) when given; else, by default
    (scale_rule="teacher"), the label-free nsc_teacher_score on the first
    `scale_batches` batches the optimiser drew from each task's loader
    (`outputs(task, out) -> logits` as there). scale_rule="fixed" keeps the
    optimised coefficients as they are: the released method."""
    adapters = list(adapters)
    _check_scale(scale_rule, scale_score, scale_batches)
    nsc = NSC(adapters, init=init, lr=lr, weight_decay=weight_decay, lambda_min=lambda_min,
              lambda_max=lambda_max, trust_radius=trust_radius)
    if len(unlabeled_loaders) != nsc.n_tasks:
        raise ValueError("nsc_merge: %d loaders for %d adapters" %
                         (len(unlabeled_loaders), nsc.n_tasks))
    setup = _Setup(model, nsc, target_modules)
    iters = [_Recorded(loader, scale_batches) for loader in unlabeled_loaders]
    history = []
    try:
        model.eval()
        stop = _early_stop(setup, nsc, heldout_loaders, eval_every, patience, heldout_batches)
        if stop:
            stop.check(0)
        for p in model.parameters():
            p.requires_grad_(False)
        for w in setup.weights.values():
            w.requires_grad_(True)
        for step in range(1, steps + 1):
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
            if stop and (step % eval_every == 0 or step == steps) and stop.check(step):
                break
        if stop:
            stop.keep_best(report)
        merged = setup.merged_state_dict()
    finally:
        setup.restore()
    scaled = _final_scale(model, nsc, adapters, iters, scale_rule, scale_score, outputs, report)
    merged = merged if scaled is None else scaled
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
    return _objective(setup, nsc, [list(itertools.islice(loader, batches))
                                   for loader in unlabeled_loaders])


def nsc_merge_spsa(model, adapters, unlabeled_loaders, target_modules=None, *, steps=100,
                   perturbation=0.05, lr=1e-3, init=None, seed=0, report=None,
                   coefficients=None, lambda_min=0.0, lambda_max=None, trust_radius=None,
                   freeze_after_targets=True, heldout_loaders=None, eval_every=10,
                   patience=3, heldout_batches=1, scale_score=None, scale_rule="teacher",
                   outputs=None, scale_batches=1):
    """Gradient-free NSC (libmerge's SPSA driver): no backward pass, two
    merged forward passes per task and step. Same arguments and result as
    `nsc_merge` (`coefficients`, the safeguards and held-out early stopping
    included); `report` gets the objective before and after, the per-step
    curve and the frozen modules; `scale_score`, `scale_rule`, `outputs`
    and `scale_batches` as in `nsc_merge`.
    `freeze_after_targets`: modules that run
    at or after the last target (found by one forward pass) cannot change
    the objective, so their coefficients are neither perturbed nor moved
    (they keep `init`)."""
    adapters = list(adapters)
    _check_scale(scale_rule, scale_score, scale_batches)
    nsc = NSC(adapters, init=init, lr=lr, seed=seed, lambda_min=lambda_min,
              lambda_max=lambda_max, trust_radius=trust_radius)
    if len(unlabeled_loaders) != nsc.n_tasks:
        raise ValueError("nsc_merge_spsa: %d loaders for %d adapters" %
                         (len(unlabeled_loaders), nsc.n_tasks))
    setup = _Setup(model, nsc, target_modules)
    iters = [_Recorded(loader, scale_batches) for loader in unlabeled_loaders]
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

    frozen = []
    try:
        model.eval()
        if freeze_after_targets:
            setup.materialize()
            frozen = setup.after_every_target(batches[0])
            for name in frozen:
                nsc.set_frozen(name)
        stop = _early_stop(setup, nsc, heldout_loaders, eval_every, patience, heldout_batches)
        if stop:
            stop.check(0)
        chunk = eval_every if stop else steps
        first, last, curve, done = None, None, [], 0
        while done < steps:
            n = min(chunk, steps - done)
            f, last, c = nsc.spsa(evaluate, steps=n, perturbation=perturbation, lr=lr,
                                  first_step=done)
            first = f if first is None else first
            curve += c
            done += n
            if stop and stop.check(done):
                break
        if stop:
            stop.keep_best(report)
        merged = setup.merged_state_dict()
    finally:
        setup.restore()
    scaled = _final_scale(model, nsc, adapters, iters, scale_rule, scale_score, outputs, report)
    merged = merged if scaled is None else scaled
    if report is not None:
        report.update(first=first, last=last, curve=curve, frozen=frozen,
                      lambdas={n: nsc.lambdas(n) for n in nsc.modules})
    _finish(nsc, adapters, coefficients)
    nsc.close()
    return merged
