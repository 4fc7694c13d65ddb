"""Rank-aware whitening on trained layers: bench/quality's MLP (784 -> 256
-> 256 -> 128) fine-tuned on its tasks, fully and with LoRA (rank-deficient
task vectors), merged by esm, tsv, iso_c and iso_cts with whiten=released
and rank_aware. For each merged weight: the cosine between the merge and
the merge of the fine-tuned weights (and, for ESM, the calibration rows)
moved one ulp, and the cosine between the two modes. Usage (needs
bench/quality's cache or builds it, which takes a while):

    LIBMERGE_LIBRARY=build/lib/libmerge.so PYTHONPATH=bindings/python \\
      OPENBLAS_NUM_THREADS=1 python3 bench/whiten/real_layer.py \\
      --cache bench/quality/.cache [--tasks 8] [--out FILE]
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "quality"))

import libmerge  # noqa: E402
import libmerge.torch as lt  # noqa: E402
import run as quality  # noqa: E402
import torch  # noqa: E402

WEIGHTS = ["fc1.weight", "fc2.weight", "fc3.weight"]


def one_ulp(x, seed):
    up = np.random.default_rng(seed).random(x.shape) < 0.5
    return np.where(up, np.nextafter(x, np.float32(np.inf)),
                    np.nextafter(x, np.float32(-np.inf))).astype(np.float32)


def stats_of(net, sds, tasks, rows, perturb=None):
    """Statistics of each fine-tuned model's layer inputs on its task's
    first `rows` training rows (moved one ulp with perturb=seed)."""
    import copy
    stats = libmerge.Stats()
    for i, (sd, task) in enumerate(zip(sds, tasks)):
        m = copy.deepcopy(net)
        m.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()})
        x = np.asarray(task["train"][0][:rows], np.float32)
        if perturb is not None:
            x = one_ulp(x, perturb + i)
        lt.collect_stats(m, [torch.from_numpy(x)], stats, model_index=i)
    return stats


def cosine(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default=os.path.join(HERE, "..", "quality", ".cache"))
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--kinds", default="full,lora")
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--floor", type=float, default=1.0, help="whiten_floor (c)")
    ap.add_argument("--out")
    args = ap.parse_args()
    start = time.time()
    lines = []
    for kind in args.kinds.split(","):
        d = quality.finetuned(False, args.cache, kind, 0, args.tasks)
        base = {k: v for k, v in d.base.items() if k in WEIGHTS}
        sds = [{k: np.asarray(v, np.float32) for k, v in sd.items()} for sd in d.sds]
        models = [{k: sd[k] for k in WEIGHTS} for sd in sds]
        moved = [{k: one_ulp(sd[k], 100 * t + j) for j, k in enumerate(WEIGHTS)}
                 for t, sd in enumerate(sds)]
        stats = stats_of(d.net, sds, d.tasks, args.rows)
        stats_moved = stats_of(d.net, [dict(sd, **m) for sd, m in zip(sds, moved)], d.tasks,
                               args.rows, perturb=7)
        for method in ["esm", "tsv", "iso_c", "iso_cts"]:
            out = {}
            for mode in ["released", "rank_aware"]:
                # ESM: the released scalings but layer scaling (the library's
                # default has all four off, docs/methods/esm.md)
                kw = (dict(stats=stats, layer_scaling=False, inter_task=True,
                           eig_weighting=True, inter_dim=True) if method == "esm" else {})
                if mode == "rank_aware":
                    kw["whiten_floor"] = args.floor
                a = libmerge.merge(method, base, models, whiten=mode, **kw)
                if method == "esm":
                    kw["stats"] = stats_moved
                b = libmerge.merge(method, base, moved, whiten=mode, **kw)
                out[mode] = (a, b)
            for k in WEIGHTS:
                ra, rb = (out["released"][0][k] - base[k], out["released"][1][k] - base[k])
                aa, ab = (out["rank_aware"][0][k] - base[k], out["rank_aware"][1][k] - base[k])
                row = "| %s | %s | %s %s | %.7f | %.7f | %.5f |" % (
                    kind, method, k, "x".join(map(str, base[k].shape)),
                    cosine(ra, rb), cosine(aa, ab), cosine(ra, aa))
                print(row, flush=True)
                lines.append(row)
    head = ["# Rank-aware whitening on trained layers (`bench/whiten/real_layer.py`)", "",
            "bench/quality's MLP, %d tasks (seed-0 fine-tunes, full and LoRA), "
            "%d calibration rows per task for ESM (`layer_scaling=false`), "
            "`whiten_floor=%g`. One ulp on every fine-tuned weight (and "
            "calibration row for ESM), random signs. %.0f s."
            % (args.tasks, args.rows, args.floor, time.time() - start), "",
            "| tuning | method | tensor | 1-ulp cosine, released | 1-ulp cosine, rank_aware "
            "| cosine released vs rank_aware |", "|---|---|---|---|---|---|"]
    text = "\n".join(head + lines) + "\n"
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)
    else:
        print(text)


if __name__ == "__main__":
    main()
