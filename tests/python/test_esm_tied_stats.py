"""ESM on a tied embedding/head pair (docs/methods/esm.md, "Tied
embeddings"): the pair is merged once, under the embedding's name, and a
task's statistics recorded under the head's name (what
libmerge.torch.collect_stats records for a Hugging Face model's tied
lm_head Linear) are the ones its essential subspace uses -- the merged
[vocab, hidden] matrix is the head's Linear weight and its inputs are the
final hidden states. Statistics under the embedding's own name, when
present, come first.

Reference: reference.esm_layer, the released algorithm in numpy (SVD of
dO = X dW^T per task), on the head's inputs X. Tolerance: max |diff| <=
1e-4 * max |ref|, as tests/python/test_esm_routes.py."""
import numpy as np
import pytest

import libmerge
import esm_released
import reference as ref

EMB, HEAD, NORM = "model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"
T, VOCAB, HIDDEN, ROWS = 3, 48, 12, 30


def make(seed=0):
    """Base and T fine-tunes whose head is their embedding (one array under
    two names, as torch's tied weights); per task the head's inputs."""
    rng = np.random.default_rng(seed)
    e0 = (0.05 * rng.standard_normal((VOCAB, HIDDEN))).astype(np.float32)
    norm = np.ones(HIDDEN, np.float32)
    base = {EMB: e0, HEAD: e0, NORM: norm}
    models, taus, xs = [], [], []
    for _ in range(T):
        tv = (rng.standard_normal((VOCAB, 3)) @ rng.standard_normal((3, HIDDEN)) * 0.02
              + 1e-3 * rng.standard_normal((VOCAB, HIDDEN)))
        e = (e0 + tv).astype(np.float32)
        models.append({EMB: e, HEAD: e, NORM: norm})
        taus.append(e.astype(np.float64) - e0)
        xs.append((rng.standard_normal((ROWS, HIDDEN)) * 0.9 ** np.arange(HIDDEN))
                  .astype(np.float32))
    return base, models, taus, xs


def stats_under(name, xs):
    s = libmerge.Stats()
    for t, x in enumerate(xs):
        s.observe(t, name, x)
    return s


def rel(got, want):
    return np.abs(got - want).max() / np.abs(want).max()


def esm(base, models, stats, **kw):
    return esm_released.merge(base, models, stats=stats, layer_scaling=False, **kw)


def test_head_statistics_reach_the_tied_embedding():
    base, models, taus, xs = make()
    out = esm(base, models, stats_under(HEAD, xs))
    np.testing.assert_array_equal(out[HEAD], out[EMB])
    got = out[EMB].astype(np.float64) - base[EMB]
    want = ref.esm_layer(taus, xs, keep_rank=True)
    assert rel(got, want) <= 1e-4, rel(got, want)


def test_untied_embedding_does_not_borrow_the_heads_statistics():
    """Without the tie the embedding has no statistics: TSV-M, which is
    far from the essential-subspace merge (so the test above can fail)."""
    base, models, taus, xs = make()
    untie = lambda m: {k: (v.copy() if k == HEAD else v) for k, v in m.items()}
    out = esm(untie(base), [untie(m) for m in models], stats_under(HEAD, xs))
    got = out[EMB].astype(np.float64) - base[EMB]
    want = ref.esm_layer(taus, xs, keep_rank=True)
    assert rel(got, want) > 1e-2
    head = out[HEAD].astype(np.float64) - base[HEAD]
    assert rel(head, want) <= 1e-4


def test_declared_tie_uses_the_heads_statistics():
    """Copies tied by lm_plan_tie (tie=) behave as shared storage."""
    base, models, taus, xs = make()
    copy = lambda m: {k: v.copy() for k, v in m.items()}
    out = esm(copy(base), [copy(m) for m in models], stats_under(HEAD, xs),
              tie={HEAD: EMB})
    np.testing.assert_array_equal(out[HEAD], out[EMB])
    want = ref.esm_layer(taus, xs, keep_rank=True)
    assert rel(out[EMB].astype(np.float64) - base[EMB], want) <= 1e-4


def test_embedding_statistics_come_first():
    base, models, taus, xs = make()
    other = [np.roll(x, 3, axis=1) * 1.7 for x in xs]
    s = stats_under(HEAD, xs)
    for t, x in enumerate(other):
        s.observe(t, EMB, x)
    out = esm(base, models, s)
    got = out[EMB].astype(np.float64) - base[EMB]
    assert rel(got, ref.esm_layer(taus, other, keep_rank=True)) <= 1e-4
    assert rel(got, ref.esm_layer(taus, xs, keep_rank=True)) > 1e-3


def test_merger_without_base_refuses_a_shared_pair_with_statistics():
    """A load-time merger finds ties by shared storage among the base's
    tensors: without base= it cannot route the pair as merge() does, so it
    says so instead of merging the embedding by TSV-M; with base= it gives
    merge()'s bytes."""
    base, models, taus, xs = make()
    stats = stats_under(HEAD, xs)
    with pytest.raises(libmerge.Error) as e:
        libmerge.Merger("esm", models, stats=stats)
    assert e.value.status_name == "LM_ERR_STATE"
    assert "'%s'" % HEAD in str(e.value) and "base" in str(e.value)
    want = libmerge.merge("esm", base, models, stats=stats)
    with libmerge.Merger("esm", models, base=base, stats=stats) as merger:
        for k in base:
            np.testing.assert_array_equal(merger.apply(k, base[k]), want[k])
