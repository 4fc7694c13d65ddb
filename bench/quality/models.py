"""Backbone, pretraining and fine-tuning (full and LoRA) for the quality
benchmark, on CPU with Debian's python3-torch. Deterministic for a seed."""
import collections
import copy

import numpy as np
import torch

LAYERS = ("fc1", "fc2", "fc3")


class Backbone(torch.nn.Module):
    """784 -> 256 -> 256 -> 128 MLP; its three weights are what is merged."""
    features = 128

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(784, 256)
        self.fc2 = torch.nn.Linear(256, 256)
        self.fc3 = torch.nn.Linear(256, 128)

    def forward(self, x):
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return torch.relu(self.fc3(x))


class _ResBlock(torch.nn.Module):
    """CLIP's residual attention block, with CLIP's parameter names
    (attn.in_proj_weight, mlp.c_fc, mlp.c_proj) so the released ESM
    routing (preset clip-vit) applies unchanged."""

    def __init__(self, width, heads):
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(width)
        self.attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.Sequential(collections.OrderedDict([
            ("c_fc", torch.nn.Linear(width, 4 * width)), ("gelu", torch.nn.GELU()),
            ("c_proj", torch.nn.Linear(4 * width, width))]))

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Vit(torch.nn.Module):
    """A small CLIP-style vision transformer: 7x7 patches of the 28x28
    image (16 tokens plus a class token), width 64, 4 heads, 4 blocks,
    output projection to 64 features. Unlike the MLP it has repeated layer
    types (ESM's layer-level scaling has something to compare) and many
    rows per image (the subspaces are estimated from tokens, as in the
    paper's ViTs)."""
    features = 64
    patch = 7

    def __init__(self, width=64, heads=4, layers=4):
        super().__init__()
        grid = 28 // self.patch
        self.conv1 = torch.nn.Linear(self.patch * self.patch, width, bias=False)
        self.class_embedding = torch.nn.Parameter(0.02 * torch.randn(width))
        self.positional_embedding = torch.nn.Parameter(0.02 * torch.randn(grid * grid + 1, width))
        self.ln_pre = torch.nn.LayerNorm(width)
        self.transformer = torch.nn.Module()
        self.transformer.resblocks = torch.nn.Sequential(
            *[_ResBlock(width, heads) for _ in range(layers)])
        self.ln_post = torch.nn.LayerNorm(width)
        self.proj = torch.nn.Parameter(torch.randn(width, self.features) / width ** 0.5)

    def forward(self, x):
        p, g = self.patch, 28 // self.patch
        tokens = x.reshape(-1, g, p, g, p).permute(0, 1, 3, 2, 4).reshape(-1, g * g, p * p)
        h = self.conv1(tokens)
        cls = self.class_embedding.expand(h.shape[0], 1, -1)
        h = self.ln_pre(torch.cat([cls, h], 1) + self.positional_embedding)
        h = self.transformer.resblocks(h)
        return self.ln_post(h[:, 0]) @ self.proj


# vit128: twice the width (and 4x the attention/MLP parameters), for the
# zero-shot-style-head tables: room for tasks' updates to keep apart, as
# in CLIP's 768-wide ViTs, where TSV-M keeps 20 points more than averaging.
BACKBONES = {"mlp": Backbone, "vit": Vit, "vit128": lambda: Vit(width=128)}


def _batches(x, y, size, rng):
    order = rng.permutation(len(x))
    for i in range(0, len(x), size):
        j = order[i:i + size]
        yield torch.from_numpy(x[j]), torch.from_numpy(y[j])


def _train(params, forward, data, epochs, lr, seed, steps=None):
    """Adam on batches of 128 for `epochs` passes, or for exactly `steps`
    batches (as many passes as that takes) when given."""
    opt = torch.optim.Adam(params, lr=lr)
    rng = np.random.default_rng(seed)
    done = 0
    while (done < steps) if steps is not None else (done < epochs):
        for xb, yb in _batches(*data, 128, rng):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(forward(xb), yb).backward()
            opt.step()
            if steps is not None:
                done += 1
                if done == steps:
                    break
        if steps is None:
            done += 1


def pretrain(images, labels, epochs=3, seed=0, backbone="mlp"):
    """Supervised pretraining on images no task uses (Fashion-MNIST's
    official test part), augmented with rotations, flips, inversion and
    noise so the features serve every task's domain: predict the class
    and the rotation (40 outputs)."""
    torch.manual_seed(seed)
    net = BACKBONES[backbone]()
    head = torch.nn.Linear(net.features, 40)
    rng = np.random.default_rng(seed)
    x = images.reshape(-1, 28, 28)
    k = rng.integers(0, 4, len(x))
    aug = np.stack([np.rot90(img, int(r)) for img, r in zip(x, k)])
    flip = rng.random(len(x)) < 0.25
    aug[flip] = aug[flip][:, :, ::-1]
    inv = rng.random(len(x)) < 0.25
    aug[inv] = 1.0 - aug[inv]
    aug = np.clip(aug + 0.1 * rng.standard_normal(aug.shape), 0, 1)
    target = (labels * 4 + k).astype(np.int64)
    _train(list(net.parameters()) + list(head.parameters()), lambda xb: head(net(xb)),
           (np.ascontiguousarray(aug.reshape(len(x), -1), np.float32), target), epochs, 1e-3, seed)
    return net


