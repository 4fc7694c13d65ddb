"""Independent numpy implementations of the merge methods, written from the
papers' equations (see docs/methods/), used as references by the tests."""
import re

import numpy as np

M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def low_rank_tasks(rng, shape, n_tasks, rank=8, noise=0.01):
    """Task vectors: random low-rank plus noise, as fine-tuning produces."""
    m, n = shape
    return [(rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n)) / np.sqrt(rank)
             + noise * rng.standard_normal((m, n))).astype(np.float32)
            for _ in range(n_tasks)]


# --- seeds: the documented counter-based RNG (docs/methods/ties_dare.md) ---

def mix64(x):
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def tensor_seed(seed, name):
    h = np.uint64(0xCBF29CE484222325)
    with np.errstate(over="ignore"):
        for b in name.encode():
            h = (h ^ np.uint64(b)) * np.uint64(0x100000001B3)
    return mix64(h ^ mix64(np.uint64(seed)))


def dare_keep(seed, name, task, n, density):
    stream = mix64(tensor_seed(seed, name) ^ mix64(np.uint64(0xDA3E0000 + task)))
    u = (mix64(stream ^ mix64(np.arange(n, dtype=np.uint64))) >> np.uint64(11)).astype(np.float64) / 2.0**53
    return u < density


# --- TIES / DARE ---

def top_k(x, density):
    flat = x.ravel()
    k = max(1, int(np.floor(density * flat.size)))
    keep = np.argsort(-np.abs(flat), kind="stable")[:k]
    out = np.zeros_like(flat)
    out[keep] = flat[keep]
    return out.reshape(x.shape)


def sign_merge(tasks, weights, consensus="sum", divide="count", weights_in_election=False):
    t = np.stack([x.astype(np.float64) for x in tasks])
    w = np.asarray(weights, dtype=np.float64).reshape((-1,) + (1,) * (t.ndim - 1))
    v = t * w if weights_in_election else t
    vote = np.sign(v).sum(0) if consensus == "count" else v.sum(0)
    sign = np.where(vote >= 0, 1.0, -1.0)
    # Agreement is judged on the values that voted (mergekit's mask on the
    # weighted task vectors); a zero divisor divides by 1 (mergekit).
    agree = (v != 0) & (np.sign(v) == sign)
    num = (w * t * agree).sum(0)
    if divide == "none":
        return num
    den = (w * agree).sum(0) if divide == "weights" else agree.sum(0)
    return num / np.where(den == 0, 1, den)


def ties(tasks, weights, density=0.2, lam=1.0, **opts):
    return lam * sign_merge([top_k(x, density) for x in tasks], weights, **opts)


def dare(tasks, weights, name, seed, density, rescale=True):
    out = []
    for t, x in enumerate(tasks):
        keep = dare_keep(seed, name, t, x.size, density).reshape(x.shape)
        out.append(np.where(keep, x / density if rescale else x, 0.0).astype(np.float32))
    return out


# --- SVD family ---

FLIP_RNG = None


def svd(a):
    """Thin SVD; with FLIP_RNG set, singular pairs get random signs (the
    decomposition is just as valid), to test sign-flip invariance."""
    u, s, vt = np.linalg.svd(a.astype(np.float64), full_matrices=False)
    if FLIP_RNG is not None:
        f = FLIP_RNG.choice([-1.0, 1.0], size=s.size)
        u, vt = u * f, vt * f[:, None]
    return u, s, vt


def polar(a):
    u, _, vt = svd(a)
    return u @ vt


