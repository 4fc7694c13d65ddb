"""Merge-quality benchmark: two small backbones pretrained here (an MLP,
fine-tuned fully and with LoRA, and a CLIP-style ViT, fine-tuned fully
under fitted linear-probe heads and, as CLIP is, under weak zero-shot-style
heads) on 10 tasks from Fashion-MNIST and digits, merged by
every strategy at the paper default and at the best scale found on the
validation split; absolute and normalized (merged / fine-tuned) test
accuracy for 4, 8 and all tasks. Writes docs/benchmarks/quality.md and
quality.png.

usage: LIBMERGE_LIBRARY=build/lib/libmerge.so.1 PYTHONPATH=bindings/python \\
       /usr/bin/python3 bench/quality/run.py [--smoke] [--out DIR] [--kinds full,lora,vit,vit-zs]
       [--threads N]
Needs python3-torch, python3-sklearn, dataset-fashion-mnist (and
python3-matplotlib for the plot). --smoke: 3 digits tasks, few epochs."""
import argparse
import json
import os
import sys
import time
import types

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import merges  # noqa: E402
import models  # noqa: E402
import report  # noqa: E402
import tasks as tasklib  # noqa: E402


# Merges per scale search: the released ESM default (golden section on
# [0, 2], tol 0.01), for every method alike.
MAX_EVALS = 15
# Fine-tuning steps (batches of 128) for every task: 10 passes over the
# Fashion-MNIST tasks' 3000 training images; --smoke: 10 passes over 400.
FINETUNE_STEPS = {False: 240, True: 32}
SMOKE_METHODS = ("average", "task_arithmetic", "tsv", "esm", "task_arithmetic + purify 0.97",
                 "knots", "nsc", "esm, clip-vit preset", "iso_c", "esm without scaling")
# --smoke: rows left out of some tables to bound the test's CPU time; each
# still runs in another table (purify 0.97 on the MLP's full fine-tunes,
# the ESM ablations on the probe-head ViT, TSV-M on every full fine-tune).
# They were the slowest rows (LoRA TSV-M about 20 s, the two ViT-128 ESM
# rows about 30 s, at load 4).
SMOKE_SKIP = {"lora": ("tsv", "task_arithmetic + purify 0.97"),
              "vit": ("task_arithmetic + purify 0.97",),
              "vit-zs": ("esm, clip-vit preset", "esm without scaling")}


# Per kind of table: backbone, frozen head (models.HEADS), fine-tuning.
KINDS = {"full": ("mlp", "probe", "full"), "lora": ("mlp", "probe", "lora"),
         "vit": ("vit", "probe", "full"), "vit-zs": ("vit128", "prototype", "full")}


def _cached(path, build):
    if os.path.exists(path):
        return torch.load(path)
    value = build()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Written whole or not at all: several runs may share a cache.
    torch.save(value, path + ".part")
    os.replace(path + ".part", path)
    return value


def _pretrain(smoke, backbone):
    images, labels = tasklib.fashion_mnist("t10k")
    if smoke:
        images, labels = images[:4000], labels[:4000]
    epochs = dict(mlp=(20, 5), vit=(10, 2), vit128=(10, 2))[backbone][smoke]
    return models.pretrain(images, labels, epochs=epochs, backbone=backbone)


# Tasks in run.py's tables (4, 8 and all 10); seeds.py also takes the
# ESM paper's counts, up to all of tasks.TASKS.
TABLE_TASKS = 10
# --smoke: digits tasks only (small, quick to learn); the tables use 3,
# variants.py takes up to 4. Only the tasks a run asks for are fine-tuned.
SMOKE_TASKS = ["digits", "digits-inverted", "digits-parity", "digits-rot180-mod3"]


def prepare(smoke, cache, backbone, head, seed=0, n_tasks=TABLE_TASKS):
    """The first `n_tasks` tasks, the pretrained backbone and every
    fine-tune under `head` (cached per task; the pretrained backbone is
    shared by both heads). The MLP under probe heads also gets LoRA
    fine-tunes. `seed` changes the fine-tunes' seeds (and the heads'), not
    the pretrained backbone."""
    names = (SMOKE_TASKS if smoke else [t[0] for t in tasklib.TASKS])[:n_tasks]
    tasks = tasklib.build(names, n_train=400 if smoke else 3000,
                          n_val=100 if smoke else 300, n_test=200 if smoke else 500)
    run = "smoke" if smoke else "full"
    net = _cached(os.path.join(cache, "%s-%s-pretrained.pt" % (run, backbone)),
                  lambda: _pretrain(smoke, backbone))

    # One file per task, so a run with more tasks reuses the fewer's.
    done = [_cached(finetune_path(smoke, cache, backbone, head, seed, t),
                    lambda: finetune_task(smoke, net, backbone, head, seed, i, t))
            for i, t in enumerate(tasks)]
    return tasks, dict(full=[f for f, _ in done], lora=[l for _, l in done if l], net=net)


def finetune_path(smoke, cache, backbone, head, seed, task):
    return os.path.join(cache, "%s-%s-%s-%dsteps-seed%d" % (
        "smoke" if smoke else "full", backbone, head, FINETUNE_STEPS[smoke], seed),
        "%s.pt" % task["name"])


