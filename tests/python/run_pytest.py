"""Run pytest on a directory (extra arguments go to pytest); exit 77 (meson's "skipped") only when numpy
or pytest are missing, so a machine without them says so instead of
silently passing. CI installs both."""
import os
import sys

# Before numpy loads OpenBLAS (conftest.py comes too late): tests compare
# the bindings with `lmerge`, which runs OpenBLAS single-threaded, bit for bit.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

try:
    import numpy  # noqa: F401
    import pytest
except ImportError as e:
    print("skipping the Python tests: %s (apt-get install python3-numpy "
          "python3-pytest)" % e)
    sys.exit(77)
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", sys.argv[1]] + sys.argv[2:]))
