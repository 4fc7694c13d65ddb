"""What the purification benchmarks share: synthetic layers and the
report file."""
import os

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
LAYERS = 6
ROWS = 1024


def layers(width, tasks, rng):
    """A base of LAYERS width x width layers and `tasks` fine-tunes of it."""
    base = {"l%d.weight" % i: rng.standard_normal((width, width)).astype(np.float32) / width ** 0.5
            for i in range(LAYERS)}
    models = [{k: v + 0.02 * rng.standard_normal(v.shape).astype(np.float32)
               for k, v in base.items()} for _ in range(tasks)]
    return base, models


def write(lines, name):
    """docs/benchmarks/NAME from the report's lines."""
    out = os.path.join(ROOT, "docs", "benchmarks", name)
    with open(out, "w") as f:
        f.write("\n".join(lines + [""]))
    print("wrote", out)
