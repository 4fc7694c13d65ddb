"""Rank-aware whitening in numpy, written from the rule in
docs/methods/svd_family.md ("Rank-aware whitening") and the papers' polar
steps (TSV-M: Gargiulo et al., CVPR 2025; Iso-C/Iso-CTS: Marczak et al.,
ICML 2025; ESM: Li et al., CVPR 2026), not from the C code. Every
factorization is numpy's f64 SVD.

    tau   = sigma_1 * (C * eps_in * sqrt(max(m, n)) + tol)
    one task's spectrum (TSV-M's triplets, Iso-CTS's common and specific
    triplets, ESM's directions): keep s > tau, drop the rest (Iso-CTS
    projects only its kept common directions out of the tasks)
    the polar factor of a concatenation / sum: U g(S) V^T,
    g(s)  = s^2 / (s^2 + tau^2)
    eps_in(task t) = eps_f32 * sqrt(||base||^2 + ||base + tau_t||^2) / ||tau_t||
    eps_in(sum M)  = eps_f32 * sqrt(sum_t w_t^2 (||base||^2 + ||base + tau_t||^2)) / ||M||
"""
import numpy as np

import reference as ref

EPS32 = float(np.finfo(np.float32).eps)
C = 10.0  # whiten_floor (default)


def f64(x):
    return np.asarray(x, np.float64)


def input_precision(base, delta):
    """delta: the task vector as the library holds it (f32)."""
    b, d = f64(base), f64(delta)
    nd = np.linalg.norm(d)
    if nd == 0:
        return 0.0
    return EPS32 * np.sqrt((b ** 2).sum() + ((b + d) ** 2).sum()) / nd


def sum_precision(base, deltas, weights, total):
    b = f64(base)
    energy = sum(w * w * ((b ** 2).sum() + ((b + f64(d)) ** 2).sum())
                 for d, w in zip(deltas, weights))
    nm = np.linalg.norm(total)
    return EPS32 * np.sqrt(energy) / nm if nm > 0 else 0.0


def floor(sigma1, eps_in, m, n, tol=0.0):
    return sigma1 * (C * eps_in * np.sqrt(max(m, n)) + tol)


def weight(s, tau):
    s = f64(s)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = s * s / (s * s + tau * tau)
    return np.where(s > 0, g, 0.0)


def keep(s, tau):
    return (f64(s) > tau).astype(np.float64)


def polar(a, eps_in, tol=0.0):
    """U g(S) V^T and the mean singular value over the effective rank."""
    u, s, vt = ref.svd(a)
    g = weight(s, floor(s[0], eps_in, *a.shape, tol))
    return (u * g) @ vt, (s.sum() / g.sum() if g.sum() > 0 else 0.0)


def deltas_of(base, models):
    return [(f64(m) - f64(base)).astype(np.float32) for m in models]


def tsv(base, models, alpha=1.0, tol=1e-5, weights=None):
    d = deltas_of(base, models)
    rho = [input_precision(base, x) for x in d]
    d = [f64(x) * w for x, w in zip(d, weights or [1.0] * len(d))]
    m, n = d[0].shape
    k = max(1, min(m, n) // len(d))
    us, ss, vs = [], [], []
    for x, r in zip(d, rho):
        u, s, vt = ref.svd(f64(x))
        g = keep(s[:k], floor(s[0], r, m, n, tol))
        us.append(u[:, :k] * g); ss.append(s[:k]); vs.append(vt[:k].T * g)
    pu, _ = polar(np.concatenate(us, 1), max(rho), tol)
    pv, _ = polar(np.concatenate(vs, 1), max(rho), tol)
    return alpha * (pu * np.concatenate(ss)) @ pv.T


def iso_c(base, models, alpha=1.0, weights=None):
    d = deltas_of(base, models)
    w = weights or [1.0] * len(d)
    total = sum(f64(x) * wt for x, wt in zip(d, w))
    p, mean = polar(total, sum_precision(base, d, w, total))
    return alpha * mean * p


def iso_cts(base, models, alpha=1.0, common=0.8, tol=1e-5, weights=None):
    d = deltas_of(base, models)
    T = len(d)
    m, n = d[0].shape
    w = weights or [1.0] * T
    total = sum(f64(x) * wt for x, wt in zip(d, w))
    eps_m = sum_precision(base, d, w, total)
    rho = [input_precision(base, x) for x in d]
    d = [f64(x) * wt for x, wt in zip(d, w)]
    u, s, vt = ref.svd(total)
    kc, per = ref.iso_cts_sizes(min(m, n), T, common)
    gc = keep(s[:kc], floor(s[0], eps_m, m, n, tol))
    us, vs, ss, gs = [u[:, :kc] * gc], [vt[:kc].T * gc], [s[:kc]], [gc]
    # Only the kept common directions are projected out of the tasks (the
    # dropped ones are M's rounding noise).
    uc = u[:, :int(gc.sum())]
    for x, r in zip(d, rho):
        xp = f64(x) - uc @ (uc.T @ f64(x))
        tu, ts, tvt = ref.svd(xp)
        # sigma_1 of the task bounded by its Frobenius norm.
        g = keep(ts[:per], floor(np.linalg.norm(f64(x)), r, m, n, tol))
        us.append(tu[:, :per] * g); vs.append(tvt[:per].T * g)
        ss.append(ts[:per]); gs.append(g)
    eps_cat = max([eps_m] + rho)
    pu, _ = polar(np.concatenate(us, 1), eps_cat, tol)
    pv, _ = polar(np.concatenate(vs, 1), eps_cat, tol)
    sigma = np.concatenate(ss).sum() / np.concatenate(gs).sum()
    return alpha * sigma * (pu @ pv.T)


def esm_layer(base, models, xs, k=None, norm_power=2.0, eig_power=0.15):
    """ESM (released order of operations, pad=complete, generic preset) with
    rank-aware whitening: each task's directions are the right singular
    vectors of dO = X dW^T above numpy's matrix_rank tolerance (at most k)
    whose singular value s_i is above the task's floor, weighted by
    (lambda / mean)^eig_power / mean as released; the polar factors of
    P_cat and A_cat are rank-aware with the least precise task's eps_in."""
    d = deltas_of(base, models)
    T = len(d)
    d_out, d_in = d[0].shape
    k = k or max(1, d_out // T)
    rho = [input_precision(base, x) for x in d]
    us, vs, norms = [], [], []
    for dw, x, r in zip(d, xs, rho):
        dw, x = f64(dw), f64(x)
        _, s, vh = ref.svd(x @ dw.T)
        rank = int(np.sum(s ** 2 > (s[0] ** 2) * max(d_out, d_in) * np.finfo(float).eps))
        kt = min(k, rank)
        kt = int(keep(s[:kt], floor(s[0], r, d_out, d_in)).sum())
        p = vh[:kt].T
        nt = np.linalg.norm(dw)  # ||P^T dW|| over a complete orthonormal P
        norms.append(nt)
        a = (p.T @ dw) * nt ** norm_power
        lam = s[:kt] ** 2
        e = (lam / lam.mean()) ** eig_power
        e = e / e.mean()
        us.append(p * e[None, :])
        vs.append(a * e[:, None])
    pc = np.concatenate(us, 1)
    ac = np.concatenate(vs, 0) / np.mean(norms) ** norm_power
    cn = np.linalg.norm(ac, axis=0)
    ac = ac * (cn / cn.mean())[None, :] ** norm_power
    pu, mu = polar(pc, max(rho))
    pa, ma = polar(ac, max(rho))
    return 2 * (pu * mu) @ (pa * ma)
