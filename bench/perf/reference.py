"""The reference run: the same merges the straightforward way Python tools
do them, with torch on CPU — tensors memory-mapped from safetensors, merged
one at a time in f32, streamed into a safetensors output.

usage: reference.py METHOD OUT BASE MODEL... (lambda/alpha as libmerge's
defaults used by bench/perf/run.py)"""
import json
import mmap
import struct
import sys
import warnings

import numpy as np
import torch

LAMBDA, DENSITY = 0.3, 0.2


class SafeFile:
    def __init__(self, path):
        self.f = open(path, "rb")
        self.m = mmap.mmap(self.f.fileno(), 0, access=mmap.ACCESS_READ)
        (n,) = struct.unpack("<Q", self.m[:8])
        self.header = json.loads(self.m[8:8 + n])
        self.header.pop("__metadata__", None)
        self.start = 8 + n

    def get(self, name):
        e = self.header[name]
        a, b = e["data_offsets"]
        dt = {"F32": np.float32, "BF16": np.int16, "F16": np.float16}[e["dtype"]]
        arr = np.frombuffer(self.m, dt, count=(b - a) // np.dtype(dt).itemsize,
                            offset=self.start + a).reshape(e["shape"])
        t = torch.from_numpy(arr)
        return t.view(torch.bfloat16).float() if e["dtype"] == "BF16" else t.float()


def ties(taus):
    flat = torch.stack(taus)
    k = max(1, int(DENSITY * flat[0].numel()))
    for t in range(flat.shape[0]):
        v = flat[t].abs().flatten()
        thresh = torch.kthvalue(v, v.numel() - k + 1).values
        flat[t][flat[t].abs() < thresh] = 0
    sign = torch.sign(flat.sum(0))
    agree = (torch.sign(flat) == sign) & (flat != 0)
    count = agree.sum(0).clamp(min=1)
    return (flat * agree).sum(0) / count


def polar(a):
    u, _, vt = torch.linalg.svd(a, full_matrices=False)
    return u @ vt


def tsv(taus):
    if taus[0].ndim != 2:
        return sum(taus) / len(taus)
    k = max(1, min(taus[0].shape) // len(taus))
    us, ss, vs = [], [], []
    for t in taus:
        u, s, vt = torch.linalg.svd(t, full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vs.append(vt[:k])
    u, s, vt = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 0)
    return polar(u) @ torch.diag(s) @ polar(vt)


def iso_c(taus):
    total = sum(taus)
    if total.ndim != 2:
        return total / len(taus)  # 1-D tensors: the mean, as the papers' code
    u, s, vt = torch.linalg.svd(total, full_matrices=False)
    return s.mean() * (u @ vt)


def merge(method, base, taus):
    if method == "task_arithmetic":
        return base + LAMBDA * sum(taus)
    if method == "ties":
        return base + ties(taus)
    if method == "tsv":
        return base + tsv(taus)
    if method == "iso_c":
        return base + iso_c(taus)
    raise SystemExit("unknown method " + method)


def main():
    # Inputs are read-only mappings and are never written to.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    method, out, base_path, *model_paths = sys.argv[1:]
    torch.set_num_threads(2)
    base = SafeFile(base_path)
    models = [SafeFile(p) for p in model_paths]
    names = list(base.header)
    header, offset = {}, 0
    for name in names:
        e = base.header[name]
        n = e["data_offsets"][1] - e["data_offsets"][0]
        header[name] = {"dtype": e["dtype"], "shape": e["shape"],
                        "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 8)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name in names:
            b = base.get(name)
            merged = merge(method, b, [m.get(name) - b for m in models])
            if base.header[name]["dtype"] == "BF16":
                f.write(merged.bfloat16().view(torch.int16).numpy().tobytes())
            else:
                f.write(merged.numpy().astype(np.float32).tobytes())


if __name__ == "__main__":
    main()
