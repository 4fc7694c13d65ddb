"""A small torch MLP with LoRA adapters fine-tuned on synthetic tasks, for
the NSC tests: a shared backbone (3 linear layers) pretrained on a generic
task, then per task a rank-4 LoRA on every backbone layer plus a task head,
trained on Gaussian clusters living in a task-specific input subspace.
Deterministic for a seed (torch CPU, one thread)."""
import numpy as np
import torch

D_IN, HIDDEN, RANK, CLASSES = 16, 48, 4, 4
LAYERS = ["fc1", "fc2", "fc3"]


class Backbone(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(D_IN, HIDDEN)
        self.fc2 = torch.nn.Linear(HIDDEN, HIDDEN)
        self.fc3 = torch.nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x):
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return torch.relu(self.fc3(x))


def task_data(seed, n):
    """Task `seed`: class means in a random 4-dim subspace, unit noise."""
    g = np.random.default_rng(1000 + seed)
    basis = np.linalg.qr(g.standard_normal((D_IN, 4)))[0]
    means = 3.0 * g.standard_normal((CLASSES, 4)) @ basis.T
    def draw(n, salt):
        h = np.random.default_rng(seed * 7919 + salt)
        y = h.integers(0, CLASSES, n)
        x = means[y] + 0.7 * h.standard_normal((n, D_IN))
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    return draw(n, 1), draw(n, 2), draw(n, 3)   # train, unlabeled val, test


def pretrain(seed=0, steps=300):
    torch.manual_seed(seed)
    net = Backbone()
    head = torch.nn.Linear(HIDDEN, 8)
    g = np.random.default_rng(seed)
    x = torch.tensor(g.standard_normal((1024, D_IN)), dtype=torch.float32)
    w = torch.tensor(g.standard_normal((D_IN, 8)), dtype=torch.float32)
    y = (x @ w).argmax(1)
    opt = torch.optim.Adam(list(net.parameters()) + list(head.parameters()), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(net(x)), y).backward()
        opt.step()
    return net


class LoraLinear(torch.nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base
        self.A = torch.nn.Parameter(torch.randn(rank, base.in_features) / base.in_features ** 0.5)
        self.B = torch.nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + self.scale * (x @ self.A.T) @ self.B.T


def finetune_lora(net, data, seed, alpha=8.0, steps=300):
    """A LoRA adapter {"fcK.weight": (A, B, scale)} and a head for a task."""
    torch.manual_seed(100 + seed)
    import copy
    m = copy.deepcopy(net)
    for p in m.parameters():
        p.requires_grad_(False)
    loras = {}
    for name in LAYERS:
        loras[name] = LoraLinear(getattr(m, name), RANK, alpha)
        setattr(m, name, loras[name])
    head = torch.nn.Linear(HIDDEN, CLASSES)
    params = [p for l in loras.values() for p in (l.A, l.B)] + list(head.parameters())
    opt = torch.optim.Adam(params, lr=5e-3)
    x, y = data
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(m(x)), y).backward()
        opt.step()
    adapter = {name + ".weight": (l.A.detach().numpy().copy(), l.B.detach().numpy().copy(), l.scale)
               for name, l in loras.items()}
    return adapter, head


def accuracy(net, head, data):
    x, y = data
    with torch.no_grad():
        return float((head(net(x)).argmax(1) == y).float().mean())


def build(n_tasks=2, n=400):
    torch.set_num_threads(1)
    net = pretrain()
    tasks = []
    for t in range(n_tasks):
        train, val, test = task_data(t, n)
        adapter, head = finetune_lora(net, train, t)
        tasks.append(dict(adapter=adapter, head=head, val=val, test=test))
    return net, tasks


def task_arithmetic(net, adapters, lam=0.4):
    """State dict of W0 + lam * sum_k s_k B_k A_k."""
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    for a in adapters:
        for name, (A, B, s) in a.items():
            sd[name] += torch.tensor(lam * s * (B @ A), dtype=torch.float32)
    return sd
