"""Independent numpy references for mergekit's geometric and
non-task-arithmetic merge methods: linear, slerp, nuslerp, multislerp,
karcher, model_stock, nearswap, arcee_fusion and passthrough.

Written from the papers and from the semantics of mergekit's public code
(github.com/arcee-ai/mergekit, mergekit/merge_methods/<method>.py, read to
learn defaults, thresholds and edge cases; nothing here is taken from
libmerge and this module does not import it):

- SLERP: K. Shoemake, "Animating rotation with quaternion curves",
  SIGGRAPH 1985; mergekit's slerp.py (colinear threshold 0.9995, norms
  below 1e-8 left unnormalised, f32 numpy math).
- Karcher mean: H. Karcher, "Riemannian center of mass and mollifier
  smoothing", CPAM 1977; mergekit's karcher.py (its fixed-point iteration
  on the unit sphere, max_iter 10, tol 1e-5).
- Model Stock: D.-H. Jang, S. Yun, D. Han, "Model Stock: All we need is
  just a few fine-tuned models", ECCV 2024 (arXiv:2403.19522), with
  mergekit's mean of pairwise cosines for more than two models.
- Model soups (linear): M. Wortsman et al., ICML 2022.
- Multi-SLERP: C. Goddard, goddard.blog/posts/multislerp-wow-what-a-cool-idea.

Every function takes FULL weights as mergekit does (the base and the other
models' arrays, not task vectors) and returns the merged full weights.
Inputs are float32 and the arithmetic stays in float32 (see precision())
where mergekit's runs in the merge dtype (slerp converts to f32 numpy; the others run in
torch in the tensor's dtype), except arcee_fusion's importance scores,
computed in float64 so the outlier mask it selects is the exact one
(tests check no score lies near the threshold).
"""
import contextlib

import numpy as np

# The working float type: float32 as mergekit runs on f32 models;
# precision(np.float64) gives the same formulas in f64 (the C fixtures'
# references, so their bounds need not absorb the reference's rounding).
F32 = np.float32


@contextlib.contextmanager
def precision(dtype):
    global F32
    saved, F32 = F32, dtype
    try:
        yield
    finally:
        F32 = saved


def linear(models, weights, normalize=True):
    """mergekit linear: sum_i w_i x_i (/ sum_i w_i)."""
    x = np.stack(models).astype(F32)
    w = np.asarray(weights, F32).reshape((-1,) + (1,) * (x.ndim - 1))
    res = (w * x).sum(0)
    return res / w.sum(0) if normalize else res


def slerp(t, v0, v1, dot_threshold=0.9995, eps=1e-8):
    """Spherical interpolation from v0 (t = 0) to v1 (t = 1), each array
    one flattened vector."""
    v0 = np.asarray(v0, F32)
    v1 = np.asarray(v1, F32)

    def unit(v):
        n = np.linalg.norm(v)
        return v / n if n > eps else v

    dot = np.sum(unit(v0) * unit(v1))
    if np.abs(dot) > dot_threshold:
        return (1 - t) * v0 + t * v1
    theta0 = np.arccos(dot)
    s0 = np.sin(theta0 - theta0 * t) / np.sin(theta0)
    s1 = np.sin(theta0 * t) / np.sin(theta0)
    return s0 * v0 + s1 * v1


def _nuslerp_vectors(t, v0, v1, eps=1e-8):
    """SLERP along the last axis of v0, v1 (one pair per leading index)."""
    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), F32(1e-7))

    cos = np.sum(unit(v0) * unit(v1), axis=-1, keepdims=True)
    theta = np.arccos(np.clip(cos, -1, 1))
    sin = np.sin(theta)
    colinear = np.abs(sin) < eps
    with np.errstate(divide="ignore", invalid="ignore"):
        res = (np.sin((1 - t) * theta) * v0 + np.sin(t * theta) * v1) / sin
    lerp = (1 - t) * v0 + t * v1
    return np.where(colinear, lerp, res)


def nuslerp(models, weights, base=None, flatten=True, row_wise=False):
    """mergekit nuslerp: two models, t = w_1 / (w_0 + w_1); with a base the
    task vectors are interpolated and the base added back."""
    a, b = (np.asarray(m, F32) for m in models)
    total = weights[0] + weights[1]
    t = 0.5 if abs(total) < 1e-6 else weights[1] / total
    if base is not None:
        base = np.asarray(base, F32)
        a, b = a - base, b - base
    shape = a.shape
    if flatten:
        res = _nuslerp_vectors(t, a.reshape(-1), b.reshape(-1))
    elif row_wise:  # mergekit's dim=0: vectors along the first axis
        res = np.swapaxes(_nuslerp_vectors(t, np.swapaxes(a, 0, -1),
                                           np.swapaxes(b, 0, -1)), 0, -1)
    else:
        res = _nuslerp_vectors(t, a, b)
    res = res.reshape(shape)
    return res + base if base is not None else res


def multislerp(models, weights, base=None, normalize_weights=True, eps=1e-8):
    """mergekit multislerp: barycentric interpolation on the hypersphere
    through the tangent space at the normalised weighted mean."""
    if len(models) == 1:
        return np.asarray(models[0], F32)
    x = np.stack(models).astype(F32)
    if base is not None:
        x = x - np.asarray(base, F32)
    shape = x.shape[1:]
    flat = x.reshape(x.shape[0], -1)
    w = np.asarray(weights, F32)
    if normalize_weights:
        w = w / w.sum()
    norms = np.linalg.norm(flat, axis=-1, keepdims=True)
    units = flat / (norms + F32(eps))
    mean = (units * w[:, None]).sum(0)
    mean_norm = np.linalg.norm(mean)
    if mean_norm < eps:
        if x.shape[0] != 2:
            raise ValueError("weighted mean direction is zero")
        res = (x[0] * w[0] + x[1] * w[1]).reshape(shape)
        return res + base if base is not None else res
    mean = mean / mean_norm
    dots = (units * mean).sum(-1, keepdims=True)
    tangent = ((units - dots * mean) * w[:, None]).sum(0)
    tn = np.linalg.norm(tangent) + F32(eps)
    res = mean * np.cos(tn) + tangent * (np.sin(tn) / tn)
    res = (res * (norms[:, 0] * w).sum()).reshape(shape)
    return res + np.asarray(base, F32) if base is not None else res