def finetune_task(smoke, net, backbone, head, seed, i, task):
    """Task i's full fine-tune (its state dict and head) and, for the MLP
    under probe heads, its LoRA fine-tune (else None)."""
    full_ft, h = models.finetune(net, task, steps=FINETUNE_STEPS[smoke], lr=3e-4,
                                 seed=1000 * seed + i, head=head)
    full = ({k: v.detach().numpy().copy() for k, v in full_ft.state_dict().items()}, h)
    lora = None
    if backbone == "mlp" and head == "probe":
        lora = models.finetune_lora(net, task, steps=FINETUNE_STEPS[smoke], seed=1000 * seed + i)
    return full, lora


def calibration_rows(backbone):
    """Unlabeled rows per task for the statistics: for a ViT the paper's
    32 images, 17 tokens each (544 rows, more than its 256 outputs)."""
    return merges.VIT_IMAGES if backbone.startswith("vit") else 1024


def finetuned(smoke, cache, kind, seed=0, n_tasks=TABLE_TASKS):
    """One kind's tasks, pretrained backbone (`net`, its weights `base`),
    fine-tunes (`fts`, as prepared), the models they make (`sds`), heads,
    fine-tuned test accuracies and calibration rows per task."""
    backbone, head, tuning = KINDS[kind]
    tasks, state = prepare(smoke, cache, backbone, head, seed, n_tasks)
    net = state["net"]
    fts = state[tuning]
    sds = [sd if tuning != "lora" else models.lora_model(net, sd) for sd, _ in fts]
    heads = [h for _, h in fts]
    return types.SimpleNamespace(
        tasks=tasks, net=net, fts=fts, sds=sds, heads=heads,
        base={k: v.detach().numpy().copy() for k, v in net.state_dict().items()},
        individual=[models.accuracy(net, sd, h, t["test"]) for sd, h, t in zip(sds, heads, tasks)],
        rows=calibration_rows(backbone))


def table_rows(specs, net, base, sds, heads, tasks, stats, individual, adapters, args,
               few_stats=None):
    rows = []
    for spec in specs:
        t0 = time.perf_counter()
        acc_d, acc_b, best, purify, hits = merges.run_method(
            spec, net, base, sds, heads, tasks,
            few_stats if spec is merges.FEW_ROWS_SPEC else stats, adapters,
            nsc_steps=10 if args.smoke else 100, max_evals=3 if args.smoke else MAX_EVALS)
        rows.append(dict(label=spec[0], default=acc_d, best=acc_b, scale=best,
                         scale_name=spec[3][0] if spec[3] else None, purify=purify,
                         correct=hits,
                         norm_default=[a / i for a, i in zip(acc_d, individual)],
                         norm_best=[a / i for a, i in zip(acc_b, individual)],
                         seconds=time.perf_counter() - t0))
        print("  %-32s default %.3f  best %.3f (%.1f s)" % (
            spec[0], np.mean(rows[-1]["norm_default"]), np.mean(rows[-1]["norm_best"]),
            rows[-1]["seconds"]), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "..", "..", "docs", "benchmarks"))
    ap.add_argument("--cache", default=os.path.join(HERE, ".cache"))
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help="comma-separated subset of full, lora (the MLP), vit and vit-zs")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    unknown = [k for k in kinds if k not in report.KIND_TITLES]
    if unknown:
        ap.error("--kinds: unknown %s (known: %s)" % (", ".join(unknown),
                                                       ", ".join(report.KIND_TITLES)))
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    sizes = [3] if args.smoke else [4, 8, 10]
    results = {}
    for kind in kinds:
        d = finetuned(args.smoke, args.cache, kind, n_tasks=max(sizes))
        tasks, net, base, fts, sds, heads = d.tasks, d.net, d.base, d.fts, d.sds, d.heads
        individual = d.individual
        zero_shot = [models.accuracy(net, base, h, t["test"]) for h, t in zip(heads, tasks)]
        for n in sizes:
            print("%s, %d tasks" % (report.KIND_TITLES[kind], n), flush=True)
            stats = merges.collect(net, sds[:n], tasks[:n], rows=d.rows)
            specs = {"full": merges.FULL, "lora": merges.LORA, "vit": merges.VIT,
                     "vit-zs": merges.VIT_ZS}[kind]
            few_stats = None
            if args.smoke:
                specs = [s for s in specs
                         if s[0] in SMOKE_METHODS and s[0] not in SMOKE_SKIP.get(kind, ())]
            elif n not in merges.PURIFY_SIZES:
                specs = [s for s in specs if s[4] is None]
            if not args.smoke and kind == "full":
                few_stats = merges.collect(net, sds[:n], tasks[:n], rows=merges.FEW_ROWS)
                specs = specs + [merges.FEW_ROWS_SPEC]
            adapters = [a for a, _ in fts[:n]] if kind == "lora" else None
            results[(kind, n)] = dict(
                tasks=[t["name"] for t in tasks[:n]], individual=individual[:n],
                zero_shot=zero_shot[:n],
                rows=table_rows(specs, net, base, sds[:n], heads[:n], tasks[:n], stats,
                                individual[:n], adapters, args, few_stats))
    os.makedirs(args.out, exist_ok=True)
    name = "quality-smoke" if args.smoke else "quality"
    report.write(results, os.path.join(args.out, name + ".md"), time.perf_counter() - t0, args.smoke)
    # Everything measured, so the report and plot can be redone without a rerun.
    with open(os.path.join(args.cache, name + "-results.json"), "w") as f:
        json.dump([dict(kind=k, n=n, **r) for (k, n), r in results.items()], f)
    report.plot(results, os.path.join(args.out, name + ".png"))
    print("wrote %s.md (%.0f s)" % (os.path.join(args.out, name), time.perf_counter() - t0))


if __name__ == "__main__":
    main()
