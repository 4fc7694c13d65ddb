#!/usr/bin/python3
"""Which ESM route for the input embedding and the output head? Measured
on the realistic-suite architectures (tests/python/realistic: Llama-3 and
Phi-3 with an untied lm_head, Qwen2 and Gemma with a tied one), scaled
down (hidden 32, 2 layers, vocabulary 512) and actually trained:

- the base is pretrained on a generic next-token rule over the whole
  vocabulary (next = token + 1 mod V);
- task t fine-tunes it on its own slice of the vocabulary (128 tokens):
  at each position, output perm_t(token), so the embedding rows and head
  rows of that slice and the MLP have to move;
- ESM statistics: each fine-tune's own forward on its own inputs
  (libmerge.torch.collect_stats; for a tied head, the head's input rows
  are recorded under the embedding's name when the route asks for it).

Routes compared for the head (untied): `esd` (statistics, the exact
output/Gram route; the default when collect_stats hooks lm_head), `tsv`
(lm_head excluded from the statistics: TSV-M, the default for a 2-D
tensor without statistics), `mean` (mean_pattern: the task vectors'
mean, i.e. task arithmetic with lambda = alpha / T). For the embedding:
`tsv` (default: nn.Embedding gets no statistics) or `mean`. For a tied
embedding/head: `tsv`, `mean`, or `esd` with the head-input statistics.
`randomized` equals `esd` here: its sketch (min(k, rank) + 10 columns)
covers the whole rank at this size, so it is not a separate row.

Every other layer takes ESM's default route. alpha is chosen per route
on validation sequences from {0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1}; reported on test
sequences: task accuracy of the merged model normalised by each
fine-tune's own, and top-1 agreement with the fine-tune on its own inputs.

    LIBMERGE_LIBRARY=build/lib/libmerge.so PYTHONPATH=bindings/python \\
        /usr/bin/python3 bench/esm_route/embed_head.py [SEEDS] [ARCHS]

SEEDS and ARCHS are comma-separated (default 0,1,2 and llama3,phi3,qwen2,gemma).
"""
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "python"))

import libmerge  # noqa: E402
import libmerge.torch  # noqa: E402
from realistic import archs, forward  # noqa: E402

T, SLICE, SEQ = 4, 128, 16
ALPHAS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
ARCHS = ("llama3", "phi3", "qwen2", "gemma")
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def pretrain_batch(g, n=32):
    """Generic rule: next = token + 1 (mod V), every position."""
    x = torch.randint(0, archs.V, (n, SEQ + 1), generator=g)
    x = (x[:, :1] + torch.arange(SEQ + 1)) % archs.V
    return x[:, :-1], x[:, 1:]


def task_batch(t, perm, g, n=32):
    """Task t: tokens from its own slice; at position p (p >= 1) the model
    must output perm_t(x[p]) (targets for positions 1 .. SEQ-1)."""
    x = t * SLICE + torch.randint(0, SLICE, (n, SEQ), generator=g)
    y = t * SLICE + perm[x[:, 1:] - t * SLICE]
    return x, y


def logits_at(model, x, task):
    out = model(x)
    return out[:, 1:] if task else out


def train(model, batches, steps, lr, task):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        x, y = batches()
        opt.zero_grad()
        out = logits_at(model, x, task)
        torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]),
                                          y.reshape(-1)).backward()
        opt.step()
    return model


def state(model):
    return {k: v.detach().numpy().astype(np.float32).copy()
            for k, v in model.state_dict().items()}


def accuracy(cfg, tensors, x, y):
    m = forward.load(cfg, tensors, torch.float32)
    with torch.no_grad():
        pred = logits_at(m, x, True).argmax(-1)
    return pred, float((pred == y).float().mean())


def family(arch, seed):
    cfg = archs.CONFIGS[arch]
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    base = forward.build(cfg)
    train(base, lambda: pretrain_batch(g), 150, 3e-3, False)
    base_sd = state(base)
    perms = [torch.randperm(SLICE, generator=g) for _ in range(T)]
    fts = []
    for t in range(T):
        m = forward.build(cfg)
        m.load_state_dict({k: torch.as_tensor(v) for k, v in base_sd.items()})
        train(m, lambda t=t: task_batch(t, perms[t], g), 120, 3e-3, True)
        fts.append(m)
    return cfg, base_sd, fts, perms


