"""libmerge.Merger (lm_merger from Python): tensor-by-tensor merging at load
time gives, bit for bit, what libmerge.merge (lm_plan_execute) gives, from
several loader threads at once, in place or into a new array; two-pass
methods (ESM's layer scaling) included when the base is given; ESM's
default (no layer scaling) has no first pass and needs no base."""
import threading

import numpy as np
import pytest

import libmerge

RNG = np.random.default_rng(21)
SHAPES = {"l0.weight": (12, 8), "l0.bias": (12,), "l1.weight": (6, 12), "l1.bias": (6,)}


def model(scale=1.0, dtype=np.float32):
    return {k: (scale * RNG.standard_normal(s)).astype(dtype) for k, s in SHAPES.items()}


def finetuned(base, n=3):
    return [{k: (v + 0.1 * RNG.standard_normal(v.shape)).astype(v.dtype)
             for k, v in base.items()} for _ in range(n)]


@pytest.mark.parametrize("method,params", [
    ("task_arithmetic", {"lambda": 0.7}),
    ("ties", {"density": 0.5}),
    ("dare_ties", {"density": 0.6}),
])
def test_two_loader_threads_match_merge_bit_for_bit(method, params):
    base = model()
    models = finetuned(base)
    want = libmerge.merge(method, base, models, seed=5, **params)
    got, errors = {}, []
    with libmerge.Merger(method, models, seed=5, **params) as merger:
        assert merger.method == method and merger.n_models == 3
        names = list(base)

        def loader(part):
            try:
                for name in part:
                    got[name] = merger.apply(name, base[name])
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        threads = [threading.Thread(target=loader, args=(names[i::2],)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    for k in base:
        assert got[k].dtype == base[k].dtype and got[k].shape == base[k].shape
        np.testing.assert_array_equal(got[k], want[k])  # bit-identical
        np.testing.assert_array_equal(base[k], base[k])


def test_in_place_and_untouched_tensors():
    base = model()
    ft = finetuned(base, 2)
    partial = [{k: v for k, v in m.items() if k != "l1.bias"} for m in ft]
    with libmerge.Merger("task_arithmetic", partial, rows="error") as merger:
        assert merger.touches("l0.weight") and not merger.touches("l1.bias")
        arr = base["l0.weight"].copy()
        assert merger.apply_("l0.weight", arr) is arr
        want = base["l0.weight"] + (ft[0]["l0.weight"] - base["l0.weight"]) \
            + (ft[1]["l0.weight"] - base["l0.weight"])
        np.testing.assert_allclose(arr, want, rtol=0, atol=1e-6)  # f32 sums, 2 rounding steps
        same = merger.apply("l1.bias", base["l1.bias"])
        np.testing.assert_array_equal(same, base["l1.bias"])
        with pytest.raises(ValueError):
            merger.apply_("l0.weight", base["l0.weight"][:, ::2])


def test_half_precision_loader():
    base = model(dtype=np.float16)
    models = finetuned(base)
    want = libmerge.merge("ties", base, models)
    with libmerge.Merger("ties", models) as merger:
        for k in base:
            np.testing.assert_array_equal(merger.apply(k, base[k]), want[k])


def test_two_pass_esm_needs_the_base_and_then_matches():
    base = model()
    models = finetuned(base)
    with pytest.raises(libmerge.Error) as e:
        libmerge.Merger("esm", models, layer_scaling=True)
    assert e.value.status_name == "LM_ERR_STATE"
    assert "set the plan's base" in str(e.value)
    want = libmerge.merge("esm", base, models, layer_scaling=True)
    with libmerge.Merger("esm", models, base=base, layer_scaling=True) as merger:
        for k in reversed(list(base)):
            np.testing.assert_array_equal(merger.apply(k, base[k]), want[k])


def test_esm_default_has_no_first_pass_and_needs_no_base():
    """layer_scaling off (the default): ESM declines its prepare pass, so
    a merger needs no base; the bits are the offline merge's."""
    base = model()
    models = finetuned(base)
    want = libmerge.merge("esm", base, models)
    with libmerge.Merger("esm", models) as merger:
        for k in reversed(list(base)):
            np.testing.assert_array_equal(merger.apply(k, base[k]), want[k])


def test_errors_name_the_tensor_and_leave_it_unchanged():
    base = model()
    models = finetuned(base)
    merger = libmerge.Merger("task_arithmetic", models)
    wrong = np.zeros((3, 3), np.float32)
    with pytest.raises(libmerge.ShapeError, match="l0.weight"):
        merger.apply_("l0.weight", wrong)
    assert not wrong.any()
    merger.close()
    with pytest.raises(ValueError, match="closed"):
        merger.apply("l0.weight", base["l0.weight"])
    with pytest.raises(libmerge.NotFoundError):
        libmerge.Merger("no_such_method", models)
