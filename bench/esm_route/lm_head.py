#!/usr/bin/python3
"""ESM on a full-size output head through `lmerge run`: one d_out x d_in
`lm_head.weight` (default 32000 x 4096, Llama-2's vocabulary and width),
T fine-tunes (default 8), 2048 calibration rows per task, from safetensors
files on disk (memory-mapped, as a user's checkpoints are), one merge
thread, layer scaling off. Prints wall seconds and the peak RSS of the
`lmerge run` process (GNU time's maximum resident set size: anonymous
memory plus the input pages it touched).

    LIBMERGE_LIBRARY=build/lib/libmerge.so PYTHONPATH=bindings/python \\
        /usr/bin/python3 bench/esm_route/lm_head.py LMERGE WORKDIR \\
        [D_OUT D_IN T RANK BUDGET_GIB VMEM_GIB ROUTE]

RANK is ESM's `rank` (0: floor(d_out / T)); BUDGET_GIB its `memory_budget`
(0: the machine's memory); ROUTE its `esd_route` (default auto). Before the
merge, the same run at a 1-byte budget prints ESM's memory estimate for
the route (for auto: the cheapest exact one), without reading the inputs;
VMEM_GIB caps the process's address space (ulimit -v) so that a merge too
large for the machine fails with an allocation error instead of waking
the kernel's OOM killer. WORKDIR receives the inputs (T + 1 files of
d_out * d_in * 4 bytes) and is emptied afterwards.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

NAME = "lm_head.weight"


def write_st(path, arr):
    """One-tensor safetensors file (format spec: u64 header length, JSON
    header, data), written in row blocks to keep memory flat."""
    head = json.dumps({NAME: {"dtype": "F32", "shape": list(arr.shape),
                              "data_offsets": [0, arr.nbytes]}}).encode()
    head += b" " * (-(8 + len(head)) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        arr.tofile(f)


def generate(work, d_out, d_in, T, rows=2048, seed=0):
    """Base N(0, 0.02) and T fine-tunes = base + rank-16 update + noise
    (as bench/esm_route/run.py), and a statistics file of each task's rows."""
    import libmerge
    rng = np.random.default_rng(seed)
    base = 0.02 * rng.standard_normal((d_out, d_in), np.float32)
    write_st(os.path.join(work, "base.safetensors"), base)
    stats = libmerge.Stats()
    paths = []
    for t in range(T):
        w = (rng.standard_normal((d_out, 16), np.float32)
             @ (0.01 * rng.standard_normal((16, d_in), np.float32)))
        w += 1e-3 * rng.standard_normal((d_out, d_in), np.float32)
        w += base
        p = os.path.join(work, "ft%d.safetensors" % t)
        write_st(p, w)
        paths.append(p)
        del w
        x = rng.standard_normal((rows, d_in)) * 0.99 ** np.arange(d_in)
        stats.observe(t, NAME, x.astype(np.float32))
    stats.save(os.path.join(work, "calib.lmstats"))
    return paths


def main():
    lmerge, work = sys.argv[1], sys.argv[2]
    d_out, d_in, T, rank = (int(v) for v in (sys.argv[3:7] + ["32000", "4096", "8", "0"][
        len(sys.argv[3:7]):]))
    budget = sys.argv[7] if len(sys.argv) > 7 else "2"
    vmem = float(sys.argv[8]) if len(sys.argv) > 8 else 0
    route = sys.argv[9] if len(sys.argv) > 9 else "auto"
    os.makedirs(work, exist_ok=True)
    t0 = time.time()
    paths = generate(work, d_out, d_in, T)
    print("# %d x %d lm_head, %d tasks, 2048 rows/task, rank %d, memory_budget %s GiB, "
          "inputs %.1f GB (generated in %.0f s)" % (
              d_out, d_in, T, rank, budget, (T + 1) * d_out * d_in * 4 / 1e9,
              time.time() - t0))
    def config(budget_gib):
        cfg = os.path.join(work, "merge.yaml")
        with open(cfg, "w") as f:
            f.write("merge_method: esm\nbase_model: %s\nmodels:\n%s"
                    "parameters: {rank: %d, layer_scaling: false, inter_task: true, "
                    "eig_weighting: true, inter_dim: true, memory_budget: %s, "
                    "esd_route: %s}\nstats: %s\n" % (
                        os.path.join(work, "base.safetensors"),
                        "".join("  - model: %s\n" % p for p in paths),
                        rank, budget_gib, route, os.path.join(work, "calib.lmstats")))
        return cfg
    cfg = config("1e-9")
    r = subprocess.run([lmerge, "run", cfg, "-o", os.path.join(work, "out"), "--threads", "1",
                        "--no-copy-files"], capture_output=True, text=True)
    est = [l for l in r.stderr.splitlines() if " needs " in l]
    print("estimate: %s" % (est[-1].split(": ", 1)[-1] if est else r.stderr.strip()[-300:]))
    print("input pages the process maps: %.0f MiB" % ((T + 1) * d_out * d_in * 4 / 2**20))
    cfg = config(budget)
    limit = "ulimit -v %d; " % int(vmem * 1024 * 1024) if vmem else ""
    cmd = "%s/usr/bin/time -f '%%e %%M' %s run %s -o %s --threads 1 --no-copy-files" % (
        limit, lmerge, cfg, os.path.join(work, "out"))
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True,
                       env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    last = r.stderr.strip().splitlines()
    if r.returncode == 0:
        secs, kb = last[-1].split()
        print("seconds %s, peak RSS %.0f MiB" % (secs, int(kb) / 1024))
    else:
        print("failed (exit %d): %s" % (r.returncode, " | ".join(last[-3:])))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
