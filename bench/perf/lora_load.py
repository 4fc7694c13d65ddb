"""The load-time row: 8 LoRA adapters (rank 16) applied into a 1 GB bf16
base through lm_merger (libmerge.Merger.apply_ on the loader's buffers,
in place, tensor by tensor as an inference server's loader would), in GB of base per second,
against

- the floor: read every base tensor once and write it once (numpy copyto
  into a second buffer), measured in the same process and run;
- torch, the way Python tools apply adapters: per tensor
  W.float() + sum_i s * B_i @ A_i, rounded back to bf16.

Layout: Llama-like layers (hidden 2048, MLP 5632; q, k, v, o, gate, up,
down), as many as make --gb; every projection has a rank-16 adapter in
each of the 8 tasks (f32 factors, scale 2). 1 and 2 threads: with 2, the
loader calls apply_ from two Python threads (the merger is thread-safe
and ctypes releases the GIL), torch uses 2 intra-op threads. Wall time
(best of --repeat) and CPU time (user + system of the process).
Appends its rows to the JSON given by --json and writes --out.

usage: LIBMERGE_LIBRARY=... PYTHONPATH=bindings/python \\
       bench/perf/lora_load.py [--gb 1] [--repeat 2] [--out FILE] [--json FILE]"""
import argparse
import json
import os
import sys
import threading
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as lmerge runs BLAS

import numpy as np  # noqa: E402

import libmerge  # noqa: E402

HIDDEN, MLP, RANK, TASKS, SCALE = 2048, 5632, 16, 8, 2.0
SHAPES = {"q_proj": (HIDDEN, HIDDEN), "k_proj": (HIDDEN, HIDDEN),
          "v_proj": (HIDDEN, HIDDEN), "o_proj": (HIDDEN, HIDDEN),
          "gate_proj": (MLP, HIDDEN), "up_proj": (MLP, HIDDEN),
          "down_proj": (HIDDEN, MLP)}


def layout(gb):
    per_layer = sum(o * i for o, i in SHAPES.values()) * 2
    layers = max(1, round(gb * 2**30 / per_layer))
    return [("model.layers.%d.%s.weight" % (li, p), s)
            for li in range(layers) for p, s in SHAPES.items()]


def make_base(names, rng):
    """bf16 weights ~ N(0, 0.02) as bit patterns (libmerge.BFloat16Array)."""
    base = {}
    for name, shape in names:
        x = (rng.standard_normal(shape, dtype=np.float32) * 0.02).view(np.uint32)
        base[name] = ((x + 0x8000) >> 16).astype(np.uint16).view(libmerge.BFloat16Array)
    return base


def make_adapters(names, rng):
    adapters = []
    for _ in range(TASKS):
        f = {}
        for name, (o, i) in names:
            a = rng.standard_normal((RANK, i), dtype=np.float32) / np.sqrt(i)
            b = rng.standard_normal((o, RANK), dtype=np.float32) * 0.001
            f[name] = (a, b, SCALE)
        adapters.append(libmerge.LoraAdapter(f))
    return adapters


def split(names, parts):
    return [names[i::parts] for i in range(parts)]


def run_threads(fn, names, threads):
    if threads == 1:
        fn([n for n, _ in names])
        return
    ts = [threading.Thread(target=fn, args=([n for n, _ in part],))
          for part in split(names, threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def timed(fn, repeat, setup=None):
    best = None
    for _ in range(repeat):
        if setup:
            setup()
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        r = (time.perf_counter() - w0, time.process_time() - c0)
        best = r if best is None or r[0] < best[0] else best
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    names = layout(a.gb)
    base = make_base(names, rng)
    adapters = make_adapters(names, rng)
    nbytes = sum(v.nbytes for v in base.values())
    work = {n: v.copy() for n, v in base.items()}
    dst = {n: np.empty_like(v) for n, v in base.items()}
    rows = []
    import torch
    for threads in (1, 2):
        def floor(part):
            for n in part:
                np.copyto(dst[n], base[n])
        fl = timed(lambda: run_threads(floor, names, threads), a.repeat)
        merger = libmerge.Merger("task_arithmetic", adapters, threads=threads,
                                 **{"lambda": 1.0})

        def lm(part):
            for n in part:
                merger.apply_(n, work[n])

        def reset():  # the loader's buffers hold the base (not timed)
            for n, _ in names:
                np.copyto(work[n], base[n])
        lm_t = timed(lambda: run_threads(lm, names, threads), a.repeat, reset)
        merger.close()
        torch.set_num_threads(threads)
        tb = {n: torch.from_numpy(base[n].view(np.int16)).view(torch.bfloat16)
              for n, _ in names}
        tf = [{n: (torch.from_numpy(ad.factors[n][0]), torch.from_numpy(ad.factors[n][1]))
               for n, _ in names} for ad in adapters]
        out = {}

        def ref():
            for n, _ in names:
                w = tb[n].float()
                for f in tf:
                    a_, b_ = f[n]
                    w.addmm_(b_, a_, alpha=SCALE)
                out[n] = w.bfloat16()
        th = timed(ref, a.repeat)
        # libmerge's merged weights against torch's (both bf16): same
        # update, f32 products in a different order.
        diff = max(float((torch.from_numpy(work[n].view(np.int16)).view(torch.bfloat16)
                          .float() - out[n].float()).abs().max()) for n, _ in names[:7])
        rows.append(dict(threads=threads, gb=nbytes / 2**30, tensors=len(names),
                         floor=fl, lm=lm_t, torch=th, maxdiff=diff))
        print("T=%d: %.2f GB base, floor %.2f s, libmerge %.2f s (cpu %.2f), torch %.2f s "
              "(cpu %.2f), max |lm - torch| %.2g" % (
                  threads, nbytes / 2**30, fl[0], lm_t[0], lm_t[1], th[0], th[1], diff),
              flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    if a.out:
        write(rows, a.out)


def write(rows, path):
    L = ["# Load-time row: 8 LoRA adapters (rank 16) through lm_merger", "",
         "Generated by `bench/perf/lora_load.py` on this machine (%d cores), load average "
         "%s at the end. Base bf16, Llama-like layers (hidden 2048); libmerge: "
         "`libmerge.Merger(\"task_arithmetic\", adapters).apply_` on the loader's buffers "
         "(the fused LoRA path); floor: a numpy copy of every base tensor; torch: "
         "`W.float()` plus eight `addmm_`, back to bf16. Wall time best of the repeats, "
         "CPU time user + system." % (os.cpu_count(),
                                      open("/proc/loadavg").read().split()[0]), "",
         "| T | base GB | tensors | floor s (GB/s) | libmerge s (GB/s), cpu s | "
         "torch s (GB/s), cpu s | lm / floor | torch / lm | max abs lm − torch |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g = r["gb"]
        L.append("| %d | %.2f | %d | %.2f (%.2f) | %.2f (%.2f), %.2f | %.2f (%.2f), %.2f "
                 "| %.2f | %.1f | %.2g |" % (
                     r["threads"], g, r["tensors"], r["floor"][0], g / r["floor"][0],
                     r["lm"][0], g / r["lm"][0], r["lm"][1], r["torch"][0],
                     g / r["torch"][0], r["torch"][1], r["lm"][0] / r["floor"][0],
                     r["torch"][0] / r["lm"][0], r["maxdiff"]))
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")


if __name__ == "__main__":
    sys.exit(main())
