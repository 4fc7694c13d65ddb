"""Make the in-tree bindings importable; the library comes from
$LIBMERGE_LIBRARY (set by meson test) or the system loader. A missing
library fails loudly with the ImportError's explanation."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINDINGS = os.path.join(ROOT, "bindings", "python")
if BINDINGS not in sys.path:
    sys.path.insert(0, BINDINGS)
