"""A label-free score of a merge (re-exported by libmerge.torch): how
closely it reproduces, on each task's unlabeled rows, the predictions of
that task's own fine-tuned model. Used by the NSC drivers' default scale
(docs/methods/nsc.md "Teacher scale") and usable by any search
(`libmerge.search`, `purify={"score": ...}`)."""
import itertools

import numpy as np
import torch

__all__ = ["teacher_score"]


def _inputs(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def run_batch(model, batch):
    """The model on one loader batch: a tensor, an (inputs, ...) tuple whose
    other items are ignored, or a dict of keyword arguments."""
    if isinstance(batch, dict):
        return model(**batch)
    return model(_inputs(batch))


def _logits(out):
    """The logits in a model's output: the tensor itself, `.logits` (Hugging
    Face outputs), a dict's "logits" or a tuple's first item."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, dict) and "logits" in out:
        return out["logits"]
    if isinstance(out, (tuple, list)) and out:
        return _logits(out[0])
    raise ValueError("teacher score: cannot find logits in a model output of type %s; "
                     "pass outputs=lambda task, out: <logits>" % type(out).__name__)


class TeacherScore:
    """score(state_dict) = -(1/K) sum_k mean over output rows of
    KL(softmax(teacher_k) || softmax(merge)) on task k's batches. The
    teachers' log-probabilities are computed once (f64, rows x classes per
    task); each call loads the candidate into `model`, runs every task's
    batches and puts the model's own weights and training flag back. Not
    thread-safe: a call changes `model` while it runs (one score per model
    at a time; the model must not be used elsewhere meanwhile)."""

    def __init__(self, model, teachers, task_batches, outputs, who="teacher score", names=None):
        if len(task_batches) != len(teachers):
            raise ValueError("%s: %d loaders for %d teachers" %
                             (who, len(task_batches), len(teachers)))
        if any(not b for b in task_batches):
            raise ValueError("%s: a task has no unlabeled batch" % who)
        self.model, self.batches, self.outputs, self.who = model, task_batches, outputs, who
        self.state = model.state_dict()
        # Only the tensors a candidate may change (None: all it holds) are
        # loaded, and each is saved before its first load.
        self.names, self.own = None if names is None else set(names), {}
        self.teachers = [self._log_probs(t, [k])[0] for k, t in enumerate(teachers)]

    def _log_probs(self, weights, tasks):
        """With `weights` loaded once: per task in `tasks`, the
        log-softmax over the last dimension of every output row, in f64."""
        unknown = [n for n in weights if n not in self.state]
        if unknown:
            raise ValueError("%s: the model has no tensor %r" % (self.who, unknown[0]))
        training = self.model.training
        try:
            with torch.no_grad():
                for n, v in weights.items():
                    if self.names is not None and n not in self.names:
                        continue
                    if n not in self.own:
                        self.own[n] = self.state[n].detach().clone()
                    self.state[n].copy_(torch.as_tensor(np.asarray(v)))
                self.model.eval()
                return [self._task_rows(task) for task in tasks]
        finally:
            with torch.no_grad():
                for n, v in self.own.items():
                    self.state[n].copy_(v)
            self.model.train(training)

    def _task_rows(self, task):
        rows = []
        for batch in self.batches[task]:
            out = run_batch(self.model, batch)
            z = _logits(self.outputs(task, out) if self.outputs is not None else out)
            z = z.detach().double()
            rows.append(torch.log_softmax(z.reshape(-1, z.shape[-1]), dim=1).cpu())
        return torch.cat(rows)

    def __call__(self, merged):
        qs = self._log_probs(merged, range(len(self.teachers)))
        kl = [float((p.exp() * (p - q)).sum(dim=1).mean()) for p, q in zip(self.teachers, qs)]
        return -float(np.mean(kl))


def teacher_score(model, teachers, unlabeled_loaders, *, outputs=None, batches=1):
    """A label-free score to maximise: score(state_dict) = minus the mean
    over tasks of the KL divergence from teacher k (task k's own fine-tuned
    model: a state dict, numpy or torch, of `model`'s tensors; those it
    leaves out keep `model`'s values) to the candidate merge, softmax over
    the last dimension of the outputs, averaged over every output row of
    the first `batches` batches of task k's loader. `outputs(task, out) ->
    logits` picks the logits from a model output (default: the output, its
    `.logits`, a dict's "logits" or a tuple's first item), e.g. to apply
    task k's head to a backbone's features. `model` is left as it was after
    every call."""
    teachers = list(teachers)
    return TeacherScore(model, teachers, first_batches(unlabeled_loaders, len(teachers),
                                                       batches, "teacher_score", "teachers"),
                        outputs, "teacher_score")


def first_batches(loaders, n_tasks, batches, who, what):
    """The first `batches` batches of each task's loader."""
    if len(loaders) != n_tasks:
        raise ValueError("%s: %d loaders for %d %s" % (who, len(loaders), n_tasks, what))
    if batches < 1:
        raise ValueError("%s: batches must be >= 1" % who)
    return [list(itertools.islice(loader, batches)) for loader in loaders]
