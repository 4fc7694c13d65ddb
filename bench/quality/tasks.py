"""The benchmark's tasks: Fashion-MNIST (dataset-fashion-mnist) and
scikit-learn's digits (upsampled to 28x28) plus transformations of them —
different domains, label sets and difficulty. Every split is fixed by a
seed; nothing is downloaded."""
import gzip
import os

import numpy as np

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


def _idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(part="train"):
    """(images [n, 28, 28] in [0, 1], labels) of the official "train"
    (60000, used by the tasks) or "t10k" part (10000, used only for
    pretraining, so no task's test image was seen in pretraining)."""
    x = _idx(os.path.join(FMNIST_DIR, "%s-images-idx3-ubyte.gz" % part))
    y = _idx(os.path.join(FMNIST_DIR, "%s-labels-idx1-ubyte.gz" % part))
    return x.astype(np.float32) / 255.0, y.astype(np.int64)


def digits():
    """sklearn's 8x8 digits, upsampled to 28x28 (nearest neighbour on a
    24x24 core, 2-pixel border), in [0, 1]."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = d.images.astype(np.float32) / 16.0
    x = np.kron(x, np.ones((3, 3), np.float32))
    x = np.pad(x, ((0, 0), (2, 2), (2, 2)))
    return x, d.target.astype(np.int64)


COARSE = np.array([0, 1, 0, 1, 0, 2, 0, 2, 3, 2])  # tops, bottoms/dresses, shoes, bags


def _noise(x, rng, sigma):
    return np.clip(x + sigma * rng.standard_normal(x.shape).astype(np.float32), 0, 1)


def _shift(x, k):
    return np.roll(x, k, axis=2)


def _blur(x):
    """2x2 average pooling, upsampled back: half the resolution."""
    n, h, w = x.shape
    pooled = x.reshape(n, h // 2, 2, w // 2, 2).mean((2, 4))
    return np.repeat(np.repeat(pooled, 2, 1), 2, 2)


# name, source, transform(x, rng) -> x, relabel(y) -> y, classes
TASKS = [
    ("fmnist", "fmnist", lambda x, r: x, lambda y: y, 10),
    ("digits", "digits", lambda x, r: x, lambda y: y, 10),
    ("fmnist-rot90", "fmnist", lambda x, r: np.rot90(x, 1, (1, 2)), lambda y: y, 10),
    ("digits-inverted", "digits", lambda x, r: 1.0 - x, lambda y: y, 10),
    ("fmnist-coarse", "fmnist", lambda x, r: x, lambda y: COARSE[y], 4),
    ("digits-parity", "digits", lambda x, r: x, lambda y: y % 2, 2),
    ("fmnist-flip-noise", "fmnist", lambda x, r: _noise(x[:, :, ::-1], r, 0.25), lambda y: y, 10),
    ("digits-rot180-mod3", "digits", lambda x, r: x[:, ::-1, ::-1], lambda y: y % 3, 3),
    ("fmnist-shift", "fmnist", lambda x, r: _shift(x, 5), lambda y: y, 10),
    ("digits-noise-ge5", "digits", lambda x, r: _noise(x, r, 0.3), lambda y: (y >= 5).astype(np.int64), 2),
    # Tasks 11-20, for the ESM paper's task counts (8, 14, 20): as its 14-
    # and 20-task suites do, they add new views of domains already there
    # (its FashionMNIST, EMNIST and KMNIST next to MNIST).
    ("fmnist-inverted", "fmnist", lambda x, r: 1.0 - x, lambda y: y, 10),
    ("digits-rot90", "digits", lambda x, r: np.rot90(x, 1, (1, 2)), lambda y: y, 10),
    ("fmnist-blur", "fmnist", lambda x, r: _blur(x), lambda y: y, 10),
    ("digits-mirror-mod5", "digits", lambda x, r: x[:, :, ::-1], lambda y: y % 5, 5),
    ("fmnist-transpose-coarse", "fmnist", lambda x, r: np.swapaxes(x, 1, 2), lambda y: COARSE[y], 4),
    ("digits-shift-noise", "digits", lambda x, r: _noise(_shift(x, 4), r, 0.2), lambda y: y, 10),
    ("fmnist-noise-strong", "fmnist", lambda x, r: _noise(x, r, 0.5), lambda y: y, 10),
    ("digits-inverted-rot270", "digits", lambda x, r: 1.0 - np.rot90(x, 3, (1, 2)), lambda y: y, 10),
    ("fmnist-rot180-shift", "fmnist", lambda x, r: _shift(x[:, ::-1, ::-1], -4), lambda y: y, 10),
    ("digits-blur-mod4", "digits", lambda x, r: _blur(x), lambda y: y % 4, 4),
]


def build(names=None, n_train=3000, n_val=300, n_test=500, seed=0):
    """A list of dicts (name, classes, train/val/test as (x [n, 784], y))."""
    names = names or [t[0] for t in TASKS]
    sources = {}
    out = []
    for i, (name, src, transform, relabel, classes) in enumerate(TASKS):
        if name not in names:
            continue
        if src not in sources:
            sources[src] = fashion_mnist() if src == "fmnist" else digits()
        x, y = sources[src]
        rng = np.random.default_rng(seed * 1000 + i)
        order = rng.permutation(len(x))
        # digits has 1797 images: keep the test and val sizes, shrink train.
        n_tr = min(n_train, len(x) - n_val - n_test)
        parts = np.split(order[:n_tr + n_val + n_test], [n_tr, n_tr + n_val])
        xt = np.ascontiguousarray(transform(x, rng)).reshape(len(x), -1).astype(np.float32)
        yt = relabel(y)
        out.append(dict(name=name, classes=classes,
                        **{k: (xt[p], yt[p]) for k, p in zip(("train", "val", "test"), parts)}))
    return out
