"""Scaled-down checkpoints with the exact tensor names, layouts and
config.json of real architectures (archs.py), and a torch forward pass per
architecture that loads them strictly (forward.py)."""
