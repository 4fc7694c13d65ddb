"""Strategies written in Python (libmerge.register_strategy, ctypes
callbacks into lm_register_strategy): usable in merge, Merger and
methods(); checked against numpy; parameters, per-model values, state
from init, LoRA factors; exceptions become LM_ERR_CALLBACK, never a crash."""
import threading

import numpy as np
import pytest

import libmerge

RNG = np.random.default_rng(33)
SHAPES = {"a.weight": (5, 4), "a.bias": (5,), "b.weight": (3, 5)}


def model():
    return {k: RNG.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


@pytest.fixture(autouse=True)
def _clean():
    yield
    for name in list(libmerge.strategy._REGISTRY):
        libmerge.unregister_strategy(name)


def elementwise_max(job):
    return job.param("scale") * np.max(np.stack(job.deltas), axis=0)


def register_max():
    libmerge.register_strategy(
        "py_max", elementwise_max, description="elementwise max of the task vectors",
        params=[{"name": "scale", "default": 1.0, "min": 0.0, "help": "factor"}])


def test_elementwise_max_against_numpy():
    register_max()
    assert "py_max" in libmerge.methods()
    info = libmerge.method_info("py_max")
    assert info["description"].startswith("elementwise max")
    assert info["params"][0]["name"] == "scale" and info["params"][0]["min"] == 0.0
    base = model()
    models = [model() for _ in range(3)]
    got = libmerge.merge("py_max", base, models, scale=0.5, threads=2)
    for k in base:
        # numpy in f64, the library's f32 deltas and sum: 1e-6 relative.
        deltas = np.stack([m[k].astype(np.float64) - base[k] for m in models])
        want = base[k] + 0.5 * deltas.max(axis=0)
        np.testing.assert_allclose(got[k], want, rtol=1e-6, atol=1e-6)
    with pytest.raises(libmerge.OutOfRangeError, match="scale"):
        libmerge.merge("py_max", base, models, scale=-1.0)


def test_in_a_load_time_merger_from_two_threads():
    register_max()
    base = model()
    models = [model() for _ in range(2)]
    want = libmerge.merge("py_max", base, models)
    got = {}
    with libmerge.Merger("py_max", models) as merger:
        threads = [threading.Thread(target=lambda k=k: got.__setitem__(k, merger.apply(k, base[k])))
                   for k in base]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for k in base:
        np.testing.assert_array_equal(got[k], want[k])


def test_state_per_model_params_and_weights():
    seen = {"fini": 0}

    def init(info):
        assert info.n_models == 2 and info.threads >= 1 and info.seed == 9
        return {"lam": info.param("lam"), "int": info.param("k"), "flag": info.param("flag"),
                "mode": info.param("mode"), "set": info.is_set("lam")}

    def merge_tensor(job):
        s = job.state
        assert (s["int"], s["flag"], s["mode"], s["set"]) == (3, True, "b", True)
        w = [job.model_param("w", t) for t in range(job.n_models)]
        job.out[...] = s["lam"] * sum(wt * jw * d for wt, jw, d in zip(w, job.weights, job.deltas))

    def fini(state):
        seen["fini"] += 1

    libmerge.register_strategy("py_weighted", merge_tensor, init=init, fini=fini, params=[
        {"name": "lam", "default": 1.0}, {"name": "k", "type": "int", "default": 1},
        {"name": "flag", "type": "bool"}, {"name": "mode", "type": "choice", "choices": ["a", "b"]},
        {"name": "w", "default": 1.0, "per_model": True}])
    base, m0, m1 = model(), model(), model()
    got = libmerge.merge("py_weighted", base, [m0, m1], weights=[2.0, 1.0], seed=9, lam=0.5,
                         k=3, flag=True, mode="b", w=[1.0, 3.0])
    assert seen["fini"] == 1
    for k in base:
        want = base[k] + 0.5 * (2.0 * (m0[k].astype(np.float64) - base[k])
                                + 3.0 * (m1[k].astype(np.float64) - base[k]))
        np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-5)


def test_lora_factors_reach_the_strategy():
    calls = []

    def merge_tensor(job):
        f = job.lora(0)
        if f is not None:
            a, b, scale = f
            np.testing.assert_allclose(job.deltas[0], scale * b @ a, rtol=1e-5, atol=1e-6)
            calls.append(job.name)
        job.out[...] = job.deltas[0]

    libmerge.register_strategy("py_lora", merge_tensor)
    base = model()
    a, b = RNG.standard_normal((2, 4)).astype(np.float32), RNG.standard_normal((5, 2)).astype(np.float32)
    adapter = libmerge.LoraAdapter({"a.weight": (a, b, 0.5)})
    got = libmerge.merge("py_lora", base, [adapter])
    assert calls == ["a.weight"]
    np.testing.assert_allclose(got["a.weight"], base["a.weight"] + 0.5 * b @ a, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["b.weight"], base["b.weight"])


