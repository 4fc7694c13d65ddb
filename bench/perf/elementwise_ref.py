"""The elementwise merges the way a short Python script does them, for
bench/perf/elementwise.py: memory-map the safetensors inputs, per tensor
b + c * sum_i w_i (f_i - b) in f32, write the output once.

usage: elementwise_ref.py numpy|torch METHOD OUT BASE MODEL...
METHOD: task_arithmetic (c = 0.3, w = 1), average / linear (c = 1/n);
ties, dare_ties, dare_linear (density 0.2, lambda 1, weights 1) the way
mergekit's generalized task arithmetic does them: per task vector a top-k
magnitude mask (torch.topk / numpy argpartition) or a Bernoulli mask
rescaled by 1/density, then the sign election of the summed trimmed task
vectors and the mean of the agreeing ones (ties, dare_ties) or the sum
(dare_linear)."""
import json
import mmap
import struct
import sys
import warnings

import numpy as np

warnings.simplefilter("ignore")  # torch.from_numpy on read-only mappings

LAMBDA = 0.3
DENSITY = 0.2
SPARSE = ("ties", "dare_ties", "dare_linear")


def sparse_torch(method, deltas, torch):
    kept = []
    for d in deltas:
        if method == "ties":
            k = max(1, int(DENSITY * d.numel()))
            idx = torch.topk(d.abs().flatten(), k, sorted=False).indices
            m = torch.zeros(d.numel(), dtype=torch.bool)
            m[idx] = True
            kept.append(d * m.view(d.shape))
        else:
            keep = torch.bernoulli(torch.full_like(d, DENSITY))
            kept.append(d * keep / DENSITY)
    s = torch.stack(kept)
    if method == "dare_linear":
        return s.sum(0)
    sign = torch.sign(s.sum(0))
    agree = torch.sign(s) == sign
    return (s * agree).sum(0) / agree.sum(0).clamp(min=1)


def sparse_numpy(method, deltas, rng):
    kept = []
    for d in deltas:
        if method == "ties":
            k = max(1, int(DENSITY * d.size))
            flat = np.abs(d).ravel()
            idx = np.argpartition(flat, flat.size - k)[flat.size - k:]
            m = np.zeros(d.size, dtype=bool)
            m[idx] = True
            kept.append(d * m.reshape(d.shape))
        else:
            kept.append(d * (rng.random(d.shape, dtype=np.float32) < DENSITY) / DENSITY)
    s = np.stack(kept)
    if method == "dare_linear":
        return s.sum(0)
    sign = np.sign(s.sum(0))
    agree = np.sign(s) == sign
    return (s * agree).sum(0) / np.maximum(agree.sum(0), 1)


def open_st(path):
    f = open(path, "rb")
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    (n,) = struct.unpack("<Q", m[:8])
    header = json.loads(m[8:8 + n])
    header.pop("__metadata__", None)
    return m, header, 8 + n


def main():
    lib, method, out, base, *models = sys.argv[1:]
    c = LAMBDA if method == "task_arithmetic" else 1.0 / len(models)
    bm, header, bstart = open_st(base)
    ins = [open_st(p) for p in models]
    rng = np.random.default_rng(0)
    if lib == "torch":
        import torch
        torch.set_num_threads(2)
    names = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    hdr = json.dumps({k: header[k] for k in names}).encode()
    hdr += b" " * (-len(hdr) % 8)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(hdr)) + hdr)
        for name in names:
            e = header[name]
            a, b = e["data_offsets"]
            bf16 = e["dtype"] == "BF16"
            dt = np.int16 if bf16 else np.float32

            def arr(m, start, hd):
                lo, hi = hd[name]["data_offsets"]
                return np.frombuffer(m, dt, (hi - lo) // np.dtype(dt).itemsize, start + lo)
            if lib == "torch":
                def t32(x):
                    t = torch.from_numpy(x)
                    return t.view(torch.bfloat16).float() if bf16 else t
                x = t32(arr(bm, bstart, header))
                if method in SPARSE:
                    r = x + sparse_torch(method, [t32(arr(m, st, hd)) - x
                                                  for m, hd, st in ins], torch)
                else:
                    acc = torch.zeros_like(x)
                    for m, hd, st in ins:
                        acc += t32(arr(m, st, hd)) - x
                    r = x + c * acc
                r = r.bfloat16().view(torch.int16) if bf16 else r
                f.write(r.numpy().tobytes())
            else:
                def n32(x):
                    return (x.view(np.uint16).astype(np.uint32) << 16).view(np.float32) if bf16 else x
                x = n32(arr(bm, bstart, header))
                if method in SPARSE:
                    r = x + sparse_numpy(method, [n32(arr(m, st, hd)) - x
                                                  for m, hd, st in ins], rng)
                    r = r.astype(np.float32)
                else:
                    acc = np.zeros_like(x)
                    for m, hd, st in ins:
                        acc += n32(arr(m, st, hd)) - x
                    r = x + np.float32(c) * acc
                if bf16:  # round to nearest even
                    u = r.view(np.uint32)
                    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
                f.write(r.tobytes())


if __name__ == "__main__":
    main()
