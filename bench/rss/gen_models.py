"""Write a synthetic base model and N fine-tuned variants as safetensors
(transformer-like tensor shapes), for memory and speed benchmarks.

usage: gen_models.py OUT_DIR N_MODELS MB_PER_MODEL [--dtype f32|bf16]"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..",
                                "tests", "python"))
import st_format  # noqa: E402


def shapes(mb, dtype_bytes, hidden=1024):
    """Layers of 4 h x h attention matrices, 2 h x 4h MLP matrices, norms,
    until the model has about `mb` megabytes."""
    out, total, layer = {}, 0, 0
    while total < mb * 1e6:
        for name, s in [("attn.q", (hidden, hidden)), ("attn.k", (hidden, hidden)),
                        ("attn.v", (hidden, hidden)), ("attn.o", (hidden, hidden)),
                        ("mlp.up", (4 * hidden, hidden)), ("mlp.down", (hidden, 4 * hidden)),
                        ("norm", (hidden,))]:
            out["layers.%d.%s.weight" % (layer, name)] = s
            total += int(np.prod(s)) * dtype_bytes
        layer += 1
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("n_models", type=int)
    ap.add_argument("mb", type=float)
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    nbytes = 4 if a.dtype == "f32" else 2
    sh = shapes(a.mb, nbytes)
    rng = np.random.default_rng(0)

    def tensor(s, scale):
        x = (scale * rng.standard_normal(s)).astype(np.float32)
        if a.dtype == "bf16":
            u = x.view(np.uint32)
            return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
        return x

    bf16 = tuple(sh) if a.dtype == "bf16" else ()
    for i in range(a.n_models + 1):
        name = "base" if i == 0 else "model%d" % i
        os.makedirs(os.path.join(a.out, name), exist_ok=True)
        st_format.write(os.path.join(a.out, name, "model.safetensors"),
                        {k: tensor(s, 0.02) for k, s in sh.items()}, bf16=bf16)
    with open(os.path.join(a.out, "merge.yaml"), "w") as f:
        f.write("merge_method: task_arithmetic\nbase_model: %s/base\nmodels:\n" % a.out)
        for i in range(1, a.n_models + 1):
            f.write("  - model: %s/model%d\n" % (a.out, i))
        f.write("parameters:\n  lambda: 0.3\n")


if __name__ == "__main__":
    main()
