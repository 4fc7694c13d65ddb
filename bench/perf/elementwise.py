"""Elementwise merges (task_arithmetic, linear, average) against the memory
floor, a numpy script and a torch script, all in one run on this machine.
Safetensors inputs in the page cache, output on tmpfs (/dev/shm).

- floor: read every input file once from the page cache and write the
  output's bytes once (bench/perf/elementwise.py itself, in a child);
- numpy / torch: bench/perf/elementwise_ref.py (memory-mapped inputs, one
  tensor at a time, f32 compute, output written once);
- libmerge: `lmerge run --threads T` (fused path), and for some rows the
  plain path (LIBMERGE_FUSED=0) for comparison.

Every process is timed with /usr/bin/time: wall seconds, CPU seconds
(user + system) and peak RSS. Writes docs/benchmarks/perf_elementwise.md.

usage: bench/perf/elementwise.py [--build build-rel] [--quick]"""
import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
PY = "/usr/bin/python3"
WORK = os.environ.get("BENCH_TMP", "/tmp/lmerge-bench-elementwise")
OUT = "/dev/shm/lmerge-bench-elementwise"

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
QUICK = [r for r in ROWS if r[2] <= 256 and r[1] <= 4]


def timed(cmd, env=None):
    """(wall s, cpu s, peak RSS MB) of a child, from /usr/bin/time."""
    rep = os.path.join(WORK, "time.txt")
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
        subprocess.run([PY, os.path.join(ROOT, "bench", "rss", "gen_models.py"), d, str(n),
                        str(mb), "--dtype", dtype], check=True)
    return d


def run_row(lmerge, method, n, mb, dtype, threads, plain):
    d = models(n, mb, dtype)
    inputs = [os.path.join(d, "base", "model.safetensors")] + \
             [os.path.join(d, "model%d" % i, "model.safetensors") for i in range(1, n + 1)]
    out_bytes = os.path.getsize(inputs[0])
    cfg = os.path.join(d, "bench.yaml")
    with open(cfg, "w") as f:
        f.write("merge_method: %s\nbase_model: %s/base\nmodels:\n" % (method, d))
        if method == "task_arithmetic":
            f.write("".join("  - model: %s/model%d\n" % (d, i) for i in range(1, n + 1)))
            f.write("parameters:\n  lambda: 0.3\n")
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
    row["floor"] = timed(floor_cmd)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    lm_cmd = [lmerge, "run", cfg, "-o", os.path.join(OUT, "lm"), "--threads", str(threads),
              "-q", "--overwrite"]
    row["lm"] = timed(lm_cmd, env)
    if plain:
        row["plain"] = timed(lm_cmd, dict(env, LIBMERGE_FUSED="0"))
    for lib in ("numpy", "torch"):
        row[lib] = timed([PY, os.path.join(HERE, "elementwise_ref.py"), lib, method, target]
                         + inputs)
    os.remove(target)
    print("%-15s %-4s n=%d %5d MB T=%d: floor %.2f s, libmerge %.2f s (cpu %.2f, %.0f MB)%s, "
          "numpy %.2f s, torch %.2f s" % (
              method, dtype, n, mb, threads, row["floor"][0], row["lm"][0], row["lm"][1],
              row["lm"][2], ", plain %.2f s" % row["plain"][0] if plain else "",
              row["numpy"][0], row["torch"][0]), flush=True)
    return row


def write(rows, path, seconds, load):
    L = ["# Elementwise merges against the memory floor", "",
         "Generated by `bench/perf/elementwise.py` in %.0f s on this machine (%d cores), "
         "load average %s at the start (other jobs shared the cores: wall times are "
         "inflated and noisy, CPU times — user + system of each process — much less so). "
         "Synthetic transformer-like models (bench/rss/gen_models.py), safetensors inputs "
         "in the page cache, output on tmpfs. *floor*: read every input once and write "
         "the output's bytes once. *numpy*, *torch*: `bench/perf/elementwise_ref.py` "
         "(memory-mapped inputs, per tensor b + c·Σ(fᵢ − b) in f32, output written once; "
         "torch with 2 threads). *libmerge*: `lmerge run --threads T` (the fused path); "
         "*plain*: the same with `LIBMERGE_FUSED=0` (the previous path). Ratios: "
         "libmerge / floor and torch / libmerge, on wall time and on CPU time." % (
             seconds, os.cpu_count(), load), "",
         "| method | dtype | models | MB per model | T | floor s (cpu) | libmerge s (cpu) "
         "| plain s (cpu) | numpy s (cpu) | torch s (cpu) | lm / floor wall (cpu) "
         "| torch / lm wall (cpu) | RSS MB lm / numpy / torch |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def t(k):
            return "%.2f (%.2f)" % r[k][:2] if k in r else "—"
        L.append("| %s | %s | %d | %d | %d | %s | %s | %s | %s | %s | %.2f (%.2f) | %.1f (%.1f) "
                 "| %.0f / %.0f / %.0f |" % (
                     r["method"], r["dtype"], r["n"], r["mb"], r["threads"], t("floor"),
                     t("lm"), t("plain"), t("numpy"), t("torch"),
                     r["lm"][0] / r["floor"][0], r["lm"][1] / r["floor"][1],
                     r["torch"][0] / r["lm"][0], r["torch"][1] / r["lm"][1],
                     r["lm"][2], r["numpy"][2], r["torch"][2]))
    two = [r for r in rows if r["threads"] == 2]
    wf = max(r["lm"][0] / r["floor"][0] for r in two)
    cf = max(r["lm"][1] / r["floor"][1] for r in two)
    wt = min(r["torch"][0] / r["lm"][0] for r in two)
    ct = min(r["torch"][1] / r["lm"][1] for r in two)
    L += ["", "## Targets (2-thread rows)", "",
          "- libmerge ≤ 1.5× the floor: %s on wall time (worst %.2f×), %s on CPU time "
          "(worst %.2f×)." % ("**met**" if wf <= 1.5 else "**not met**", wf,
                              "**met**" if cf <= 1.5 else "**not met**", cf),
          "- libmerge ≥ 3× faster than torch: %s on wall time (worst %.1f×), %s on CPU "
          "time (worst %.1f×)." % ("**met**" if wt >= 3 else "**not met**", wt,
                                   "**met**" if ct >= 3 else "**not met**", ct)]
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build-rel"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks",
                                                  "perf_elementwise.md"))
    a = ap.parse_args()
    os.makedirs(WORK, exist_ok=True)
    lmerge = os.path.join(a.build, "tools", "lmerge", "lmerge")
    load = "%.1f" % os.getloadavg()[0]
    t0 = time.time()
    rows = []
    for r in QUICK if a.quick else ROWS:
        rows.append(run_row(lmerge, *r))
        write(rows, a.out, time.time() - t0, load)  # a partial run still reports


if __name__ == "__main__":
    sys.exit(main())
