"""Models for the MPI tests: a base and two fine-tunes with tensors of
mixed sizes (so the cost-based assignment gives every rank work), plus a
copy of the second fine-tune with a NaN in one tensor for the failure test.
usage: gen.py DIR"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import st_format  # noqa: E402

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(0)
shapes = {"embed.weight": (96, 32), "norm.weight": (32,)}
for i in range(6):
    shapes["layers.%d.fc.weight" % i] = (48 + 8 * i, 32)
    shapes["layers.%d.fc.bias" % i] = (48 + 8 * i,)
base = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
st_format.write(os.path.join(out, "base.safetensors"), base)
for m in ("a", "b"):
    ft = {k: v + 0.1 * rng.standard_normal(v.shape).astype(np.float32) for k, v in base.items()}
    st_format.write(os.path.join(out, m + ".safetensors"), ft)
    if m == "b":
        ft["layers.3.fc.weight"][2, 5] = np.nan
        st_format.write(os.path.join(out, "b_nan.safetensors"), ft)