def probe(net, task, epochs=5, lr=1e-2, seed=0):
    """A linear head fitted on the frozen pretrained features, then kept
    fixed while the backbone is fine-tuned (as CLIP's zero-shot heads are
    in the task-arithmetic protocol): merged backbones feed the same head."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(net.features, task["classes"])
    x = net(torch.from_numpy(task["train"][0])).detach().numpy()
    _train(list(head.parameters()), head, (x, task["train"][1]), epochs, lr, seed)
    for p in head.parameters():
        p.requires_grad_(False)
    return head


class PrototypeHead(torch.nn.Module):
    """A zero-shot-style head: logit scale x cosine of the features to
    fixed class prototypes, as CLIP's heads are the cosine to the class
    names' text embeddings."""

    def __init__(self, prototypes, scale=30.0):
        super().__init__()
        self.register_buffer("weight", torch.nn.functional.normalize(prototypes, dim=1))
        self.scale = scale

    def forward(self, features):
        return self.scale * torch.nn.functional.normalize(features, dim=1) @ self.weight.T


def prototype_head(net, task, shots=2, seed=0):
    """The mean normalized pretrained feature of `shots` training images
    per class. A weak classifier, as CLIP's zero-shot heads are for most
    of the standard tasks, so fine-tuning has to move the backbone much
    further than under a fitted probe (and the tasks interfere more)."""
    x, y = task["train"]
    rng = np.random.default_rng(seed)
    protos = []
    with torch.no_grad():
        for c in range(task["classes"]):
            pick = rng.choice(np.flatnonzero(y == c), shots, replace=False)
            feats = net(torch.from_numpy(x[pick]))
            protos.append(torch.nn.functional.normalize(feats, dim=1).mean(0))
    return PrototypeHead(torch.stack(protos))


HEADS = {"probe": probe, "prototype": prototype_head}


def finetune(net, task, steps=240, lr=1e-4, seed=0, head="probe"):
    """Full fine-tuning of a copy of the backbone under the task's frozen
    head (HEADS), for the same number of steps whatever the task's size (as
    the standard CLIP protocol: 4000 steps for every task): task vectors'
    norms then reflect the tasks, not how many batches their data makes."""
    head = HEADS[head](net, task, seed=seed)
    torch.manual_seed(seed)
    ft = copy.deepcopy(net)
    _train(list(ft.parameters()), lambda x: head(ft(x)), task["train"], None, lr, seed, steps)
    return ft, head


class _Lora(torch.nn.Module):
    def __init__(self, base, rank, alpha, gen):
        super().__init__()
        self.base = base
        self.A = torch.nn.Parameter(torch.randn(rank, base.in_features, generator=gen)
                                    / base.in_features ** 0.5)
        self.B = torch.nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + self.scale * (x @ self.A.T) @ self.B.T


def finetune_lora(net, task, rank=8, alpha=16.0, steps=240, lr=2e-3, seed=0):
    """LoRA on every backbone layer (the backbone frozen) plus a new head.
    Returns ({"fcK.weight": (A, B, scale)}, head)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    m = copy.deepcopy(net)
    for p in m.parameters():
        p.requires_grad_(False)
    loras = {}
    for name in LAYERS:
        loras[name] = _Lora(getattr(m, name), rank, alpha, gen)
        setattr(m, name, loras[name])
    head = probe(net, task, seed=seed)
    params = [p for l in loras.values() for p in (l.A, l.B)]
    _train(params, lambda x: head(m(x)), task["train"], None, lr, seed, steps)
    adapter = {n + ".weight": (l.A.detach().numpy().copy(), l.B.detach().numpy().copy(), l.scale)
               for n, l in loras.items()}
    return adapter, head


def lora_model(net, adapter):
    """State dict (numpy) of W0 + s B A for one adapter."""
    sd = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    for name, (a, b, s) in adapter.items():
        sd[name] = (sd[name] + s * (b @ a)).astype(np.float32)
    return sd


def correct(net, state_dict, head, split):
    """Per example of `split`: does `head` on the backbone loaded with
    `state_dict` predict its label (bool array)."""
    m = copy.deepcopy(net)
    m.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in state_dict.items()})
    x, y = split
    with torch.no_grad():
        return head(m(torch.from_numpy(x))).argmax(1).numpy() == y


def accuracy(net, state_dict, head, split):
    return float(correct(net, state_dict, head, split).mean())
