"""Independent numpy references for mergekit's sparsification family, written
from mergekit's documented semantics (github.com/arcee-ai/mergekit:
docs/merge_methods.md, mergekit/sparsify.py,
mergekit/merge_methods/generalized_task_arithmetic.py, sce.py, ram.py) and
the papers (TIES arXiv:2306.01708, DARE arXiv:2311.03099, Model Breadcrumbs
arXiv:2312.06795, DELLA arXiv:2406.11617, SCE/FuseChat arXiv:2408.07990,
RAM arXiv:2601.13572). One function per method; each takes the task
vectors tau_t = model_t - base (f32 arrays) and returns the merged task
vector in f64. Does not import libmerge.

Where mergekit leaves a choice to the framework, these follow what
docs/methods/mergekit_sparse.md documents for libmerge:
- equal magnitudes rank by position (the lower index counts as larger),
  where mergekit's unstable torch sorts pick any order;
- random masks come from the documented counter-based RNG (reference.py
  recomputes it), where mergekit calls torch.bernoulli.
"""
import numpy as np

import reference as ref


# --- sparsifiers (mergekit/sparsify.py) ------------------------------------

def order_desc(x):
    """Flat indices by decreasing |x|; equal magnitudes by increasing index."""
    return np.argsort(-np.abs(x.ravel()), kind="stable")


def rescale_l1(orig, masked):
    """rescaled_masked_tensor(norm=l1): restore the L1 norm unless either
    norm is below 1e-7."""
    before = np.abs(orig.astype(np.float64)).sum()
    after = np.abs(masked.astype(np.float64)).sum()
    if before < 1e-7 or after < 1e-7:
        return masked
    return masked * (before / after)


def magnitude(x, density, rescale=False):
    """Keep the k = int(density * n) largest magnitudes (mergekit asserts
    k > 0; density >= 1 returns x untouched)."""
    if density >= 1:
        return x.astype(np.float64)
    flat = x.ravel().astype(np.float64)
    k = int(density * flat.size)
    assert k > 0, "mergekit refuses a density that keeps nothing"
    out = np.zeros_like(flat)
    keep = order_desc(x)[:k]
    out[keep] = flat[keep]
    out = out.reshape(x.shape)
    return rescale_l1(x, out) if rescale else out


def magnitude_outliers(x, density, gamma, rescale=False):
    """Model Breadcrumbs: drop the n_top = int(gamma n) largest and the
    smallest, keeping target = int(density n); n_top shrinks when
    n_top + target > n. Keeps descending ranks [n_top, n_top + target)."""
    if density >= 1:
        return x.astype(np.float64)
    flat = x.ravel().astype(np.float64)
    n = flat.size
    target = int(density * n)
    n_top = int(gamma * n)
    n_bot = n - target - n_top
    if n_bot < 0:
        n_top += n_bot
    keep = order_desc(x)[n_top:n_top + target]
    out = np.zeros_like(flat)
    out[keep] = flat[keep]
    out = out.reshape(x.shape)
    return rescale_l1(x, out) if rescale else out


def della_probs(x, density, epsilon):
    """della_magprune's keep probabilities in f32: rows along dimension 1
    (a 1-D tensor is one row), rank 0 = smallest magnitude,
    p = (density - epsilon) + (rank / (len - 1)) * 2 * epsilon; a row of
    one entry gets density (mergekit divides 0 by 0 there)."""
    a = x.reshape(1, -1) if x.ndim < 2 else x
    moved = np.moveaxis(np.abs(a), 1, -1)          # rows last
    rows = moved.reshape(-1, moved.shape[-1])
    length = rows.shape[1]
    p = np.empty(rows.shape, np.float32)
    lo, eps = np.float32(density - epsilon), np.float32(epsilon)
    for r, row in enumerate(rows):
        asc = np.argsort(-row, kind="stable")[::-1]  # ascending rank
        rank = np.empty(length, np.int64)
        rank[asc] = np.arange(length)
        if length > 1:
            norm = rank.astype(np.float32) / np.float32(length - 1)
        else:
            norm = np.full(length, 0.5, np.float32)
        p[r] = lo + norm * np.float32(2) * eps
    p = np.moveaxis(p.reshape(moved.shape), -1, 1)
    return p.reshape(x.shape)


def della_keep(seed, name, task, probs):
    """The documented mask: u < p with u from the DARE generator on the
    stream constant 0xDE11A000 + task."""
    stream = ref.mix64(ref.tensor_seed(seed, name) ^ ref.mix64(np.uint64(0xDE11A000 + task)))
    n = probs.size
    u = (ref.mix64(stream ^ ref.mix64(np.arange(n, dtype=np.uint64))) >> np.uint64(11)) \
        .astype(np.float64) / 2.0**53
    return (u < probs.ravel().astype(np.float64)).reshape(probs.shape)


def della_magprune(x, density, epsilon, seed, name, task, rescale=True):
    if density >= 1:
        return x.astype(np.float64)
    if density <= 0:
        return np.zeros(x.shape)
    assert 0 < density - epsilon and density + epsilon < 1
    keep = della_keep(seed, name, task, della_probs(x, density, epsilon))
    out = np.where(keep, x.astype(np.float64), 0.0)
    return rescale_l1(x, out) if rescale else out


def dare_drop(x, density, seed, name, task, rescale_mode="density", rescale=True):
    """DARE with the documented RNG (reference.dare_keep): divide by density
    (the paper) or restore the L1 norm (mergekit 0.1+)."""
    if density >= 1:
        return x.astype(np.float64)
    keep = ref.dare_keep(seed, name, task, x.size, density).reshape(x.shape)
    if rescale and rescale_mode == "density":
        return np.where(keep, (x * np.float32(1.0 / density)).astype(np.float32), 0.0)
    out = np.where(keep, x.astype(np.float64), 0.0)
    return rescale_l1(x, out) if rescale else out


