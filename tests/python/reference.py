"""Independent numpy implementations of the merge methods, written from the
papers' equations (see docs/methods/), used as references by the tests."""
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
    agree = (t != 0) & (np.sign(t) == sign)
    num = (w * t * agree).sum(0)
    den = (w * agree).sum(0) if divide == "weights" else agree.sum(0)
    return np.where(den != 0, num / np.where(den == 0, 1, den), 0.0)


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


def iso_cts(tasks, alpha=1.0, common=0.8):
    m, n = tasks[0].shape
    full = min(m, n)
    total = sum(x.astype(np.float64) for x in tasks)
    u, s, vt = svd(total)
    kc = int(common * full)
    per = (full - kc) // len(tasks)
    us, ss, vs = [u[:, :kc]], [s[:kc]], [vt[:kc].T]
    uc = u[:, :kc]
    for x in tasks:
        xp = x.astype(np.float64) - uc @ (uc.T @ x.astype(np.float64))
        tu, ts, tvt = svd(xp)
        us.append(tu[:, :per]); ss.append(ts[:per]); vs.append(tvt[:per].T)
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
              inter_task=True, eig_weighting=True, inter_dim=True):
    T = len(dws)
    d_out, d_in = dws[0].shape
    k = k or max(1, d_out // T)
    us, vs, norms = [], [], []
    for dw, x in zip(dws, xs):
        dw = dw.astype(np.float64)
        x = x.astype(np.float64)
        n = x.shape[0]
        _, s, vh = svd(x @ dw.T)
        p = vh.T
        lam = s ** 2 / (n - 1)
        if p.shape[1] < d_out:
            r = p.shape[1]
            if pad_identity:
                p = np.concatenate([p, np.eye(d_out)[:, r:]], 1)
            else:  # orthonormal completion
                q, _ = np.linalg.qr(np.concatenate([p, np.eye(d_out)], 1))
                p = np.concatenate([p, q[:, r:d_out]], 1)
            lam = np.concatenate([lam, np.zeros(d_out - r)])
        a = p.T @ dw
        nt = np.linalg.norm(a)
        norms.append(nt)
        if inter_task:
            a = a * nt ** norm_power
        lk = lam[:k]
        if eig_weighting and lk.mean() > 0:
            e = (lk / lk.mean()) ** eig_power
            e = e / e.mean()
        else:
            e = np.ones(k)
        us.append(p[:, :k] * e[None, :])
        vs.append(a[:k] * e[:, None])
    pc = np.concatenate(us, 1)
    ac = np.concatenate(vs, 0)
    if inter_task:
        ac = ac / np.mean(norms) ** norm_power
    if inter_dim:
        cn = np.linalg.norm(ac, axis=0)
        ac = ac * (cn / cn.mean())[None, :] ** norm_power
    uu, su, vu = svd(pc)
    ua, sa, va = svd(ac)
    return 2 * (uu @ vu * su.mean()) @ (ua @ va * sa.mean())
