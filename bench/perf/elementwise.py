"""Elementwise merges (task_arithmetic, linear, average; with --rows sparse
ties, dare_ties, dare_linear) against the memory floor, a numpy script and
a torch script, all in one run on this machine.
Safetensors inputs in the page cache, output on tmpfs (/dev/shm).

- floor: read every input file once from the page cache and write the
  output's bytes once (bench/perf/elementwise.py itself, in a child);
- numpy / torch: bench/perf/elementwise_ref.py (memory-mapped inputs, one
  tensor at a time, f32 compute, output written once);
- libmerge: `lmerge run --threads T` (fused path), and for some rows the
  plain path (LIBMERGE_FUSED=0) for comparison.

Every process is timed with /usr/bin/time: wall seconds, CPU seconds
(user + system) and peak RSS. Writes docs/benchmarks/perf_elementwise.md
(--rows sparse: perf_sparse.md) and a plot of the ratios next to it (.png).

usage: bench/perf/elementwise.py [--build build-rel] [--quick] [--rows linear|sparse]"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
PY = "/usr/bin/python3"
REPEAT = 3
# The generated models (deterministic: one cache that concurrent runs
# share, each model set published whole by a rename) and, per run, its
# own directory for configs and timings and its own output directory, so
# two runs at once never write the same file. BENCH_TMP / BENCH_OUT
# replace the cache's parent / the output directory.
WORK = os.environ.get("BENCH_TMP", "/tmp/lmerge-bench-elementwise")
RUN = None  # this run's directory under WORK (main)
OUT = os.environ.get("BENCH_OUT")  # else a fresh one under /dev/shm (main)

FLOOR = ("import os, sys\nbuf = bytearray(1 << 24)\nout, n = sys.argv[1], int(sys.argv[2])\n"
         "for p in sys.argv[3:]:\n"
         "    with open(p, 'rb', buffering=0) as f:\n"
         "        while f.readinto(buf): pass\n"
         "with open(out, 'wb', buffering=0) as f:\n"
         "    while n > 0:\n"
         "        n -= f.write(memoryview(buf)[:min(n, len(buf))])\n")

# (method, models, MB per model, dtype, threads, also the plain path?)
ROWS = [
    ("task_arithmetic", 2, 64, "f32", 2, False),
    ("task_arithmetic", 4, 256, "f32", 2, True),
    ("task_arithmetic", 4, 256, "f32", 1, False),
    ("task_arithmetic", 8, 256, "f32", 2, False),
    ("task_arithmetic", 2, 1024, "f32", 2, False),
    ("task_arithmetic", 2, 64, "bf16", 2, False),
    ("task_arithmetic", 4, 256, "bf16", 2, True),
    ("task_arithmetic", 4, 256, "bf16", 1, False),
    ("linear", 4, 256, "f32", 2, False),
    ("average", 4, 256, "bf16", 2, False),
]
# ties / DARE at density 0.2 (target: <= 3x the floor). The scripts'
# top-k masks take minutes per row on a loaded machine, so they run only
# where the plain path is measured too (a 7th field False: no scripts).
SPARSE_ROWS = [
    ("ties", 4, 64, "f32", 2, True),
    ("ties", 4, 64, "f32", 1, False, False),
    ("ties", 4, 64, "bf16", 2, True),
    ("ties", 8, 64, "f32", 2, False, False),
    ("ties", 8, 64, "bf16", 2, False, False),
    ("dare_ties", 4, 64, "bf16", 2, True, False),
    ("dare_linear", 4, 64, "f32", 2, False, False),
    # mergekit's DARE restores each task vector's L1 norm (whole-tensor
    # sums: one more streaming pass on the fused path); without the rescale
    # (mergekit's rescale: false) that pass is skipped.
    ("dare_ties:norescale", 4, 64, "bf16", 2, False, False),
    ("dare_linear:norescale", 4, 64, "f32", 2, False, False),
]
SPARSE = ("ties", "dare_ties", "dare_linear")


def timed(cmd, env=None):
    """(wall s, cpu s, peak RSS MB) of a child, from /usr/bin/time."""
    rep = os.path.join(RUN, "time.txt")
    p = subprocess.run(["/usr/bin/time", "-f", "%e %U %S %M", "-o", rep] + cmd,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    if p.returncode != 0:
        raise SystemExit("failed: %s\n%s" % (" ".join(cmd), p.stderr.decode()))
    with open(rep) as f:
        e, u, s, m = f.read().split()[-4:]
    return float(e), float(u) + float(s), int(m) / 1024.0


def models(n, mb, dtype):
    d = os.path.join(WORK, "%s_n%d_mb%d" % (dtype, n, mb))
    if not os.path.exists(os.path.join(d, "merge.yaml")):
        part = tempfile.mkdtemp(prefix=os.path.basename(d) + ".part-", dir=WORK)
        subprocess.run([PY, os.path.join(ROOT, "bench", "rss", "gen_models.py"), part,
                        str(n), str(mb), "--dtype", dtype], check=True)
        # merge.yaml names the directory it was written in: the final one
        with open(os.path.join(part, "merge.yaml")) as f:
            text = f.read().replace(part, d)
        with open(os.path.join(part, "merge.yaml"), "w") as f:
            f.write(text)
        try:
            os.rename(part, d)
        except OSError:  # another run published the same set first
            shutil.rmtree(part)
            if not os.path.exists(os.path.join(d, "merge.yaml")):
                raise SystemExit("%s: an incomplete model set; remove it" % d)
    return d


def run_row(lmerge, method, n, mb, dtype, threads, plain, scripts=True):
    d = models(n, mb, dtype)
    inputs = [os.path.join(d, "base", "model.safetensors")] + \
             [os.path.join(d, "model%d" % i, "model.safetensors") for i in range(1, n + 1)]
    out_bytes = os.path.getsize(inputs[0])
    cfg = os.path.join(RUN, "bench.yaml")
    with open(cfg, "w") as f:
        f.write("merge_method: %s\nbase_model: %s/base\nmodels:\n" % (method.split(":")[0], d))
        if method == "task_arithmetic":
            f.write("".join("  - model: %s/model%d\n" % (d, i) for i in range(1, n + 1)))
            f.write("parameters:\n  lambda: 0.3\n")
        elif method.split(":")[0] in SPARSE:  # as elementwise_ref.py: density 0.2
            f.write("".join("  - model: %s/model%d\n" % (d, i) for i in range(1, n + 1)))
            f.write("parameters:\n  density: 0.2\n")
            if method.endswith(":norescale"):
                f.write("  rescale: false\n")
        else:
            # mergekit's linear sums the listed models: the base with
            # weight 0 makes it the mean of the fine-tunes, as the scripts.
            w = "    parameters:\n      weight: %s\n"
            f.write("  - model: %s/base\n" % d + w % "0.0")
            f.write("".join("  - model: %s/model%d\n" % (d, i) + w % "1.0"
                            for i in range(1, n + 1)))
    os.makedirs(OUT, exist_ok=True)
    target = os.path.join(OUT, "out.safetensors")
    floor_cmd = [PY, "-c", FLOOR, target, str(out_bytes)] + inputs
    timed(floor_cmd)  # warms the page cache
    row = dict(method=method, n=n, mb=mb, dtype=dtype, threads=threads)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    lm_cmd = [lmerge, "run", cfg, "-o", os.path.join(OUT, "lm"), "--threads", str(threads),
              "-q", "--overwrite"]
    # The floor and libmerge alternate REPEAT times; each keeps its fastest
    # run (wall), so a burst of other work on the machine hits both alike.
    runs = {"floor": [], "lm": []}
    for _ in range(REPEAT):
        runs["floor"].append(timed(floor_cmd))
        runs["lm"].append(timed(lm_cmd, env))
    row["floor"], row["lm"] = min(runs["floor"]), min(runs["lm"])
    if plain:
        row["plain"] = timed(lm_cmd, dict(env, LIBMERGE_FUSED="0"))
        if not method.split(":")[0] in SPARSE:
            row["mapped"] = timed(lm_cmd, dict(env, LIBMERGE_PREAD="0"))
    for lib in ("numpy", "torch") if scripts else ():
        row[lib] = timed([PY, os.path.join(HERE, "elementwise_ref.py"), lib, method, target]
                         + inputs)
    os.remove(target)
    print("%-15s %-4s n=%d %5d MB T=%d: floor %.2f s, libmerge %.2f s (cpu %.2f, %.0f MB)%s%s"
          % (method, dtype, n, mb, threads, row["floor"][0], row["lm"][0], row["lm"][1],
             row["lm"][2], ", plain %.2f s" % row["plain"][0] if plain else "",
             ", numpy %.2f s, torch %.2f s" % (row["numpy"][0], row["torch"][0])
             if scripts else ""), flush=True)
    return row


def write(rows, path, seconds, load, sparse):
    L = ["# %s against the memory floor" % (
        "TIES and DARE merges" if sparse else "Elementwise merges"), "",
         "Generated by `bench/perf/elementwise.py` in %.0f s on this machine (%d cores), "
         "load average %s at the start (when other jobs share the cores, wall times are "
         "inflated and noisy, CPU times — user + system of each process — much less so). "
         "Synthetic transformer-like models (bench/rss/gen_models.py), safetensors inputs "
         "in the page cache, output on tmpfs. *floor*: read every input once and write "
         "the output's bytes once. *numpy*, *torch*: `bench/perf/elementwise_ref.py` "
         "(memory-mapped inputs, per tensor %s in f32, output written once; "
         "torch with 2 threads). *libmerge*: `lmerge run --threads T` (the fused path); "
         "floor and libmerge alternate %d times and each keeps its fastest run; "
         "*plain*: the same with `LIBMERGE_FUSED=0` (the previous path). Ratios: "
         "libmerge / floor and torch / libmerge, on wall time and on CPU time. "
         "Plot: [%s](%s)." % (
             seconds, os.cpu_count(), load,
             "mergekit's sparsify-then-sign-merge at density 0.2 (torch.topk / numpy "
             "argpartition masks, Bernoulli masks for DARE)" if sparse else "b + c·Σ(fᵢ − b)",
             REPEAT,
             os.path.basename(path)[:-3] + ".png", os.path.basename(path)[:-3] + ".png"), "",
         "| method | dtype | models | MB per model | T | floor s (cpu) | libmerge s (cpu) "
         "| plain s (cpu) | numpy s (cpu) | torch s (cpu) | lm / floor wall (cpu) "
         "| torch / lm wall (cpu) | RSS MB lm / numpy / torch |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def t(k):
            return "%.2f (%.2f)" % r[k][:2] if k in r else "—"
        ref = "torch" in r
        L.append("| %s | %s | %d | %d | %d | %s | %s | %s | %s | %s | %.2f (%.2f) | %s "
                 "| %s |" % (
                     r["method"], r["dtype"], r["n"], r["mb"], r["threads"], t("floor"),
                     t("lm"), t("plain"), t("numpy"), t("torch"),
                     r["lm"][0] / r["floor"][0], r["lm"][1] / r["floor"][1],
                     "%.1f (%.1f)" % (r["torch"][0] / r["lm"][0], r["torch"][1] / r["lm"][1])
                     if ref else "—",
                     "%.0f / %.0f / %.0f" % (r["lm"][2], r["numpy"][2], r["torch"][2])
                     if ref else "%.0f / — / —" % r["lm"][2]))
    two = [r for r in rows if r["threads"] == 2]
    wf = max(r["lm"][0] / r["floor"][0] for r in two)
    cf = max(r["lm"][1] / r["floor"][1] for r in two)
    refs = [r for r in two if "torch" in r] or [dict(torch=(0, 0), lm=(1, 1))]
    wt = min(r["torch"][0] / r["lm"][0] for r in refs)
    ct = min(r["torch"][1] / r["lm"][1] for r in refs)
    lim = 3.0 if sparse else 1.5
    L += ["", "## Targets (2-thread rows)", "",
          "- libmerge ≤ %g× the floor: %s on wall time (worst %.2f×), %s on CPU time "
          "(worst %.2f×)." % (lim, "**met**" if wf <= lim else "**not met**", wf,
                              "**met**" if cf <= lim else "**not met**", cf)]
    if sparse:
        L.append("- libmerge against torch (no target for these methods): %.1f× faster "
                 "or more on wall time, %.1f× on CPU time." % (wt, ct))
    else:
        L.append("- libmerge ≥ 3× faster than torch: %s on wall time (worst %.1f×), %s on "
                 "CPU time (worst %.1f×)." % ("**met**" if wt >= 3 else "**not met**", wt,
                                              "**met**" if ct >= 3 else "**not met**", ct))
    for r in rows:
        if "mapped" in r:
            L.append("- Inputs read with `pread` against read through their mappings "
                     "(`LIBMERGE_PREAD=0`, bit-identical output), %s %s %d × %d MB, T=%d: "
                     "%.2f → %.2f s wall, %.2f → %.2f s CPU."
                     % (r["method"], r["dtype"], r["n"], r["mb"], r["threads"],
                        r["mapped"][0], r["lm"][0], r["mapped"][1], r["lm"][1]))
    for r in rows:
        if "plain" in r:
            L.append("- Fused against the plain path (`LIBMERGE_FUSED=0`, bit-identical "
                     "output), %s %s %d × %d MB: %.2f → %.2f s wall, %.2f → %.2f s CPU."
                     % (r["method"], r["dtype"], r["n"], r["mb"], r["plain"][0],
                        r["lm"][0], r["plain"][1], r["lm"][1]))
    scal = [(a, b) for a in rows for b in rows if a["threads"] == 1 and b["threads"] == 2
            and (a["method"], a["n"], a["mb"], a["dtype"]) ==
            (b["method"], b["n"], b["mb"], b["dtype"])]
    for a, b in scal:
        L.append("- Thread scaling, %s %s %d × %d MB: 1 → 2 threads %.2f → %.2f s wall "
                 "(%.2f×)." % (a["method"], a["dtype"], a["n"], a["mb"], a["lm"][0],
                               b["lm"][0], a["lm"][0] / b["lm"][0]))
    rss = sorted((r["mb"], r["lm"][2]) for r in rows if r["n"] == 2 and r["dtype"] == "f32")
    if rss:
        L.append("- Peak RSS of libmerge, 2 models f32, %s MB per model: %s MB." % (
            "/".join(str(m) for m, _ in rss), "/".join("%.0f" % v for _, v in rss)))
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")
    plot(rows, path[:-3] + ".png", lim)


def plot(rows, png, lim):
    """Bars per row: libmerge / floor (wall, CPU) with the target line, and
    torch / libmerge (wall)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = ["%s %s\n%d×%d MB T=%d" % (r["method"], r["dtype"], r["n"], r["mb"],
                                        r["threads"]) for r in rows]
    x = range(len(rows))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(rows)), 4.2))
    a1.bar([i - 0.2 for i in x], [r["lm"][0] / r["floor"][0] for r in rows], 0.4,
           label="wall")
    a1.bar([i + 0.2 for i in x], [r["lm"][1] / r["floor"][1] for r in rows], 0.4,
           label="CPU")
    a1.axhline(lim, color="k", ls="--", lw=1, label="target %g×" % lim)
    a1.set_ylabel("libmerge / floor")
    a2.bar(list(x), [r["torch"][0] / r["lm"][0] if "torch" in r else 0 for r in rows], 0.5,
           color="C2")
    a2.set_ylabel("torch / libmerge (wall)")
    for a in (a1, a2):
        a.set_xticks(list(x))
        a.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
    a1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build-rel"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", choices=("linear", "sparse"), default="linear")
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default=None, help="rows whose method label contains this")
    a = ap.parse_args()
    sparse = a.rows == "sparse"
    a.out = a.out or os.path.join(ROOT, "docs", "benchmarks", "perf_sparse.md" if sparse
                                  else "perf_elementwise.md")
    table = SPARSE_ROWS if sparse else ROWS
    quick = [r for r in table if r[2] <= 256 and r[1] <= 4][:3]
    global RUN, OUT
    os.makedirs(WORK, exist_ok=True)
    RUN = tempfile.mkdtemp(prefix="run-", dir=WORK)
    own_out = OUT is None
    OUT = OUT or tempfile.mkdtemp(prefix="lmerge-bench-elementwise-", dir="/dev/shm")
    try:
        run_rows(a, sparse, table, quick)
    finally:
        shutil.rmtree(RUN, ignore_errors=True)
        if own_out:
            shutil.rmtree(OUT, ignore_errors=True)


def run_rows(a, sparse, table, quick):
    lmerge = os.path.join(a.build, "tools", "lmerge", "lmerge")
    load = "%.1f" % os.getloadavg()[0]
    t0 = time.time()
    rows = []
    for r in quick if a.quick else table:
        if a.only and a.only not in r[0]:
            continue
        rows.append(run_row(lmerge, *r))
        # a partial run still reports
        write(rows, a.out, time.time() - t0, load, sparse)


if __name__ == "__main__":
    sys.exit(main())