def split(t, perm, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = task_batch(t, perm, g, n=64)
    return x, y


def collect(cfg, fts, perms, seed, head_route, tied):
    stats = libmerge.Stats()
    for t, m in enumerate(fts):
        x, _ = split(t, perms[t], seed)
        exclude = ["lm_head"] if head_route != "esd" else None
        libmerge.torch.collect_stats(m, [x], stats, model_index=t, exclude=exclude)
        if tied and head_route == "esd":     # head input rows under the embedding's name
            with torch.no_grad():
                h = m.model(x)
            stats.observe(t, EMBED, h.reshape(-1, h.shape[-1]).numpy().astype(np.float32))
    return stats


def routes(tied):
    """(head, embedding) routes; ("ta", "ta") is plain task arithmetic
    (lambda searched on the same grid), for reference."""
    if tied:
        return [("tied", r) for r in ("tsv", "mean", "esd")] + [("ta", "ta")]
    return [(h, e) for h in ("esd", "tsv", "mean") for e in ("tsv", "mean")] + [("ta", "ta")]


def evaluate(arch, seed):
    cfg, base_sd, fts, perms = family(arch, seed)
    tied = cfg["tie_word_embeddings"]
    ft_sd = [state(m) for m in fts]
    rows = []
    for head, emb in routes(tied):
        stats = (None if head == "ta" else
                 collect(cfg, fts, perms, 5_000 + seed, head if not tied else emb, tied))
        mean = []
        if tied and emb == "mean":
            mean.append(EMBED)
        if not tied:
            if head == "mean":
                mean.append(HEAD)
            if emb == "mean":
                mean.append(EMBED)
        kw = {"mean_pattern": "|".join(n.replace(".", "\\.") for n in mean)} if mean else {}
        best = None
        for a in ALPHAS:
            if head == "ta":
                merged = libmerge.merge("task_arithmetic", base_sd, ft_sd, **{"lambda": a})
            else:
                # the released scalings (default off since, docs/methods/esm.md)
                merged = libmerge.merge("esm", base_sd, ft_sd, stats=stats, alpha=a,
                                        inter_task=True, eig_weighting=True, inter_dim=True,
                                        layer_scaling=True, **kw)
            val = np.mean([accuracy(cfg, merged, *split(t, perms[t], 20_000 + seed))[1]
                           for t in range(T)])
            if best is None or val > best[0]:
                best = (val, a, merged)
        _, a, merged = best
        acc, agree, ft_acc = [], [], []
        for t in range(T):
            x, y = split(t, perms[t], 10_000 + seed)
            pred, acc_t = accuracy(cfg, merged, x, y)
            ft_pred, ft_acc_t = accuracy(cfg, ft_sd[t], x, y)
            acc.append(acc_t)
            ft_acc.append(ft_acc_t)
            agree.append(float((pred == ft_pred).float().mean()))
        rows.append((arch, head, emb, a, 100 * np.mean(acc) / np.mean(ft_acc),
                     100 * np.mean(agree), 100 * np.mean(ft_acc)))
    return rows


def main():
    seeds = [int(s) for s in sys.argv[1].split(",")] if len(sys.argv) > 1 else [0, 1, 2]
    arch_list = sys.argv[2].split(",") if len(sys.argv) > 2 else ARCHS
    torch.set_num_threads(1)
    print("# ESM routes for embeddings / output head; %d tasks, hidden %d, vocab %d, "
          "%d layers; seeds %s" % (T, archs.H, archs.V, archs.L, seeds))
    print("# arch head embed | alpha | normalized acc % | top-1 agreement % | "
          "fine-tuned acc %  (mean over seeds; alpha of the first seed)")
    t0 = time.time()
    for arch in arch_list:
        per_seed = [evaluate(arch, s) for s in seeds]
        for i, r in enumerate(per_seed[0]):
            vals = np.array([ps[i][4:] for ps in per_seed])
            sd = vals[:, 0].std(ddof=1) if len(seeds) > 1 else 0.0
            print("%-7s %-5s %-5s | %.2f | %5.1f +- %.1f | %5.1f | %5.1f"
                  % (r[0], r[1], r[2], r[3], vals[:, 0].mean(), sd,
                     vals[:, 1].mean(), vals[:, 2].mean()))
        sys.stdout.flush()
    print("# %.0f s" % (time.time() - t0))


if __name__ == "__main__":
    main()
