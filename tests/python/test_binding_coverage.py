"""The Python bindings cover the whole exported C API: every function the
shared library exports (nm -D) has a ctypes prototype in libmerge._lib, or
is listed below with the reason binding it makes no sense. A function added
to the library without either fails here."""
import ctypes
import os
import re
import shutil
import subprocess

import pytest

import libmerge

# Exported functions deliberately not bound, each with its reason.
EXCLUDED = {
    "lm_alloc": "allocates with the context's allocator for C strategies; Python "
                "strategies hand numpy arrays back, never library-owned memory",
    "lm_free": "pairs with lm_alloc (see there)",
    "lm_f32_to_f16": "one scalar per call; numpy's float16 is the same IEEE "
                     "binary16 conversion and arrays go through lm_convert",
    "lm_f16_to_f32": "one scalar per call (see lm_f32_to_f16)",
    "lm_f32_to_bf16": "one scalar per call; to_bfloat16 converts whole arrays "
                      "through lm_convert",
    "lm_bf16_to_f32": "one scalar per call; from_bfloat16 converts whole arrays "
                      "through lm_convert",
    "lm_tensor_get": "element access on an lm_tensor; Python code indexes the numpy "
                     "arrays the bindings hand out",
    "lm_tensor_get_at": "element access (see lm_tensor_get)",
    "lm_tensor_set": "element access (see lm_tensor_get)",
    "lm_tensor_clone": "numpy copies arrays; the bindings never hold an lm_tensor "
                       "beyond one call",
    "lm_tensor_is_wrapped": "the bindings always know whether they wrapped an array "
                            "(they create every tensor they use)",
    "lm_plan_clear_projections": "the Python API builds a fresh plan per call, so "
                                 "there are never rules to clear",
    "lm_model_set_metadata": "metadata on an in-memory model reaches no writer (writers "
                             "take it through their options, which save(metadata=) and "
                             "merge_to(metadata=) fill); read metadata is bound",
    "lm_file_sink_layout": "valid only between a sink's begin and end, for processes "
                           "writing into the same files (MPI ranks); merge_to writes "
                           "whole files itself",
    "lm_plan_heldout_drift": "experimental tier; Python tunes purification through "
                             "lm_plan_tune_purify_cv, which reports the drift curve",
}


def exported_functions():
    path = os.environ.get("LIBMERGE_LIBRARY") or libmerge._L._name
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) is needed to list the exported symbols")
    out = subprocess.run([nm, "-D", "--defined-only", path], check=True,
                         capture_output=True, text=True).stdout
    # "T" marks functions (text); the library exports no data symbols.
    return sorted(m.group(1) for m in re.finditer(r"^\S+\s+T\s+(lm_\w+)$", out, re.M))


def bound_functions():
    """Names with a prototype: every argtypes/restype set by _lib._declare."""
    lib = libmerge._L
    return {name for name in dir(lib) if name.startswith("lm_")
            and getattr(lib, name).argtypes is not None}


def test_every_exported_function_is_bound_or_excluded():
    exported = exported_functions()
    assert len(exported) > 150, exported  # the listing itself worked
    bound = bound_functions()
    missing = [f for f in exported if f not in bound and f not in EXCLUDED]
    assert not missing, ("exported but neither bound in libmerge/_lib.py nor "
                         "excluded with a reason in this test: %s" % missing)


def test_exclusions_are_current():
    """An excluded name is still exported and not bound meanwhile (else
    the exclusion is stale and must go), and has a reason."""
    exported = set(exported_functions())
    bound = bound_functions()
    for name, reason in EXCLUDED.items():
        assert name in exported, name
        assert name not in bound, name
        assert len(reason) > 20, name


def test_prototypes_name_real_functions():
    """Every prototype the bindings declare resolves in the library."""
    for name in bound_functions():
        assert isinstance(getattr(libmerge._L, name), ctypes._CFuncPtr), name