def test_exceptions_become_callback_errors():
    def broken(job):
        if job.name == "b.weight":
            raise KeyError("no such thing")

    def wrong_shape(job):
        return np.zeros(3)

    def bad_init(info):
        raise RuntimeError("init failed")

    libmerge.register_strategy("py_broken", broken)
    libmerge.register_strategy("py_shape", wrong_shape)
    libmerge.register_strategy("py_init", broken, init=bad_init)
    base, m = model(), model()
    for name, fragment in [("py_broken", "b.weight.*KeyError.*no such thing"),
                           ("py_shape", "returned shape"), ("py_init", "init failed")]:
        with pytest.raises(libmerge.Error, match=fragment) as e:
            libmerge.merge(name, base, [m])
        assert e.value.status_name == "LM_ERR_CALLBACK"
    with pytest.raises(libmerge.Error, match="KeyError"):
        with libmerge.Merger("py_broken", [m]) as merger:
            merger.apply("b.weight", base["b.weight"])
    # The library still works afterwards.
    libmerge.merge("task_arithmetic", base, [m])


def test_registration_is_checked():
    with pytest.raises(libmerge.Error) as e:
        libmerge.register_strategy("ties", elementwise_max)  # a built-in's name
    assert e.value.status_name == "LM_ERR_EXISTS"
    with pytest.raises(libmerge.InvalidArgumentError):
        libmerge.register_strategy("Bad Name", elementwise_max)
    with pytest.raises(libmerge.InvalidArgumentError):
        libmerge.register_strategy("py_p", elementwise_max,
                                   params=[{"name": "x", "default": 5.0, "max": 1.0}])
    with pytest.raises(ValueError):
        libmerge.register_strategy("py_q", elementwise_max, params=[{"name": "x", "typo": 1}])
    with pytest.raises(TypeError):
        libmerge.register_strategy("py_r", None)
    register_max()
    with pytest.raises(libmerge.Error):
        register_max()
    libmerge.unregister_strategy("py_max")
    assert "py_max" not in libmerge.methods()
    with pytest.raises(libmerge.NotFoundError):
        libmerge.unregister_strategy("py_max")


def test_two_pass_strategy_global_norm():
    """A first pass over every tensor: the summed task vector of the whole
    model is scaled to unit Frobenius norm (a result that depends on every
    tensor). numpy in f64 against the library's f32 sums: 1e-5."""
    def init(info):
        return {"sq": {}}

    # prepare_tensor runs on the library's threads: one entry per tensor
    # (a shared `+=` loses updates), summed in name order so the scale is
    # the same bits whatever the threads' order.
    def prepare_tensor(job):
        job.state["sq"][job.name] = float(np.sum(np.sum(job.deltas, axis=0,
                                                        dtype=np.float64) ** 2))

    def prepared(state):
        state["scale"] = 1.0 / np.sqrt(sum(state["sq"][k] for k in sorted(state["sq"])))

    def merge_tensor(job):
        return job.state["scale"] * np.sum(job.deltas, axis=0, dtype=np.float64)

    libmerge.register_strategy("py_unit", merge_tensor, init=init,
                               prepare_tensor=prepare_tensor, prepared=prepared)
    base = model()
    models = [model(), model()]
    total = {k: sum(m[k].astype(np.float64) - base[k] for m in models) for k in base}
    norm = np.sqrt(sum(np.sum(v ** 2) for v in total.values()))
    got = libmerge.merge("py_unit", base, models, threads=2)
    for k in base:
        np.testing.assert_allclose(got[k], base[k] + total[k] / norm, rtol=1e-5, atol=1e-5)
    # Load time: the first pass runs over the given base, then bit-identical.
    with pytest.raises(libmerge.Error):
        libmerge.Merger("py_unit", models)
    with libmerge.Merger("py_unit", models, base=base) as merger:
        for k in base:
            np.testing.assert_array_equal(merger.apply(k, base[k]), got[k])

    def bad_prepared(state):
        raise ValueError("nope")
    libmerge.register_strategy("py_badprep", merge_tensor, init=init,
                               prepare_tensor=prepare_tensor, prepared=bad_prepared)
    with pytest.raises(libmerge.Error) as e:
        libmerge.merge("py_badprep", base, models)
    assert e.value.status_name == "LM_ERR_CALLBACK"
    with pytest.raises(TypeError):
        libmerge.register_strategy("py_x", merge_tensor, prepared=prepared)
