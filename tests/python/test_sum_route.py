"""Iso-C's sum route (lib/core/sum_route.c): the weighted sum of the task
vectors formed straight from the inputs, a block at a time, instead of
from whole-tensor f32 copies. It must give the plain path's output bit for
bit (LIBMERGE_FUSED=0 forces the plain path; the plain path itself is
checked against numpy's float64 Iso-C in test_svd_family.py and
test_whiten.py), for every input dtype it reads, sizes with partial
blocks (2048 elements each), both whitening rules and the exact SVD, on 1
and 2 threads; and inputs it leaves to the plain path (a non-finite value
under the default policy, an f64 input) must behave as before."""
import os

import numpy as np
import pytest

import libmerge


def _plain(fn):
    old = os.environ.get("LIBMERGE_FUSED")
    os.environ["LIBMERGE_FUSED"] = "0"
    try:
        return fn()
    finally:
        if old is None:
            os.environ.pop("LIBMERGE_FUSED", None)
        else:
            os.environ["LIBMERGE_FUSED"] = old


def _models(rng, shapes, dtype, T=4):
    base = {"w%d" % i: (0.1 * rng.standard_normal(s)).astype(dtype)
            for i, s in enumerate(shapes)}
    base["bias"] = rng.standard_normal(7).astype(dtype)
    models = []
    for _ in range(T):
        m = {}
        for name, b in base.items():
            m[name] = (b.astype(np.float64) +
                       0.02 * rng.standard_normal(b.shape)).astype(dtype)
        models.append(m)
    return base, models


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype
        assert np.array_equal(a[k].view(np.uint8), b[k].view(np.uint8)), k


# 97 x 71 = 6887 elements: three full blocks and a partial one; 3 x 5
# fits in one; 300 x 40 is tall, 40 x 300 wide.
SHAPES = [(97, 71), (3, 5), (300, 40), (40, 300)]


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("params", [{"whiten": "rank_aware"},
                                    {"whiten": "released"},
                                    {"whiten": "released", "svd_tolerance": 0.0},
                                    {"whiten": "rank_aware", "svd_tolerance": 0.0}])
@pytest.mark.parametrize("threads", [1, 2])
def test_sum_route_matches_plain_path(dtype, params, threads):
    rng = np.random.default_rng(7)
    if dtype == "bf16":
        base, models = _models(rng, SHAPES, np.float32)
        base = {k: libmerge.to_bfloat16(v) for k, v in base.items()}
        models = [{k: libmerge.to_bfloat16(v) for k, v in m.items()}
                  for m in models]
    else:
        base, models = _models(rng, SHAPES, np.float32 if dtype == "f32" else np.float16)
    weights = [1.0, 0.5, 2.0, 0.75]

    def run():
        return libmerge.merge("iso_c", base, models, weights=weights,
                              threads=threads, **params)
    fast = run()
    plain = _plain(run)
    _same(fast, plain)
    # The route did something: the merge is not the base.
    assert not np.array_equal(np.asarray(fast["w0"]).view(np.uint8),
                              np.asarray(base["w0"]).view(np.uint8))


def test_sum_route_leaves_nonfinite_inputs_to_the_plain_path():
    rng = np.random.default_rng(3)
    base, models = _models(rng, SHAPES[:1], np.float32)
    models[2]["w0"][5, 9] = np.nan
    with pytest.raises(libmerge.Error) as fast:
        libmerge.merge("iso_c", base, models)
    with pytest.raises(libmerge.Error) as plain:
        _plain(lambda: libmerge.merge("iso_c", base, models))
    assert str(fast.value) == str(plain.value)
    # The plain path's message: the first offending input and element.
    assert "model 2" in str(fast.value) and "w0" in str(fast.value)
    assert "element %d" % (5 * 71 + 9) in str(fast.value)
    # Allowed: both paths carry the NaN into the sum, which the polar
    # factor then refuses with the same message.
    with pytest.raises(libmerge.Error) as fast:
        libmerge.merge("iso_c", base, models, nonfinite="allow")
    with pytest.raises(libmerge.Error) as plain:
        _plain(lambda: libmerge.merge("iso_c", base, models, nonfinite="allow"))
    assert str(fast.value) == str(plain.value)
    assert "polar" in str(fast.value)


def test_sum_route_mixed_f64_input_takes_the_plain_path():
    rng = np.random.default_rng(5)
    base, models = _models(rng, SHAPES[:2], np.float32)
    models[1] = {k: v.astype(np.float64) for k, v in models[1].items()}
    _same(libmerge.merge("iso_c", base, models),
          _plain(lambda: libmerge.merge("iso_c", base, models)))