def tsv(tasks, alpha=1.0):
    """TSV-M: per task top rank/T triplets, concatenated, U and V replaced by
    their polar factors, singular values kept."""
    m, n = tasks[0].shape
    k = max(1, min(m, n) // len(tasks))
    us, ss, vs = [], [], []
    for x in tasks:
        u, s, vt = svd(x)
        us.append(u[:, :k]); ss.append(s[:k]); vs.append(vt[:k].T)
    u = polar(np.concatenate(us, 1))
    v = polar(np.concatenate(vs, 1))
    return alpha * (u * np.concatenate(ss)) @ v.T


def iso_c(tasks, alpha=1.0):
    u, s, vt = svd(sum(x.astype(np.float64) for x in tasks))
    return alpha * s.mean() * (u @ vt)


def iso_cts_sizes(full, n_tasks, common):
    """(k_c, per-task size) as the official code computes them
    (github.com/danielm1405/iso-merging, src/utils/iso.py; Marczak et al.,
    ICML 2025, Sec. 4): start from int(full * common), round the
    task-specific total to a multiple of T with Python's round (ties to
    even), give the common space the rest, so k_c + T * per == full.
    The official code fails where that total exceeds full (int(full *
    common) < T / 2); libmerge documents per = full // T there."""
    kc = int(full * common)
    specific = round((full - kc) / n_tasks) * n_tasks
    if specific > full:
        specific = (full // n_tasks) * n_tasks
    kc = full - specific
    return kc, specific // n_tasks


def iso_cts(tasks, alpha=1.0, common=0.8):
    """Iso-CTS: the sum's top k_c triplets (common space), each task's top
    `per` triplets after projecting out the common left space, the two
    concatenated bases orthogonalised (U V^T of their SVDs), every singular
    value replaced by the mean of the concatenated ones."""
    m, n = tasks[0].shape
    full = min(m, n)
    total = sum(x.astype(np.float64) for x in tasks)
    u, s, vt = svd(total)
    kc, per = iso_cts_sizes(full, len(tasks), common)
    uc = u[:, :kc]
    us, ss, vs = [], [], []
    for x in tasks:
        xp = x.astype(np.float64) - uc @ (uc.T @ x.astype(np.float64))
        tu, ts, tvt = svd(xp)
        us.append(tu[:, :per]); ss.append(ts[:per]); vs.append(tvt[:per].T)
    # The official code lays the task blocks first and the common space
    # last; the column order changes neither polar factor's product.
    us.append(uc); ss.append(s[:kc]); vs.append(vt[:kc].T)
    U = polar(np.concatenate(us, 1))
    V = polar(np.concatenate(vs, 1))
    sigma = np.concatenate(ss).mean()
    return alpha * sigma * (U @ V.T)


def knots(tasks, weights, merge="ties", density=0.2, lam=1.0):
    """KnOTS: SVD of the concatenation, merge the aligned S V_t^T blocks."""
    m, n = tasks[0].shape
    x = np.concatenate([t.astype(np.float64) for t in tasks], 1)
    u, s, vt = svd(x)
    blocks = [(s[:, None] * vt[:, i * n:(i + 1) * n]).astype(np.float32)
              for i in range(len(tasks))]
    if merge == "ties":
        merged = sign_merge([top_k(b, density) for b in blocks], weights)
    else:
        merged = sum(w * b.astype(np.float64) for w, b in zip(weights, blocks))
    return lam * (u @ merged)


# --- ESM (the released algorithm, SVD route: PCA of dO = X dW^T) ---

def esm_layer(dws, xs, k=None, pad_identity=False, norm_power=2.0, eig_power=0.15,
              inter_task=True, eig_weighting=True, inter_dim=True, route="svd",
              keep_rank=False, combine="polar"):
    """route="svd": P, lambda from the uncentred SVD of dO = X dW^T, as
    released; route="gram": eigenvectors / eigenvalues of dW (X^T X) dW^T
    (docs/methods/esm.md step 1), only for n >= d_out (no padding).
    keep_rank: a task keeps only its directions with s^2 above numpy's
    matrix_rank tolerance (s_max^2 max(d_out, d_in) eps) among the first k
    -- libmerge's documented rule where k exceeds rank(dO) and the released
    directions are an arbitrary null-space basis."""
    T = len(dws)
    d_out, d_in = dws[0].shape
    k = k or max(1, d_out // T)
    us, vs, norms = [], [], []
    for dw, x in zip(dws, xs):
        dw = dw.astype(np.float64)
        x = x.astype(np.float64)
        n = x.shape[0]
        if route == "gram":
            assert n >= d_out, "the Gram route here has no padding"
            ev, p = np.linalg.eigh(dw @ (x.T @ x) @ dw.T)
            order = np.argsort(-ev, kind="stable")
            p = p[:, order]
            lam = np.maximum(ev[order], 0.0) / (n - 1)
        else:
            _, s, vh = svd(x @ dw.T)
            p = vh.T
            lam = s ** 2 / (n - 1)
        if p.shape[1] < d_out and keep_rank and not pad_identity:
            # Only the rank's directions are kept, and an orthonormal
            # completion leaves ||P^T dW|| = ||dW||: no d_out x d_out basis
            # needed (lm_head-sized tests).
            a = p.T @ dw
            nt = np.linalg.norm(dw)
            lam = lam[:p.shape[1]]
        elif p.shape[1] < d_out:
            r = p.shape[1]
            if pad_identity:
                p = np.concatenate([p, np.eye(d_out)[:, r:]], 1)
            else:  # orthonormal completion
                q, _ = np.linalg.qr(np.concatenate([p, np.eye(d_out)], 1))
                p = np.concatenate([p, q[:, r:d_out]], 1)
            lam = np.concatenate([lam, np.zeros(d_out - r)])
        if not (keep_rank and not pad_identity and p.shape[1] < d_out):
            a = p.T @ dw
            nt = np.linalg.norm(a)
        norms.append(nt)
        if inter_task:
            a = a * nt ** norm_power
        kt = k
        if keep_rank:
            ev = lam * max(n - 1, 1)
            kt = min(k, int(np.sum(ev > ev.max() * max(d_out, d_in) * np.finfo(float).eps)))
        lk = lam[:kt]
        if eig_weighting and kt and lk.mean() > 0:
            e = (lk / lk.mean()) ** eig_power
            e = e / e.mean()
        else:
            e = np.ones(kt)
        us.append(p[:, :kt] * e[None, :])
        vs.append(a[:kt] * e[:, None])
    pc = np.concatenate(us, 1)
    ac = np.concatenate(vs, 0)
    if inter_task:
        ac = ac / np.mean(norms) ** norm_power
    if inter_dim:
        cn = np.linalg.norm(ac, axis=0)
        ac = ac * (cn / cn.mean())[None, :] ** norm_power
    if combine == "spectral":
        # TSV-M's form on the essential basis: the directions' weights are
        # A_cat's row norms, kept between the orthogonalised bases (as
        # TSV-M keeps sigma between polar(U_cat) and polar(V_cat)).
        w = np.linalg.norm(ac, axis=1)
        uu, _, vu = svd(pc)
        ua, _, va = svd(ac / np.where(w > 0, w, 1.0)[:, None])
        return (uu @ vu) @ (w[:, None] * (ua @ va))
    uu, su, vu = svd(pc)
    ua, sa, va = svd(ac)
    return 2 * (uu @ vu * su.mean()) @ (ua @ va * sa.mean())



def esm_group(name):
    """ESM's default layer type: every all-digit name component -> '#'."""
    return re.sub(r"(^|\.)\d+(?=\.|$)", r"\1#", name)


def esm_routed(taus, xs, routes, alpha=1.0, alpha_on=None, groups=None,
               layer_scaling=True, norm_power=2.0, **opts):
    """A whole ESM merge (docs/methods/esm.md). taus: name -> list of task
    vectors; xs: name -> list of per-task inputs (ESD tensors only);
    routes: name -> "esd" | "tsv" | "mean"; alpha_on: the names alpha
    scales (default all); groups: name -> layer type, or None for unscaled
    (default: ESD/TSV tensors by esm_group, mean tensors unscaled).
    beta = (norm / group mean)^p. Returns name -> merged task vector."""
    merged = {}
    for key, r in routes.items():
        tv = taus[key]
        if r == "esd":
            merged[key] = esm_layer(tv, xs[key], norm_power=norm_power, **opts)
        elif r == "tsv":
            merged[key] = tsv(tv)
        else:
            assert r == "mean", r
            merged[key] = np.mean(np.stack(tv).astype(np.float64), 0)
    if groups is None:
        groups = {k: esm_group(k) if r != "mean" else None for k, r in routes.items()}
    if layer_scaling:
        norms = {k: np.linalg.norm(v) for k, v in merged.items()}
        beta = {}
        for k, g in groups.items():
            if g is not None:
                same = [norms[j] for j, h in groups.items() if h == g]
                beta[k] = (norms[k] / np.mean(same)) ** norm_power
        merged = {k: v * beta.get(k, 1.0) for k, v in merged.items()}
    alpha_on = set(merged) if alpha_on is None else set(alpha_on)
    return {k: (alpha if k in alpha_on else 1.0) * v for k, v in merged.items()}

# --- PAVE purification (An et al., arXiv:2510.14697; public code
# github.com/ABgit111/purified_task_vector), written from the equations: C~ = X^T X / n + eps I (eps doubled until ||C~^-1 C~ - I||_F <
# tol), W_t C~ = U S V^T, W'_t = U_r S_r V_r^T C~^-1, tau'_t = W'_t - W_0.

def pave_regularise(x, eps=0.1, tol=5e-2):
    """Returns (C~, eps actually used)."""
    c = x.astype(np.float64).T @ x.astype(np.float64) / x.shape[0]
    while True:
        ct = c + eps * np.eye(c.shape[0])
        if np.linalg.norm(np.linalg.inv(ct) @ ct - np.eye(c.shape[0])) < tol:
            return ct, eps
        eps *= 2


def pave_spectrum(w, x, eps=0.1, tol=5e-2):
    ct, _ = pave_regularise(x, eps, tol)
    u, s, vt = np.linalg.svd(w.astype(np.float64) @ ct, full_matrices=False)
    return u, s, vt, ct


def _lround(x):
    """C's lround for x >= 0: halves away from zero."""
    return int(np.floor(x + 0.5))


def pave_allocate(spectra, keep, max_prune_factor=1.5):
    """Per-model ranks of one layer: drop the globally smallest s_i / s_1
    while at least `keep` of all components remain, no model below
    full - round(factor * (full - round(full * keep)))."""
    full = len(spectra[0])
    floor = max(1, full - _lround(max_prune_factor * (full - _lround(full * keep))))
    ranks = [full] * len(spectra)
    order = sorted((s[i] / s[0], t, i) for t, s in enumerate(spectra) for i in range(full))
    kept, total = full * len(spectra), full * len(spectra)
    for _, t, _ in order:
        if kept - 1 < keep * total:
            break
        if ranks[t] <= floor:
            continue
        ranks[t] -= 1
        kept -= 1
    return ranks


def pave_truncate(u, s, vt, ct, r, polarize=0.0):
    s = s[:r].copy()
    if polarize:
        s = s * (s / s.mean()) ** polarize
    return (u[:, :r] * s) @ vt[:r] @ np.linalg.inv(ct)


def pave(base, models, xs, keep, allocation="model", polarize=0.0, eps=0.1, tol=5e-2):
    """Purified task vectors of every model: dicts name -> tau'. xs[t] maps
    layer names to task t's calibration inputs; other tensors keep plain tau."""
    layers = [k for k in base if base[k].ndim == 2 and all(k in x for x in xs)]
    facts = {k: [pave_spectrum(m[k], x[k], eps, tol) for m, x in zip(models, xs)] for k in layers}
    ranks = {k: pave_allocate([f[1] for f in facts[k]], keep) for k in layers}
    out = []
    for t, m in enumerate(models):
        kept = sum(ranks[k][t] for k in layers)
        full = sum(len(facts[k][t][1]) for k in layers)
        tv = {}
        for k in base:
            if k not in layers:
                tv[k] = m[k].astype(np.float64) - base[k]
                continue
            u, s, vt, ct = facts[k][t]
            if allocation == "layer":
                r = ranks[k][t]
            else:
                ratio = kept / full if allocation == "model" else keep
                r = min(len(s), max(1, _lround(ratio * len(s))))
            tv[k] = pave_truncate(u, s, vt, ct, r, polarize) - base[k]
        out.append(tv)
    return out


def heldout_drift(merged, models, hs):
    """sum_t sum_layers ||(W_merged - W_t) X_t||^2 from held-out inputs."""
    total = 0.0
    for m, h in zip(models, hs):
        for k, x in h.items():
            d = merged[k].astype(np.float64) - m[k]
            total += np.sum((x.astype(np.float64) @ d.T) ** 2)
    return total
