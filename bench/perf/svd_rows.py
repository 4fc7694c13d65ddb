"""SVD-family rows of the speed benchmark (issue 24 item 3): tsv, tsv
randomized, iso_c and iso_cts (tsv and iso_c also with
whiten="rank_aware") in libmerge against the torch reference
(f32 torch.linalg.svd, 2 torch threads and 2 OpenBLAS threads, the way
Python merging tools compute them; bench/perf/reference.py's tsv/iso_c and
an iso_cts written the same way here) on the same 2 cores, and the
relative difference of both to a float64 numpy reference
(tests/python/reference.py, np.linalg.svd).

One transformer block's matrices at hidden h (h x h, 4h x h, h x 4h;
`--hidden`, 768 as ViT-B: 11 MB per model in f32), 4 fine-tunes. Task vectors are either
i.i.d. Gaussian (`flat`: the worst case for truncation and for the
randomized finder) or random vectors with a decaying spectrum (`decay`,
singular values 0.99^i as fine-tuning updates roughly have). Each side
runs in its own process on files in /tmp and times only the merge (data
generation and loading excluded). libmerge: Python bindings, every layer
in one merge call (as `lmerge run` merges a model), threads=1 and
threads=2, OpenBLAS single-threaded (docs/api.md).

ESM (Li et al., "Model Merging in the Essential Subspace", CVPR 2026;
released code kiddo127/ESM) also needs each task's inputs to every layer:
synthetic calibration inputs X_t (N = 4h rows per task and layer, i.i.d.
Gaussian columns scaled log-evenly from 1 to 0.01, so X^T X is far from
isotropic as activations are). torch_esm below computes it the way the
released code does: per task the f32 SVD of the output shift
dO = X dW^T, then the paper's weights and two polar factors. libmerge
receives X^T X through libmerge.Stats; building the statistics
(Stats.observe) is timed apart from the merge and reported as `observe`.
The f64 reference is tests/python/reference.py's esm_routed.

usage: LIBMERGE_LIBRARY=build-rel/lib/libmerge.so.1 bench/perf/svd_rows.py [--quick] [--hidden 768] [--kinds flat,decay]
                             [--methods tsv,iso_c,...] [--out FILE.md]
  (--quick: one 512x512 and one 2048x512 layer; --out: default
  docs/benchmarks/svd.md, the generated page with the load average at the
  start and end of the run, so `nice -n 19 bench/perf/svd_rows.py`
  regenerates it unattended)"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
PY = "/usr/bin/python3"
WORK = os.environ.get("BENCH_TMP", "/tmp/lmerge-bench-svd-rows")
T = 4

METHODS = {  # label -> (libmerge strategy, libmerge params, torch function)
    "tsv": ("tsv", {"whiten": "released"}, "tsv"),
    "tsv rank_aware": ("tsv", {"whiten": "rank_aware"}, "tsv"),
    "tsv randomized": ("tsv", {"randomized": True, "whiten": "released"}, "tsv"),
    "iso_c": ("iso_c", {"whiten": "released"}, "iso_c"),
    "iso_c rank_aware": ("iso_c", {"whiten": "rank_aware"}, "iso_c"),
    "iso_cts": ("iso_cts", {}, "iso_cts"),
    # The released code's scalings, as torch_esm and esm_routed compute
    # them (the library's default has them off, docs/methods/esm.md).
    "esm": ("esm", {"inter_task": True, "eig_weighting": True, "inter_dim": True,
                    "layer_scaling": True}, "esm"),
}
# Rows whose float64 reference is not the released method's: the
# rank-aware rule in numpy (tests/python/whiten_reference.py). Their torch
# column is the released method's torch run (the same function on the same
# inputs): the papers' code, which a user would otherwise run.
F64_REFERENCE = {"tsv rank_aware": "tsv_rank_aware", "iso_c rank_aware": "iso_c_rank_aware"}


# --- data ------------------------------------------------------------------

def make_tasks(kind, shapes, path):
    rng = np.random.default_rng(0)
    arrays = {}
    for li, (m, n) in enumerate(shapes):
        d = min(m, n)
        for t in range(T):
            if kind == "flat":
                x = 0.01 * rng.standard_normal((m, n))
            else:
                u, _ = np.linalg.qr(rng.standard_normal((m, d)))
                v, _ = np.linalg.qr(rng.standard_normal((n, d)))
                x = (u * (0.05 * 0.99 ** np.arange(d))) @ v.T
            arrays["l%d_t%d" % (li, t)] = x.astype(np.float32)
    np.savez(path, **arrays)


def make_inputs(shapes, path):
    """Calibration inputs per (layer, task): N = 4h rows (>= d_out, so the
    released code's identity padding never applies), columns scaled from 1
    down to 0.01."""
    rng = np.random.default_rng(1)
    rows = max(max(s) for s in shapes)
    arrays = {}
    for li, (_, n) in enumerate(shapes):
        scale = np.logspace(0, -2, n)
        for t in range(T):
            arrays["x%d_t%d" % (li, t)] = (
                rng.standard_normal((rows, n)) * scale).astype(np.float32)
    np.savez(path, **arrays)


def load_inputs(path, n_layers):
    z = np.load(path)
    return [[z["x%d_t%d" % (li, t)] for t in range(T)] for li in range(n_layers)]


def load(path, n_layers):
    z = np.load(path)
    return [[z["l%d_t%d" % (li, t)] for t in range(T)] for li in range(n_layers)]


# --- the three sides (each in its own process) -------------------------------

def side_libmerge(path, n_layers, method, threads, out):
    import libmerge
    strategy, params, _ = METHODS[method]
    layers = load(path, n_layers)
    params = dict(params)
    if method == "esm":
        xs = load_inputs(inputs_path(path), n_layers)
        t0 = time.perf_counter()
        stats = libmerge.Stats()
        for li, xl in enumerate(xs):
            for t, x in enumerate(xl):
                stats.observe(t, "l%d" % li, x)
        print("observe %.3f" % (time.perf_counter() - t0))
        params["stats"] = stats
    # One merge of every layer, as `lmerge run` merges a model: tensors
    # run on the context's threads side by side.
    # The base is resident, as a loaded model's is: np.zeros would hand
    # over untouched pages and the merge would pay their first faults.
    base = {"l%d" % li: np.full(taus[0].shape, 0.0, np.float32)
            for li, taus in enumerate(layers)}
    models = [{"l%d" % li: taus[t] for li, taus in enumerate(layers)} for t in range(T)]
    t0, c0 = time.perf_counter(), time.process_time()
    results = libmerge.merge(strategy, base, models, threads=threads, **params)
    seconds = time.perf_counter() - t0
    print("cpu %.3f" % (time.process_time() - c0))
    np.savez(out, **results)
    return seconds


def torch_iso_cts(taus, common=0.8):
    """Iso-CTS the way the official code computes it (f32 torch SVDs)."""
    import torch
    total = sum(taus)
    m, n = total.shape
    full = min(m, n)
    u, s, vt = torch.linalg.svd(total, full_matrices=False)
    kc = int(full * common)
    specific = round((full - kc) / len(taus)) * len(taus)
    if specific > full:
        specific = (full // len(taus)) * len(taus)
    kc, per = full - specific, specific // len(taus)
    uc = u[:, :kc]
    us, ss, vs = [u[:, :kc]], [s[:kc]], [vt[:kc]]
    for x in taus:
        r = x - uc @ (uc.T @ x)
        a, b, c = torch.linalg.svd(r, full_matrices=False)
        us.append(a[:, :per]); ss.append(b[:per]); vs.append(c[:per])
    U, S, V = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 0)
    pu = torch.linalg.svd(U, full_matrices=False)
    pv = torch.linalg.svd(V, full_matrices=False)
    return S.mean() * (pu[0] @ pu[2]) @ (pv[0] @ pv[2])


def torch_esm(taus, xs, norm_power=2.0, eig_power=0.15):
    """One layer of ESM as the released code computes it (f32 torch):
    essential subspace of each task from the SVD of its output shift
    dO = X dW^T (P = right singular vectors, lambda = s^2 / (N - 1)),
    k = d_out // T directions per task weighted by (lambda / mean)^0.15,
    A = P^T dW scaled by ||A||^p (inter-task) and divided by the tasks'
    mean norm^p, input columns scaled by (norm / mean)^p (inter-dim), then
    2 * (polar(P_cat) mean s_P) (polar(A_cat) mean s_A)."""
    import torch
    d_out = taus[0].shape[0]
    k = max(1, d_out // len(taus))
    ps, acs, norms = [], [], []
    for dw, x in zip(taus, xs):
        d_o = x @ dw.T
        _, s, vh = torch.linalg.svd(d_o, full_matrices=False)
        p = vh.T
        lam = s ** 2 / (x.shape[0] - 1)
        a = p.T @ dw
        nt = torch.linalg.norm(a)
        norms.append(nt)
        a = a * nt ** norm_power
        e = (lam[:k] / lam[:k].mean()) ** eig_power
        e = e / e.mean()
        ps.append(p[:, :k] * e[None, :])
        acs.append(a[:k] * e[:, None])
    pc, ac = torch.cat(ps, 1), torch.cat(acs, 0)
    ac = ac / torch.stack(norms).mean() ** norm_power
    cn = torch.linalg.norm(ac, dim=0)
    ac = ac * (cn / cn.mean())[None, :] ** norm_power
    up, sp, vp = torch.linalg.svd(pc, full_matrices=False)
    ua, sa, va = torch.linalg.svd(ac, full_matrices=False)
    return 2 * ((up @ vp) * sp.mean()) @ ((ua @ va) * sa.mean())


def side_torch(path, n_layers, method, out):
    import torch
    sys.path.insert(0, HERE)
    import reference
    torch.set_num_threads(2)
    fn = {"tsv": reference.tsv, "iso_c": reference.iso_c,
          "iso_cts": torch_iso_cts, "esm": torch_esm}[METHODS[method][2]]
    layers = [[torch.from_numpy(x) for x in taus] for taus in load(path, n_layers)]
    xs = ([[torch.from_numpy(x) for x in xl] for xl in load_inputs(inputs_path(path), n_layers)]
          if method == "esm" else None)
    results, t0, c0 = {}, time.perf_counter(), time.process_time()
    for li, taus in enumerate(layers):
        results["l%d" % li] = (fn(taus, xs[li]) if xs else fn(taus)).numpy()
    seconds = time.perf_counter() - t0
    print("cpu %.3f" % (time.process_time() - c0))
    np.savez(out, **results)
    return seconds


def side_f64(path, n_layers, method, out):
    sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
    import reference as ref
    layers = load(path, n_layers)
    if method == "esm":
        xs = load_inputs(inputs_path(path), n_layers)
        names = ["l%d" % li for li in range(n_layers)]
        results = ref.esm_routed(dict(zip(names, layers)), dict(zip(names, xs)),
                                 {k: "esd" for k in names})
    elif method in F64_REFERENCE:
        import whiten_reference as wr
        fn = {"tsv": wr.tsv, "iso_c": wr.iso_c}[METHODS[method][2]]
        results = {"l%d" % li: fn(np.zeros(taus[0].shape, np.float32), taus)
                   for li, taus in enumerate(layers)}
    else:
        fn = {"tsv": ref.tsv, "iso_c": ref.iso_c,
              "iso_cts": ref.iso_cts}[METHODS[method][2]]
        results = {"l%d" % li: fn([x.astype(np.float64) for x in taus])
                   for li, taus in enumerate(layers)}
    np.savez(out, **results)
    return 0.0


# --- driver ------------------------------------------------------------------

def inputs_path(path):
    return path[:-len(".npz")] + "_inputs.npz"


def child(args, blas_threads):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(blas_threads),
               PYTHONPATH=os.path.join(ROOT, "bindings", "python"))
    p = subprocess.run([PY, os.path.abspath(__file__), "--side"] + [str(a) for a in args],
                       env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit("failed: %s\n%s" % (args, p.stderr))
    lines = p.stdout.strip().splitlines()
    def tagged(tag):
        got = [float(x.split()[1]) for x in lines if x.startswith(tag + " ")]
        return got[0] if got else None
    return float(lines[-1]), tagged("observe"), tagged("cpu")


def rel(path, ref_path, n_layers):
    a, b = np.load(path), np.load(ref_path)
    num = sum(np.linalg.norm(a["l%d" % i].astype(np.float64) - b["l%d" % i]) ** 2
              for i in range(n_layers))
    den = sum(np.linalg.norm(b["l%d" % i]) ** 2 for i in range(n_layers))
    return float(np.sqrt(num / den))


# Above this 1-minute load average (2 cores) the run shared its cores and the
# target column is not filled in.
LOADED = 2.5

# What the table does not say by itself; kept in the generated page.
NOTES = [
    "## Notes",
    "",
    "- *flat*: i.i.d. Gaussian task vectors; *decay*: singular values 0.99^i. "
    "*CPU s*: user + system time of the process (all its threads); torch's counts "
    "both of its threads, so on a quiet machine its wall time is about half its "
    "CPU time. On a loaded machine the wall columns are not evidence of speed "
    "(torch's 2 + 2 threads degrade most under oversubscription); compare CPU "
    "times there.",
    "- *Threads* (docs/methods/svd_family.md, \"How the work is spread\"): tensors "
    "run side by side, a tensor's independent items (tsv's and iso_cts' per-task "
    "SVDs, the two polar factors) on idle threads, and inside one factorization "
    "the Gram products, the products after them and the eigendecomposition's "
    "back-transformation in blocks fixed by the sizes, so the last tensors of a "
    "run, or a single layer, use both cores with the same bytes for any thread "
    "count. What stays on one core: `sytrd` and `stedc` of each "
    "eigendecomposition (about 60 % of a 768² one) and the element-wise passes.",
    "- *ESM*: calibration inputs are synthetic (per task and layer N = 4h rows, "
    "Gaussian columns scaled log-evenly from 1 to 0.01); torch computes ESM the "
    "way the released code does (f32 SVD of each task's output shift X dW^T, "
    "N x d_out, then the two polar factors); libmerge gets X^T X through "
    "`libmerge.Stats` and takes its cheapest exact route (docs/methods/esm.md). "
    "The f64 reference is tests/python/reference.py's `esm_routed`.",
    "- *rank_aware* rows: `whiten=\"rank_aware\"` (docs/methods/svd_family.md, "
    "\"Rank-aware whitening\"); the other tsv and iso_c rows pin "
    "`whiten=\"released\"`. Their torch column is the released method's torch run "
    "(the papers' code, the same function on the same inputs), their f64 reference "
    "the rank-aware rule in numpy (tests/python/whiten_reference.py).",
    "- *Randomized tsv*: its torch column is the tsv row's torch run (the same "
    "function on the same inputs). With 4 tasks, k = h/4 and a sketch of rank "
    "l = 1.5 k > min(m, n)/4, so it runs the exact ladder without sketching "
    "(decided from the sizes) and equals tsv's results; a sketch is tried only "
    "up to min(m, n)/4 (docs/methods/svd_family.md, \"Randomized SVD\").",
    "",
]


def write(rows, shapes, seconds, path, loads):
    lines = [
        "# SVD-family merge time",
        "",
        "Generated by `bench/perf/svd_rows.py` in %.0f s on this machine (2 cores; "
        "load average (1 min) %.1f at the start, %.1f at the end: above %.1f "
        "other jobs shared the cores, wall times are inflated, CPU times less so, "
        "and the target is not judged). Layers %s, %d "
        "fine-tunes. *torch*: f32 `torch.linalg.svd`, 2 torch threads and 2 OpenBLAS "
        "threads (bench/perf/reference.py's tsv and iso_c; iso_cts written the same "
        "way in svd_rows.py). *libmerge*: Python bindings, 1 or 2 threads, OpenBLAS "
        "single-threaded. Each side runs in its own process and times only the "
        "merge. *rel. diff*: ‖x − ref‖_F / ‖ref‖_F over all layers against a float64 "
        "numpy reference (tests/python/reference.py)." % (
            seconds, loads[0], loads[1], LOADED, ", ".join("%dx%d" % s for s in shapes), T),
        "",
        "| method | spectrum | libmerge 1 thr (s) | libmerge 2 thr (s) | torch (s) | "
        "torch / libmerge | CPU s: libmerge 1 / 2 thr, torch | libmerge rel. diff | "
        "torch rel. diff | target met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    # Wall ratios on a shared machine say nothing about the target.
    loaded = max(loads) > LOADED
    for r in rows:
        speed = r["torch"] / r["lm2"]
        met = speed >= 1.5 and r["rel_lm"] <= 1e-4
        verdict = "not judged (load)" if loaded else "yes" if met else "**no**"
        lines.append("| %s | %s | %.2f | %.2f | %.2f | %.2f | %.2f / %.2f, %.2f | %.1e | "
                     "%.1e | %s |" % (
                         r["method"], r["kind"], r["lm1"], r["lm2"], r["torch"], speed,
                         r["cpu_lm1"], r["cpu_lm2"], r["cpu_torch"], r["rel_lm"],
                         r["rel_torch"], verdict))
    lines += ["", "Target (issue 24): libmerge at least 1.5x faster than torch on the same "
              "cores (torch / libmerge >= 1.5) at relative difference <= 1e-4 to the f64 "
              "reference.", ""]
    for r in rows:
        if r.get("observe") is not None:
            lines += ["ESM (%s): building libmerge's statistics (Stats.observe of every "
                      "layer's X, 1 thread) took %.2f s, not in the libmerge columns; "
                      "torch's column includes its X dW^T products." % (r["kind"], r["observe"]),
                      ""]
    png = path[:-3] + ".png"
    if plot(rows, png):
        lines += ["![torch / libmerge per row](%s)" % os.path.basename(png), ""]
    lines += NOTES
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(rows, png):
    """torch / libmerge per row (wall on 2 threads, and CPU time) with the
    1.5x target line; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels = ["%s\n%s" % (r["method"], r["kind"]) for r in rows]
    x = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(rows)), 3.8))
    ax.bar([i - 0.2 for i in x], [r["torch"] / r["lm2"] for r in rows], 0.4,
           label="wall, libmerge 2 threads")
    ax.bar([i + 0.2 for i in x], [r["cpu_torch"] / r["cpu_lm2"] for r in rows], 0.4,
           label="CPU time")
    ax.axhline(1.5, color="k", ls="--", lw=1, label="target 1.5x")
    ax.set_ylabel("torch / libmerge")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return True


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--side":
        side, path, n_layers, method, out = sys.argv[2:7]
        n_layers = int(n_layers)
        if side == "libmerge":
            s = side_libmerge(path, n_layers, method, int(sys.argv[7]), out)
        elif side == "torch":
            s = side_torch(path, n_layers, method, out)
        else:
            s = side_f64(path, n_layers, method, out)
        print(s)
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "svd.md"))
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--kinds", default="flat,decay")
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    h = 512 if args.quick else args.hidden
    shapes = [(h, h), (4 * h, h), (h, 4 * h)][:2 if args.quick else 3]
    os.makedirs(WORK, exist_ok=True)
    t0, rows, load0, torch_runs = time.perf_counter(), [], os.getloadavg()[0], {}
    for kind in args.kinds.split(","):
        size = "%d_%d" % (h, len(shapes))
        path = os.path.join(WORK, "%s_%s.npz" % (kind, size))
        if not os.path.exists(path):
            make_tasks(kind, shapes, path)
        if "esm" in args.methods.split(",") and not os.path.exists(inputs_path(path)):
            make_inputs(shapes, inputs_path(path))
        for method in args.methods.split(","):
            tag = os.path.join(WORK, "%s_%s_%s" % (kind, size, method.replace(" ", "_")))
            # tsv randomized has tsv's reference: computed once.
            ref = os.path.join(WORK, "%s_%s_%s_f64.npz" % (
                kind, size, F64_REFERENCE.get(method, METHODS[method][2])))
            if not os.path.exists(ref):
                child(["f64", path, len(shapes), method, ref], 2)
            lm1, obs1, cpu1 = child(["libmerge", path, len(shapes), method,
                                     tag + "_lm1.npz", 1], 1)
            lm2, _, cpu2 = child(["libmerge", path, len(shapes), method, tag + "_lm2.npz", 2], 1)
            # tsv randomized has tsv's torch side (the same function): run once.
            tkey = (kind, METHODS[method][2])
            if tkey not in torch_runs:
                torch_runs[tkey] = child(["torch", path, len(shapes), method,
                                          tag + "_torch.npz"], 2), tag + "_torch.npz"
            (tt, _, cput), torch_out = torch_runs[tkey]
            rows.append({"method": method, "kind": kind, "lm1": lm1, "lm2": lm2, "torch": tt,
                         "observe": obs1, "cpu_lm1": cpu1, "cpu_lm2": cpu2, "cpu_torch": cput,
                         "rel_lm": rel(tag + "_lm2.npz", ref, len(shapes)),
                         "rel_torch": rel(torch_out, ref, len(shapes))})
            print(json.dumps(rows[-1]), flush=True)
    write(rows, shapes, time.perf_counter() - t0, args.out, (load0, os.getloadavg()[0]))


if __name__ == "__main__":
    main()
