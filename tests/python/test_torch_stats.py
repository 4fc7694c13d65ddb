"""libmerge.torch.collect_stats on a small torch model: the statistics equal
X^T X of the rows each hooked layer received, computed here directly; an
ESM merge of two fine-tuned copies runs end to end from those statistics."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="python3-torch is not installed")
import libmerge  # noqa: E402
import libmerge.torch as lt  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 16)
        self.attn = torch.nn.MultiheadAttention(16, 2)
        self.fc2 = torch.nn.Linear(16, 4)

    def forward(self, x):            # x: (seq, batch, 8)
        h = torch.relu(self.fc1(x))
        a, _ = self.attn(h, h, h)
        return self.fc2(a)


def test_collect_stats_matches_manual_and_feeds_esm():
    torch.manual_seed(0)
    net = Net()
    batches = [torch.randn(5, 3, 8) for _ in range(3)]
    stats = lt.collect_stats(net, [(b, None) for b in batches], model_index=1)
    names = {name for _, name in stats.keys()}
    assert names == {"fc1.weight", "fc2.weight", "attn.in_proj_weight"}
    assert all(model == 1 for model, _ in stats.keys())
    x = torch.cat([b.reshape(-1, 8) for b in batches]).double().numpy()
    gram, n = stats.get(1, "fc1.weight")
    np.testing.assert_allclose(gram, x.T @ x, rtol=1e-5, atol=1e-5)
    assert n == 45
    with torch.no_grad():
        h = torch.cat([torch.relu(net.fc1(b)).transpose(0, 1).reshape(-1, 16)
                       for b in batches]).double().numpy()
    gram, n = stats.get(1, "attn.in_proj_weight")
    np.testing.assert_allclose(gram, h.T @ h, rtol=1e-5, atol=1e-5)

    # Two "fine-tuned" copies, statistics from each, merged with ESM.
    base_sd = lt.state_dict_to_numpy(net.state_dict())
    models, stats = [], libmerge.Stats()
    for t in range(2):
        ft = Net()
        ft.load_state_dict(net.state_dict())
        with torch.no_grad():
            for p in ft.parameters():
                p.add_(0.01 * torch.randn_like(p))
        lt.collect_stats(ft, batches, stats, model_index=t)
        models.append(lt.state_dict_to_numpy(ft.state_dict()))
    merged = libmerge.merge("esm", base_sd, models, stats=stats)
    assert set(merged) == set(base_sd)
    assert all(np.all(np.isfinite(v)) for v in merged.values())
    assert not np.allclose(merged["fc1.weight"], base_sd["fc1.weight"])


def test_bf16_state_dicts():
    sd = {"w": torch.randn(3, 4).to(torch.bfloat16), "step": torch.tensor(3)}
    out = lt.state_dict_to_numpy(sd)
    assert set(out) == {"w"} and isinstance(out["w"], libmerge.BFloat16Array)
    np.testing.assert_array_equal(libmerge.from_bfloat16(out["w"]),
                                  sd["w"].float().numpy())


@pytest.mark.parametrize("include,exclude,want", [
    (None, ["fc2"], {"fc1.weight", "attn.in_proj_weight"}),
    (None, "^attn$", {"fc1.weight", "fc2.weight"}),
    (["^fc"], None, {"fc1.weight", "fc2.weight"}),
    (["fc"], ["2$"], {"fc1.weight"}),
])
def test_collect_stats_include_exclude(include, exclude, want):
    """Patterns are regular expressions searched in module names: hooked
    when some include pattern matches (all when None) and no exclude one
    does, as for exclude=["lm_head"] on a language model."""
    torch.manual_seed(1)
    stats = lt.collect_stats(Net(), [torch.randn(5, 3, 8)], include=include,
                             exclude=exclude)
    assert {name for _, name in stats.keys()} == want


def test_collect_stats_bad_pattern_names_it():
    with pytest.raises(ValueError, match=r"exclude pattern '\['"):
        lt.collect_stats(Net(), [torch.randn(5, 3, 8)], exclude=["["])
