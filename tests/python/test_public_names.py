"""The bindings' public names do not change when the package is
reorganised: `import libmerge; libmerge.X` keeps working for every X that
existed before the split into modules (0.1), with the same signatures."""
import inspect

import libmerge

ALL = ['merge', 'search', 'methods', 'method_info', 'version', 'Stats', 'BFloat16Array',
       'to_bfloat16', 'from_bfloat16', 'Error', 'InvalidArgumentError', 'ShapeError',
       'DtypeError', 'NotFoundError', 'OutOfRangeError', 'NonFiniteError', 'NSC',
       'LoraAdapter', 'load', 'save']
# Names added since 0.1, appended to __all__ in this order.
ADDED = ['TaskVector', 'Merger', 'merge_to', 'register_strategy', 'unregister_strategy',
         'Projector', 'Subspace']

# Every attribute without a leading underscore in 0.1, including the
# incidental ones (imported modules, dtype codes), which stay reachable.
PUBLIC_0_1 = ['BF16', 'BFloat16Array', 'DEFAULT_KEEP_CANDIDATES', 'DtypeError', 'Error',
              'F32', 'F64', 'InvalidArgumentError', 'LoraAdapter', 'NSC', 'NonFiniteError',
              'NotFoundError', 'OutOfRangeError', 'ShapeError', 'Stats', 'ctypes',
              'error_for', 'files', 'from_bfloat16', 'load', 'logging', 'math', 'merge',
              'method_info', 'methods', 'np', 'nsc', 'numbers', 'os', 'prepare', 'save',
              'search', 'to_bfloat16', 'to_numpy', 'version']

SIGNATURES = {
    "merge": "(method, base, models, *, stats=None, weights=None, threads=0, seed=0, "
             "purify=None, nonfinite='error', **params)",
    "search": "(method, base, models, score, *, param=None, lo=0.0, hi=2.0, tol=0.01, "
              "max_evals=15, stats=None, weights=None, threads=0, seed=0, purify=None, "
              "**params)",
    "methods": "()",
    "method_info": "(name)",
    "version": "()",
    "to_bfloat16": "(values)",
    "from_bfloat16": "(values)",
    "load": "(path)",
    "save": "(path, tensors, *, compress=False)",
}


def test_all_is_unchanged():
    assert libmerge.__all__ == ALL + ADDED


def test_every_0_1_name_is_still_there():
    missing = [n for n in PUBLIC_0_1 if not hasattr(libmerge, n)]
    assert not missing


def _params(sig_text):
    """Parameters of a signature written as text, via a stub def."""
    scope = {}
    exec("def f%s: pass" % sig_text, scope)
    return inspect.signature(scope["f"]).parameters


def test_signatures_are_compatible():
    """Every 0.1 call still works: each 0.1 parameter keeps its position,
    kind and default; parameters added since are keyword-only with a
    default (so no 0.1 call can reach them by accident)."""
    for name, sig in SIGNATURES.items():
        old = _params(sig)
        new = inspect.signature(getattr(libmerge, name)).parameters
        for p in old.values():
            assert p.name in new, (name, p.name)
            q = new[p.name]
            assert (q.kind, q.default) == (p.kind, p.default), (name, p.name)
        positional = [p for p in old.values() if p.kind <= p.POSITIONAL_OR_KEYWORD]
        assert list(new)[:len(positional)] == [p.name for p in positional], name
        for q in new.values():
            if q.name not in old:
                assert q.kind == q.KEYWORD_ONLY and q.default is not q.empty, (name, q.name)


def test_stats_interface_is_unchanged():
    methods = set(n for n in dir(libmerge.Stats) if not n.startswith("_"))
    assert {'get', 'keys', 'load', 'merge', 'observe', 'save'} <= methods
    params = list(inspect.signature(libmerge.Stats.__init__).parameters)
    assert params[:3] == ["self", "heldout_fraction", "folds"]
    s = libmerge.Stats(folds=2)
    assert s.heldout is None and len(s.folds) == 2
    assert libmerge.Stats(heldout_fraction=0.5).folds is None


def test_submodules_keep_their_names():
    import libmerge.files
    import libmerge.nsc
    assert libmerge.files.__all__ == ["load", "save"]
    assert libmerge.nsc.__all__ == ["LoraAdapter", "NSC"]
    assert libmerge.files.load is libmerge.load
    assert libmerge.nsc.NSC is libmerge.NSC
    assert libmerge.DEFAULT_KEEP_CANDIDATES == (1.0, 0.995, 0.99, 0.98, 0.97, 0.95, 0.9,
                                                0.85, 0.8, 0.7, 0.6, 0.5)