def karcher(models, alphas=None, max_iter=10, tol=1e-5):
    """mergekit karcher: the Karcher mean of the directions (fixed-point
    iteration with the sphere's log and exp maps), times the weighted mean
    of the norms. alphas default to 1/N, mergekit's only choice."""
    models = [np.asarray(m, F32) for m in models]
    if len(models) == 1:
        return models[0]
    if alphas is None:
        alphas = [1.0 / len(models)] * len(models)
    norms, units = [], []
    for m in models:
        n = float(np.linalg.norm(m))
        norms.append(n)
        units.append(np.zeros_like(m) if n == 0 else m / F32(n))
    valid = [i for i, n in enumerate(norms) if n > tol]
    if not valid:
        return np.zeros_like(models[0])
    va = [alphas[i] for i in valid]
    na = [a / sum(va) for a in va]
    vu = [units[i] for i in valid]
    u = np.zeros_like(vu[0])
    for a, ui in zip(na, vu):
        u = u + F32(a) * ui
    nu = float(np.linalg.norm(u))
    u = vu[0].copy() if nu < tol else u / F32(nu)
    for _ in range(max_iter):
        step = np.zeros_like(u)
        for a, ui in zip(na, vu):
            dot = np.clip(np.dot(u.ravel(), ui.ravel()), -1, 1)
            theta = np.arccos(dot)
            if theta < tol:
                continue
            step = step + F32(a) * (theta / np.sin(theta)) * (ui - dot * u)
        ns = np.linalg.norm(step)
        if ns < tol:
            break
        u = np.cos(ns) * u + np.sin(ns) * (step / ns)
        nu = np.linalg.norm(u)
        if nu > tol:
            u = u / nu
    return F32(sum(a * n for a, n in zip(alphas, norms))) * u


def model_stock(base, models, filter_wise=False):
    """Model Stock: t = N cos / (1 + (N - 1) cos), cos the mean pairwise
    cosine of the task vectors (per row with filter_wise), merged =
    t * mean(models) + (1 - t) * base."""
    w0 = np.asarray(base, F32)
    ws = [np.asarray(m, F32) for m in models]
    shape = w0.shape
    if filter_wise:
        if w0.ndim == 1:
            w0 = w0[None, :]
            ws = [w[None, :] for w in ws]
    else:
        w0 = w0.reshape(-1)
        ws = [w.reshape(-1) for w in ws]
    offs = [w - w0 for w in ws]
    cos = []
    for i in range(len(offs)):
        for j in range(i + 1, len(offs)):
            prod = np.linalg.norm(offs[i], axis=-1) * np.linalg.norm(offs[j], axis=-1)
            c = (offs[i] * offs[j]).sum(-1) / np.maximum(prod, F32(1e-6))
            cos.append(np.clip(c, -1, 1))
    cos = np.mean(np.stack(cos), axis=0)[..., None]
    n = len(ws)
    t = (n * cos) / (1 + (n - 1) * cos)
    avg = sum(ws) / F32(n)
    return (t * avg + (1 - t) * w0).reshape(shape)


def nearswap(base, model, t):
    """mergekit nearswap: w = clamp(t / max(|a - b|, 1e-6), 0, 1),
    w b + (1 - w) a."""
    a = np.asarray(base, F32)
    b = np.asarray(model, F32)
    w = np.clip(F32(t) / np.maximum(np.abs(a - b), F32(1e-6)), 0, 1)
    return w * b + (1 - w) * a


def arcee_importance(base, model):
    """|b - a| times the row's KL(softmax(b) + 1e-8 || softmax(a) + 1e-8),
    rows along the last axis (float64)."""
    a = np.asarray(base, np.float64)
    b = np.asarray(model, np.float64)
    if a.ndim == 0:
        a, b = a[None], b[None]

    def softmax(x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    p = softmax(b) + 1e-8
    q = softmax(a) + 1e-8
    kl = np.sum(p * np.log(p / q), axis=-1, keepdims=True)
    return (np.abs(b - a) * kl).reshape(np.shape(base))


def arcee_threshold(importance):
    """median + 1.5 IQR, quantiles at sorted[floor(q (n - 1))] over every
    entry (mergekit samples 10^6 entries of larger tensors)."""
    s = np.sort(importance.ravel())
    n = s.size

    def at(q):
        return s[int(np.floor(q * (n - 1)))]

    return at(0.5) + 1.5 * (at(0.75) - at(0.25))


def arcee_fusion(base, model):
    """mergekit arcee_fusion: base + (model - base) where the importance
    reaches the threshold."""
    a = np.asarray(base, F32)
    b = np.asarray(model, F32)
    imp = arcee_importance(a, b)
    mask = imp >= arcee_threshold(imp)
    return a + (b - a) * mask


def passthrough(model, scale=None):
    """mergekit passthrough: the one tensor, times scale when given."""
    m = np.asarray(model, F32)
    return m if scale is None else m * F32(scale)
