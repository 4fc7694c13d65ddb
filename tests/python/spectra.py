"""Task vectors with a chosen spectrum, shared by the SVD-family tests
(test_svd_precision.py, test_svd_threads.py)."""
import numpy as np


def spectrum_tasks(rng, shape, T, sv):
    """T task vectors (f32) of the given shape whose singular values are
    sv (len(sv) <= min(shape)), with random orthonormal singular vectors:
    per task, U from the QR of an m x d Gaussian draw, then V from an
    n x d one."""
    m, n = shape
    d = len(sv)
    out = []
    for _ in range(T):
        u, _ = np.linalg.qr(rng.standard_normal((m, d)))
        v, _ = np.linalg.qr(rng.standard_normal((n, d)))
        out.append(((u * sv) @ v.T).astype(np.float32))
    return out
