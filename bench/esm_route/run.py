#!/usr/bin/python3
"""ESM on an lm_head-shaped layer: the Gram route (G = dW C dW^T, d_out^2)
against the output route (SVD of R dW^T) -- peak RSS, time and agreement.

Each merge runs in a fresh child process (one merge thread, BLAS
single-threaded) so ru_maxrss is that merge's peak. Inputs: T task vectors
(rank-16 plus noise) of a d_out x d_in layer, 2048 calibration rows per task
with a decaying spectrum, layer_scaling off.

    LIBMERGE_LIBRARY=build/lib/libmerge.so PYTHONPATH=bindings/python \\
        /usr/bin/python3 bench/esm_route/run.py D_OUT D_IN T ROUTE[,ROUTE] [BUDGET_GIB] [RANK]

RANK is ESM's `rank` (directions kept per task; default 0 = floor(d_out/T)).

Prints one line per route (seconds, peak RSS in MiB) and, with two
routes, the cosine and the max |diff| / max |ref| between their outputs.
"""
import os
import resource
import subprocess
import sys
import time

import numpy as np

NAME = "lm_head.weight"


def problem(d_out, d_in, T, rows=2048, seed=0):
    import libmerge
    rng = np.random.default_rng(seed)
    base = {NAME: (0.02 * rng.standard_normal((d_out, d_in))).astype(np.float32)}
    models, stats = [], libmerge.Stats()
    for t in range(T):
        # generated in f32, one task at a time, so that a 32000 x 4096 x 8
        # problem needs its inputs (4.2 GB) and little more
        tv = (rng.standard_normal((d_out, 16), np.float32)
              @ (0.01 * rng.standard_normal((16, d_in), np.float32)))
        tv += 1e-3 * rng.standard_normal((d_out, d_in), np.float32)
        tv += base[NAME]
        models.append({NAME: tv})
        x = rng.standard_normal((rows, d_in)) * 0.99 ** np.arange(d_in)
        stats.observe(t, NAME, x.astype(np.float32))
    return base, models, stats


def child(d_out, d_in, T, route, budget, rank, out):
    import libmerge
    base, models, stats = problem(d_out, d_in, T)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    merged = libmerge.merge("esm", base, models, stats=stats, threads=1,
                            layer_scaling=False, esd_route=route,
                            # the released scalings, as measured before
                            # they became default off
                            inter_task=True, eig_weighting=True, inter_dim=True,
                            memory_budget=budget, rank=rank)
    dt = time.perf_counter() - t0
    np.save(out, merged[NAME] - base[NAME])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("%s %.1f %.0f %.0f" % (route, dt, rss / 1024, rss0 / 1024))


def main():
    if sys.argv[1] == "--child":
        child(*map(int, sys.argv[2:5]), sys.argv[5], float(sys.argv[6]),
              int(sys.argv[7]), sys.argv[8])
        return
    d_out, d_in, T = map(int, sys.argv[1:4])
    routes = sys.argv[4].split(",")
    budget = sys.argv[5] if len(sys.argv) > 5 else "2"
    rank = sys.argv[6] if len(sys.argv) > 6 else "0"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    outs = []
    print("# %d x %d, %d tasks, 2048 rows/task, memory_budget %s GiB, rank %s"
          % (d_out, d_in, T, budget, rank))
    print("# route seconds peak_rss_MiB rss_before_merge_MiB")
    for r in routes:
        out = "/tmp/esm_route_%d_%d_%d_%s.npy" % (d_out, d_in, T, r)
        p = subprocess.run([sys.executable, __file__, "--child", str(d_out), str(d_in),
                            str(T), r, budget, rank, out], env=env, capture_output=True, text=True)
        sys.stdout.write(p.stdout)
        if p.returncode:
            print("%s failed: %s" % (r, p.stderr.strip().splitlines()[-1]))
            continue
        outs.append(np.load(out).astype(np.float64))
        os.remove(out)
    if len(outs) == 2:
        a, b = outs
        cos = float(np.sum(a * b) / np.linalg.norm(a) / np.linalg.norm(b))
        print("# agreement: cosine %.9f, max|diff|/max|ref| %.2e"
              % (cos, np.abs(a - b).max() / np.abs(a).max()))


if __name__ == "__main__":
    main()
