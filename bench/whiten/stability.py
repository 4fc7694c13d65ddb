"""Which rank-aware whitening rule (docs/methods/svd_family.md, "Rank-aware
whitening"): stability under one ulp on every input against distance
from the released merge, for the library's `whiten=rank_aware` and numpy
variants of the rule it was chosen among.

Variants (numpy, f64 SVDs):
  polar weight g(s):  wiener  s^2/(s^2+tau^2)   (the library's)
                      tikhonov s/sqrt(s^2+tau^2) (A (A^T A + tau^2)^-1/2)
                      hard     1[s > tau]
  floor factor c in tau = s_1 (c eps_in sqrt(max(m, n)) + tol)
  Iso-CTS per-task directions: dropped below their floor (the library's)
                      or shrunk by the same g before the polar step.

Cases: Iso-C and Iso-CTS on T task vectors of rank r whose spectra fall
from 1e-2 to 1e-2 * 10**decay, over an f32 base of rms `base`. For each:
min over 3 perturbations of the cosine between the merge and the merge
of the inputs moved one ulp (random signs), and the cosine to the
released merge. Usage:

    LIBMERGE_LIBRARY=build/lib/libmerge.so PYTHONPATH=bindings/python \\
        OPENBLAS_NUM_THREADS=1 python3 bench/whiten/stability.py [--out FILE]
"""
import argparse
import time

import numpy as np

import libmerge

EPS32 = float(np.finfo(np.float32).eps)
CASES = [  # (m, n, T, rank, decay, base rms)
    (64, 96, 4, 8, -6, 0.05),
    (64, 96, 4, 64, -8, 0.05),
    (128, 128, 8, 16, -5, 0.02),
    (128, 128, 8, 16, -5, 0.0),
    (48, 200, 4, 12, -7, 0.1),
    (256, 392, 8, 16, -7, 0.03),
]


def make(seed, m, n, T, rank, decay, base_rms):
    rng = np.random.default_rng(seed)
    base = (base_rms * rng.standard_normal((m, n))).astype(np.float32)
    fts = []
    for _ in range(T):
        u, _ = np.linalg.qr(rng.standard_normal((m, rank)))
        v, _ = np.linalg.qr(rng.standard_normal((n, rank)))
        fts.append((base + (u * (1e-2 * np.logspace(0, decay, rank))) @ v.T).astype(np.float32))
    return base, fts


def one_ulp(x, seed):
    up = np.random.default_rng(seed).random(x.shape) < 0.5
    return np.where(up, np.nextafter(x, np.float32(np.inf)),
                    np.nextafter(x, np.float32(-np.inf))).astype(np.float32)


def weight(kind, s, tau):
    s = np.asarray(s, np.float64)
    if kind == "hard":
        return (s > tau).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = s * s / (s * s + tau * tau) if kind == "wiener" else s / np.sqrt(s * s + tau * tau)
    return np.where(s > 0, g, 0.0)


def polar(a, eps_in, kind, c, tol=0.0):
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    tau = s[0] * (c * eps_in * np.sqrt(max(a.shape)) + tol)
    g = weight(kind, s, tau)
    return (u * g) @ vt, s.sum() / g.sum()


def precisions(base, fts):
    b = base.astype(np.float64)
    d = [(f.astype(np.float64) - b).astype(np.float32).astype(np.float64) for f in fts]
    rho = [EPS32 * np.sqrt((b ** 2).sum() + ((b + x) ** 2).sum()) / np.linalg.norm(x) for x in d]
    total = sum(d)
    eps_m = EPS32 * np.sqrt(sum((b ** 2).sum() + ((b + x) ** 2).sum() for x in d)) / np.linalg.norm(total)
    return d, rho, total, eps_m


def iso_c(base, fts, kind, c):
    _, _, total, eps_m = precisions(base, fts)
    p, mean = polar(total, eps_m, kind, c)
    return mean * p


