"""One large tensor's factorization spread over threads
(docs/methods/svd_family.md, "How the work is spread"): the Gram products,
the eigendecomposition's back-transformation and the final products run
in fixed blocks on the context's idle threads. Layers with min(m, n) >=
256 (where the split eigendecomposition takes over) and odd sizes (partial
row, column and reflector blocks), flat (Gaussian) and spread spectra
(the f32 and f64 routes): the merge must match the float64 numpy
reference (reference.py, np.linalg.svd) within 1e-4 and be the same
bytes for 1, 2 and 8 threads, also when several tensors share the
threads and the last one borrows them. whiten="released", as the
reference (the rank-aware default's threads: test_whiten_gram.py)."""
import logging
import re

import numpy as np
import pytest

import libmerge
import reference as ref
from spectra import spectrum_tasks

ROUTE = re.compile(r"gram_f32 (\d+), gram_f64 (\d+), exact (\d+)")
SHAPES = [(300, 300), (517, 263), (263, 517)]
T = 3


def tasks(rng, shape, spectrum):
    m, n = shape
    if spectrum == "flat":
        return [(0.01 * rng.standard_normal(shape)).astype(np.float32)
                for _ in range(T)]
    d = min(m, n)  # singular values over 1e3, spread: f32 refused
    sv = np.logspace(0, -3, d) if spectrum == "spread" else np.linspace(2, 1, d)
    return spectrum_tasks(rng, shape, T, sv)


REFS = {"tsv": ref.tsv, "iso_c": ref.iso_c, "iso_cts": ref.iso_cts}


@pytest.mark.parametrize("method", ["tsv", "iso_c", "iso_cts"])
def test_large_layers_same_bytes_for_1_2_8_threads(method, caplog):
    rng = np.random.default_rng(11)
    routes = np.zeros(3, int)
    for spectrum in ("flat", "spread", "close"):
        layers = {"l%d" % i: tasks(rng, s, spectrum) for i, s in enumerate(SHAPES)}
        base = {k: np.zeros(v[0].shape, np.float32) for k, v in layers.items()}
        models = [{k: v[t] for k, v in layers.items()} for t in range(T)]
        runs = []
        for threads in (1, 2, 8):
            with caplog.at_level(logging.DEBUG, logger="libmerge"):
                runs.append(libmerge.merge(method, base, models, threads=threads,
                                           whiten="released"))
            for rec in caplog.records:
                m = ROUTE.search(rec.getMessage())
                if m and threads == 1:
                    routes += np.array([int(g) for g in m.groups()])
            caplog.clear()
        for name, taus in layers.items():
            assert runs[0][name].tobytes() == runs[1][name].tobytes(), (spectrum, name)
            assert runs[0][name].tobytes() == runs[2][name].tobytes(), (spectrum, name)
            want = REFS[method]([t.astype(np.float64) for t in taus])
            err = np.abs(runs[0][name] - want).max() / np.abs(want).max()
            assert err <= 1e-4, (spectrum, name, err)
    if method != "iso_c":  # iso_c logs no top-k routes (a polar factor)
        # Both precisions ran through the split paths above.
        assert routes[0] > 0 and routes[1] > 0, routes
