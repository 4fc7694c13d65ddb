"""libmerge.TaskVector as a merge input: deltas computed by the library
equal numpy's f64 difference rounded once to f32; negated, scaled, summed
and partial task vectors merge as numpy's task arithmetic says (base +
lambda * sum of the deltas, missing tensors counting as zero); a saved task
vector reads back identical. Tolerances: the f32 rounding of each result
(rtol 1e-6 relative to the largest magnitude involved)."""
import numpy as np
import pytest

import libmerge

RNG = np.random.default_rng(11)
SHAPES = {"fc1.weight": (8, 6), "fc1.bias": (8,), "fc2.weight": (3, 8)}


def model(scale=1.0):
    return {k: (scale * RNG.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}


def close(got, want):
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6,
                                   atol=1e-6 * float(np.abs(want[k]).max()))


def test_deltas_are_f32_of_the_f64_difference():
    base, ft = model(), model()
    tv = libmerge.TaskVector(base, ft)
    assert set(tv.deltas) == set(SHAPES) and len(tv) == 3
    for k in SHAPES:
        want = (ft[k].astype(np.float64) - base[k].astype(np.float64)).astype(np.float32)
        assert tv.deltas[k].dtype == np.float32
        np.testing.assert_array_equal(tv.deltas[k], want)


def test_forgetting_and_analogies_merge_like_numpy():
    base, a, b = model(), model(), model()
    ta, tb = libmerge.TaskVector(base, a), libmerge.TaskVector(base, b)
    lam = 0.7
    merged = libmerge.merge("task_arithmetic", base, [ta + 0.5 * tb, -ta],
                            **{"lambda": lam})
    want = {k: base[k] + lam * ((ta.deltas[k] + np.float32(0.5) * tb.deltas[k])
                                + (-ta.deltas[k])) for k in base}
    close(merged, want)
    # A task vector and the fine-tuned model it came from merge alike.
    via_model = libmerge.merge("ties", base, [a, b])
    via_tv = libmerge.merge("ties", base, [ta, b])
    close(via_tv, via_model)


def test_partial_task_vector_counts_missing_tensors_as_zero():
    base, a = model(), model()
    part = libmerge.TaskVector.from_deltas({"fc1.weight": a["fc1.weight"] - base["fc1.weight"]})
    merged = libmerge.merge("task_arithmetic", base, [part], **{"lambda": 1.0})
    close(merged, {"fc1.weight": a["fc1.weight"], "fc1.bias": base["fc1.bias"],
                   "fc2.weight": base["fc2.weight"]})


def test_bad_task_vectors_are_errors_naming_the_tensor():
    base = model()
    extra = libmerge.TaskVector.from_deltas({"nope": np.zeros(3, np.float32)})
    with pytest.raises(libmerge.NotFoundError, match="nope"):
        libmerge.merge("task_arithmetic", base, [extra])
    wrong = libmerge.TaskVector.from_deltas({"fc1.bias": np.zeros(5, np.float32)})
    with pytest.raises(libmerge.ShapeError, match="fc1.bias"):
        libmerge.merge("task_arithmetic", base, [wrong])
    with pytest.raises(ValueError):
        libmerge.TaskVector.from_deltas({})
    with pytest.raises(ValueError):
        libmerge.TaskVector(base, model()) * float("nan")


def test_save_and_load(tmp_path):
    base, a = model(), model()
    tv = -2.0 * libmerge.TaskVector(base, a)
    tv.save(str(tmp_path / "tv.safetensors"))
    back = libmerge.TaskVector.load(str(tmp_path / "tv.safetensors"))
    assert set(back.deltas) == set(tv.deltas)
    for k in tv.deltas:
        np.testing.assert_array_equal(back.deltas[k], tv.deltas[k])