def iso_cts(base, fts, kind, c, task_rule="drop", common=0.8, tol=0.0):
    d, rho, total, eps_m = precisions(base, fts)
    m, n = total.shape
    T = len(d)
    full = min(m, n)
    kc = int(full * common)
    per = round((full - kc) / T)
    kc = full - per * T
    u, s, vt = np.linalg.svd(total, full_matrices=False)

    def block(sv, tau):
        return weight("hard" if task_rule == "drop" else kind, sv, tau)

    gc = block(s[:kc], s[0] * (c * eps_m * np.sqrt(max(m, n)) + tol))
    us, vs, ss, gs = [u[:, :kc] * gc], [vt[:kc].T * gc], [s[:kc]], [gc]
    # Dropped: only the kept common directions are projected out (as the
    # library); shrunk: all of them, each with its weight in the polar.
    uc = u[:, :int((gc > 0.5).sum())] if task_rule == "drop" else u[:, :kc]
    for x, r in zip(d, rho):
        xp = x - uc @ (uc.T @ x)
        tu, ts, tvt = np.linalg.svd(xp, full_matrices=False)
        g = block(ts[:per], np.linalg.norm(x) * (c * r * np.sqrt(max(m, n)) + tol))
        us.append(tu[:, :per] * g); vs.append(tvt[:per].T * g); ss.append(ts[:per]); gs.append(g)
    eps_cat = max([eps_m] + rho)
    pu, _ = polar(np.concatenate(us, 1), eps_cat, kind, c, tol)
    pv, _ = polar(np.concatenate(vs, 1), eps_cat, kind, c, tol)
    return np.concatenate(ss).sum() / np.concatenate(gs).sum() * (pu @ pv.T)


def cosine(a, b):
    a, b = a.ravel(), b.ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def measure(fn, base, fts, released):
    ref = fn(base, fts)
    worst = min(cosine(ref, fn(base, [one_ulp(f, 100 * s + i) for i, f in enumerate(fts)]))
                for s in range(3))
    return worst, cosine(ref, released)


def library(method, mode):
    def fn(base, fts):
        out = libmerge.merge(method, {"w": base}, [{"w": f} for f in fts], whiten=mode,
                             svd_tolerance=0.0)["w"]
        return out.astype(np.float64) - base
    return fn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", help="write the markdown report here")
    args = ap.parse_args()
    start = time.time()
    rows = []
    for case in CASES:
        base, fts = make(1, *case)
        for method in ["iso_c", "iso_cts"]:
            released = library(method, "released")(base, fts)
            variants = [("library released", library(method, "released")),
                        ("library rank_aware", library(method, "rank_aware"))]
            for kind in ["wiener", "tikhonov", "hard"]:
                for c in [1.0, 3.0, 10.0, 30.0]:
                    if method == "iso_c":
                        variants.append(("%s c=%g" % (kind, c),
                                         lambda b, f, k=kind, cc=c: iso_c(b, f, k, cc)))
                    else:
                        variants.append(("%s c=%g, tasks dropped" % (kind, c),
                                         lambda b, f, k=kind, cc=c: iso_cts(b, f, k, cc)))
            if method == "iso_cts":
                variants.append(("wiener c=10, tasks shrunk",
                                 lambda b, f: iso_cts(b, f, "wiener", 10.0, task_rule="shrink")))
            for name, fn in variants:
                ulp, to_rel = measure(fn, base, fts, released)
                rows.append((case, method, name, ulp, to_rel))
                print(case, method, name, "%.7f %.5f" % (ulp, to_rel), flush=True)
    lines = ["# Rank-aware whitening: which rule (`bench/whiten/stability.py`)", "",
             "Cosine of each merge to the same merge of inputs moved one ulp "
             "(worst of 3 perturbations; >= 0.9999 is the target) and cosine to "
             "the released merge (1 = unchanged). Library rows use "
             "`svd_tolerance=0`; the numpy rows are variants of the rule "
             "(docs/methods/svd_family.md). Case: m x n, T tasks of rank r, "
             "spectra falling to 10^decay, base rms. %.0f s." % (time.time() - start), "",
             "| case (m, n, T, r, decay, base) | method | variant | 1-ulp cosine | cosine to released |",
             "|---|---|---|---|---|"]
    for case, method, name, ulp, to_rel in rows:
        lines.append("| %s | %s | %s | %.7f | %.5f |" % (case, method, name, ulp, to_rel))
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