# --- combination (generalized_task_arithmetic.py GTATask.execute) ----------

def gta_combine(rows, weights, elect, normalize, lam=1.0):
    """Weighted task vectors; with `elect` the sign of their sum per entry
    (>= 0 elects +), agreeing non-zero weighted entries summed and divided
    by their weights' sum (0 -> 1) when normalize; without, the sum divided
    by sum(w) (|sum| < 1e-8 -> 1) when normalize. Times lambda."""
    d = np.stack([np.asarray(r, np.float64) for r in rows])
    w = np.asarray(weights, np.float64).reshape((-1,) + (1,) * (d.ndim - 1))
    wd = d * w
    if elect:
        majority = np.where(wd.sum(0) >= 0, 1.0, -1.0)
        mask = np.sign(wd) == majority
        mixed = (wd * mask).sum(0)
        div = (w * mask).sum(0)
        div = np.where(div == 0, 1.0, div)
    else:
        mixed = wd.sum(0)
        div = w.sum()
        div = 1.0 if abs(div) < 1e-8 else div
    if normalize:
        mixed = mixed / div
    return lam * mixed


def per_model(value, t):
    """A parameter given plan-wide (a number) or per model (a list)."""
    return value[t] if isinstance(value, (list, tuple)) else value


# --- methods -----------------------------------------------------------------

def task_arithmetic(taus, weights, normalize=False, lam=1.0):
    return gta_combine(taus, weights, False, normalize, lam)


def ties(taus, weights, density=1.0, normalize=True, rescale=False, lam=1.0):
    """mergekit ties: magnitude, sign election on weighted values."""
    rows = [magnitude(x, per_model(density, t), rescale) for t, x in enumerate(taus)]
    return gta_combine(rows, weights, True, normalize, lam)


def dare(taus, weights, name, seed, density=1.0, elect=True, normalize=False,
         rescale=True, rescale_mode="l1", lam=1.0):
    """mergekit dare_ties (elect) / dare_linear, masks injected."""
    rows = [dare_drop(x, per_model(density, t), seed, name, t, rescale_mode, rescale)
            for t, x in enumerate(taus)]
    return gta_combine(rows, weights, elect, normalize, lam)


def breadcrumbs(taus, weights, density=1.0, gamma=0.01, elect=False, normalize=False,
                rescale=False, lam=1.0):
    """breadcrumbs (elect=False) / breadcrumbs_ties (elect=True)."""
    rows = [magnitude_outliers(x, per_model(density, t), per_model(gamma, t), rescale)
            for t, x in enumerate(taus)]
    return gta_combine(rows, weights, elect, normalize, lam)


def della(taus, weights, name, seed, density=1.0, epsilon=0.15, elect=True,
          normalize=True, rescale=True, lam=1.0):
    """della (elect, normalize by default) / della_linear, masks injected."""
    rows = [della_magprune(x, per_model(density, t), per_model(epsilon, t), seed, name, t,
                           rescale) for t, x in enumerate(taus)]
    return gta_combine(rows, weights, elect, normalize, lam)


def sce(taus, select_topk=1.0):
    """SCE: variance selection (top int(f32(nonzero) * f32(topk)) positions
    by population variance over the models), mean-square weights
    (uniform when their sum is below 1e-6), sign erase on the unweighted
    sum, weighted mean over agreeing entries (divisor at least 1e-6).
    Per-model weights do not enter."""
    tv = np.stack([x.astype(np.float64) for x in taus])
    T = tv.shape[0]
    flat = tv.reshape(T, -1)
    if select_topk < 1:
        if select_topk <= 0:
            flat = np.zeros_like(flat)
        else:
            var = flat.var(0).astype(np.float32)
            k = int(np.float32(np.count_nonzero(var)) * np.float32(select_topk))
            mask = np.zeros(flat.shape[1], bool)
            mask[order_desc(var)[:k]] = True
            flat = flat * mask
    ms = (flat ** 2).mean(1)
    w = np.full(T, 1.0 / T) if abs(ms.sum()) < 1e-6 else ms / ms.sum()
    majority = np.where(flat.sum(0) >= 0, 1.0, -1.0)
    erase = np.sign(flat) == majority
    ew = w[:, None] * erase
    out = (flat * ew).sum(0) / np.maximum(ew.sum(0), 1e-6)
    return out.reshape(taus[0].shape)


def ram(taus, epsilon=1e-5, plus=False, r=0.1, alpha=0.2):
    """RAM: |tau| > epsilon (f32 comparison) marks a change; an entry
    changed by one model keeps it (times lambda_t for RAM+), by several
    the mean of the changes. RAM+ tensor-local: lambda_t = 1 + r *
    clip(shared_t / max(unique_t, epsilon), 0, alpha)."""
    tv = np.stack([x.astype(np.float32).ravel() for x in taus])
    nz = np.abs(tv) > np.float32(epsilon)
    count = nz.sum(0)
    unique, overlap = count == 1, count > 1
    lam = np.ones(tv.shape[0])
    if plus:
        shared_t = (nz & overlap).sum(1)
        unique_t = (nz & unique).sum(1)
        rho = shared_t / np.maximum(unique_t, epsilon)
        lam = 1 + r * np.clip(rho, 0, alpha)
    tz = np.where(nz, tv.astype(np.float64), 0.0)
    out = (tz * unique * lam[:, None]).sum(0) + (tz * overlap / np.maximum(count, 1)).sum(0)
    return out.reshape(taus[0].shape)
