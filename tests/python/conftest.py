"""Make the in-tree bindings importable; the library comes from
$LIBMERGE_LIBRARY (set by meson test) or the system loader. A missing
library fails loudly with the ImportError's explanation."""
import os
import sys

# Results are bit-identical for any thread count only with OpenBLAS
# single-threaded (docs/api.md, "Threads"): `lmerge` sets it, and tests
# that compare the bindings with `lmerge` byte for byte need the same here.
# Set before numpy (or anything else) loads OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINDINGS = os.path.join(ROOT, "bindings", "python")
if BINDINGS not in sys.path:
    sys.path.insert(0, BINDINGS)
