"""Time and accuracy of `embedding_route` on one vocabulary embedding:
tsv with the exact SVD (svd, the default), randomized top-k SVDs
(randomized) and the weighted mean (mean), on a VOCAB x DIM embedding
with T task vectors whose spectra decay (0.99^i, slow, as embedding
updates' do). Prints a Markdown table; the numbers quoted in
docs/methods/svd_family.md come from it.

usage: LIBMERGE_LIBRARY=build/lib/libmerge.so.1 PYTHONPATH=bindings/python \\
       /usr/bin/python3 bench/svd/embedding_route.py [VOCAB] [DIM] [TASKS]"""
import os
import sys
import time

import numpy as np

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import libmerge  # noqa: E402


def task(rng, m, n, decay):
    r = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal((m, r)))
    v, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return ((u * decay ** np.arange(r)) @ v.T).astype(np.float32)


def main():
    vocab, dim, T = (int(a) for a in (sys.argv[1:] + ["8192", "512", "4"][len(sys.argv) - 1:]))
    rng = np.random.default_rng(0)
    name = "model.embed_tokens.weight"
    base = {name: np.zeros((vocab, dim), np.float32)}
    models = [{name: task(rng, vocab, dim, 0.99)} for _ in range(T)]
    rows, exact = [], None
    for route in ("svd", "randomized", "mean"):
        t0 = time.perf_counter()
        out = libmerge.merge("tsv", base, models, embedding_route=route)[name]
        dt = time.perf_counter() - t0
        if exact is None:
            exact = out.astype(np.float64)
        err = np.abs(out - exact).max() / np.abs(exact).max()
        rows.append("| %s | %.2f s | %.1e |" % (route, dt, err))
    print("tsv, %d x %d embedding, %d tasks, %s threads" % (vocab, dim, T, os.cpu_count()))
    print("| route | time | max relative difference to svd |\n|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
