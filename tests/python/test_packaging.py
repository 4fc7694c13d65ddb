"""The bindings install offline as a pure-Python package:
`pip install --no-build-isolation ./bindings/python` with Debian's pip,
setuptools and wheel (no network), and the installed package finds the
library through $LIBMERGE_LIBRARY."""
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "..", "..", "bindings", "python")


def have(module):
    return subprocess.run([sys.executable, "-c", "import " + module],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(not all(have(m) for m in ("pip", "setuptools", "wheel")),
                    reason="pip, setuptools or wheel missing (python3-pip, "
                           "python3-setuptools, python3-wheel)")
def test_pip_install_offline(tmp_path):
    # A copy, so the build leaves nothing in the source tree.
    src = tmp_path / "src"
    shutil.copytree(SOURCE, src, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation",
                        "--no-deps", "--target", str(target), str(src)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    env = dict(os.environ, PYTHONPATH=str(target))
    r = subprocess.run([sys.executable, "-c",
                        "import libmerge, numpy as np; print(libmerge.__file__); "
                        "print(libmerge.merge('average', {'w': np.zeros(2, np.float32)}, "
                        "[{'w': np.ones(2, np.float32)}, {'w': np.full(2, 3, np.float32)}])"
                        "['w'].tolist())"],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith(str(target))
    assert r.stdout.splitlines()[1] == "[2.0, 2.0]"  # the models' mean
