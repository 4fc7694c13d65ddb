"""Finding and loading the libmerge shared library, and its C prototypes."""
import ctypes
import ctypes.util
import os

SOVERSION = 1
# The binding speaks the API of this major.minor (LM_VERSION_NUMBER // 100).
API_VERSION = (0, 2)


class _ContextOptions(ctypes.Structure):
    """Mirror of lm_context_options (struct_size first)."""
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("n_threads", ctypes.c_int32),
        ("seed", ctypes.c_uint64),
        ("log", ctypes.c_void_p),
        ("log_user", ctypes.c_void_p),
        ("log_level", ctypes.c_int32),
        ("allocator", ctypes.c_void_p),
    ]


class _ParamDesc(ctypes.Structure):
    """Mirror of lm_param_desc."""
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("name", ctypes.c_char_p),
        ("type", ctypes.c_int),
        ("default_value", ctypes.c_double),
        ("min_value", ctypes.c_double),
        ("max_value", ctypes.c_double),
        ("choices", ctypes.c_char_p),
        ("help", ctypes.c_char_p),
        ("flags", ctypes.c_uint32),
    ]


class _PurifyOptions(ctypes.Structure):
    """Mirror of lm_purify_options."""
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("keep", ctypes.c_double),
        ("allocation", ctypes.c_int),
        ("epsilon", ctypes.c_double),
        ("tolerance", ctypes.c_double),
        ("polarize", ctypes.c_double),
        ("max_prune_factor", ctypes.c_double),
    ]


class _StatsSplitOptions(ctypes.Structure):
    """Mirror of lm_stats_split_options."""
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("heldout_fraction", ctypes.c_double),
        ("folds", ctypes.c_size_t),
    ]


class _NscOptions(ctypes.Structure):
    """Mirror of lm_nsc_options."""
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("init", ctypes.c_double),
        ("lr", ctypes.c_double),
        ("beta1", ctypes.c_double),
        ("beta2", ctypes.c_double),
        ("adam_eps", ctypes.c_double),
        ("weight_decay", ctypes.c_double),
        ("ridge", ctypes.c_double),
        ("lambda_min", ctypes.c_double),
        ("lambda_max", ctypes.c_double),
        ("trust_radius", ctypes.c_double),
    ]


class _NscSpsaOptions(ctypes.Structure):
    """Mirror of lm_nsc_spsa_options."""
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("steps", ctypes.c_size_t),
        ("perturbation", ctypes.c_double),
        ("lr", ctypes.c_double),
        ("first_step", ctypes.c_size_t),
    ]


class _NpzOptions(ctypes.Structure):
    """Mirror of lm_npz_options."""
    _fields_ = [("struct_size", ctypes.c_uint32), ("compress", ctypes.c_int)]


class _StrategyVtable(ctypes.Structure):
    """The leading fields of lm_strategy_vtable that the binding reads."""
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("abi_version", ctypes.c_uint32),
        ("name", ctypes.c_char_p),
        ("description", ctypes.c_char_p),
        ("params", ctypes.POINTER(_ParamDesc)),
        ("n_params", ctypes.c_size_t),
    ]


# int (*lm_score_fn)(double value, const lm_model *merged, double *score,
#                    void *user)
LOG_FN = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
NSC_EVAL_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t,
                               ctypes.c_size_t, ctypes.c_void_p)
SCORE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_double, ctypes.c_void_p,
                            ctypes.POINTER(ctypes.c_double), ctypes.c_void_p)


class _PurifyCvOptions(ctypes.Structure):
    """Mirror of lm_purify_cv_options."""
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("candidates", ctypes.POINTER(ctypes.c_double)),
        ("n_candidates", ctypes.c_size_t),
        ("heldout", ctypes.c_void_p),
        ("folds", ctypes.POINTER(ctypes.c_void_p)),
        ("n_folds", ctypes.c_size_t),
        ("score", SCORE_FN),
        ("score_user", ctypes.c_void_p),
        ("scale", ctypes.c_char_p),
        ("scales", ctypes.POINTER(ctypes.c_double)),
        ("n_scales", ctypes.c_size_t),
        ("se_rule", ctypes.c_double),
    ]


class _PurifyCvResult(ctypes.Structure):
    """Mirror of lm_purify_cv_result."""
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("keep", ctypes.c_double),
        ("scale", ctypes.c_double),
        ("objective", ctypes.c_int),
        ("n_folds", ctypes.c_size_t),
        ("gain", ctypes.c_double),
        ("gain_se", ctypes.c_double),
    ]


class _SearchOptions(ctypes.Structure):
    """Mirror of lm_search_options."""
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("lo", ctypes.c_double),
        ("hi", ctypes.c_double),
        ("tol", ctypes.c_double),
        ("max_evals", ctypes.c_int),
        ("max_widen", ctypes.c_int),
    ]


class _SearchResult(ctypes.Structure):
    """Mirror of lm_search_result."""
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("best_value", ctypes.c_double),
        ("best_score", ctypes.c_double),
        ("lo", ctypes.c_double),
        ("hi", ctypes.c_double),
        ("evals", ctypes.c_int),
        ("widened", ctypes.c_int),
        ("at_edge", ctypes.c_int),
    ]


# --- strategies written in Python (libmerge/sys/strategy.h) ---------------
class _InitInfo(ctypes.Structure):
    """Mirror of lm_strategy_init_info."""
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("ctx", ctypes.c_void_p),
        ("params", ctypes.c_void_p),
        ("n_models", ctypes.c_size_t),
        ("weights", ctypes.POINTER(ctypes.c_double)),
        ("stats", ctypes.c_void_p),
    ]


class _TensorJob(ctypes.Structure):
    """Mirror of lm_tensor_job (0.2: params, then held_bytes, last)."""
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("ctx", ctypes.c_void_p),
        ("name", ctypes.c_char_p),
        ("ndim", ctypes.c_int),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("numel", ctypes.c_size_t),
        ("base", ctypes.POINTER(ctypes.c_float)),
        ("n_models", ctypes.c_size_t),
        ("deltas", ctypes.POINTER(ctypes.POINTER(ctypes.c_float))),
        ("weights", ctypes.POINTER(ctypes.c_double)),
        ("seed", ctypes.c_uint64),
        ("out", ctypes.POINTER(ctypes.c_float)),
        ("stats", ctypes.c_void_p),
        ("loras", ctypes.POINTER(ctypes.c_void_p)),
        ("params", ctypes.c_void_p),
        ("held_bytes", ctypes.c_uint64),
    ]


# lm_status (*init)(const lm_strategy_init_info *, void **state, void *user)
STRATEGY_INIT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(_InitInfo),
                                    ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)
# lm_status (*merge_tensor)(void *state, const lm_tensor_job *, void *user)
STRATEGY_MERGE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p,
                                     ctypes.POINTER(_TensorJob), ctypes.c_void_p)
# void (*fini)(void *state, void *user)
STRATEGY_FINI_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
# lm_status (*prepared)(void *state, void *user)
STRATEGY_PREPARED_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


class _FullStrategyVtable(ctypes.Structure):
    """Mirror of the whole lm_strategy_vtable, for lm_register_strategy."""
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("abi_version", ctypes.c_uint32),
        ("name", ctypes.c_char_p),
        ("description", ctypes.c_char_p),
        ("params", ctypes.POINTER(_ParamDesc)),
        ("n_params", ctypes.c_size_t),
        ("init", STRATEGY_INIT_FN),
        ("merge_tensor", STRATEGY_MERGE_FN),
        ("fini", STRATEGY_FINI_FN),
        ("user", ctypes.c_void_p),
        ("prepare_tensor", STRATEGY_MERGE_FN),   # same signature as merge_tensor
        ("prepared", STRATEGY_PREPARED_FN),
    ]


STRATEGY_ABI_VERSION = 1

# --- sinks and output directories ----------------------------------------
class _TensorDesc(ctypes.Structure):
    """Mirror of lm_tensor_desc."""
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("name", ctypes.c_char_p),
        ("dtype", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("shape", ctypes.c_int64 * 8),
        ("nbytes", ctypes.c_size_t),
    ]


class _SafetensorsSinkOptions(ctypes.Structure):
    """Mirror of lm_safetensors_sink_options."""
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("max_shard_bytes", ctypes.c_uint64),
        ("metadata_keys", ctypes.POINTER(ctypes.c_char_p)),
        ("metadata_values", ctypes.POINTER(ctypes.c_char_p)),
        ("n_metadata", ctypes.c_size_t),
    ]


class _GgufOptions(ctypes.Structure):
    """Mirror of lm_gguf_options."""
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("kv_from", ctypes.c_void_p),
        ("metadata_keys", ctypes.POINTER(ctypes.c_char_p)),
        ("metadata_values", ctypes.POINTER(ctypes.c_char_p)),
        ("n_metadata", ctypes.c_size_t),
        ("alignment", ctypes.c_uint32),
        ("store", ctypes.c_int),
    ]


class _OutputDirOptions(ctypes.Structure):
    """Mirror of lm_output_dir_options."""
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("overwrite", ctypes.c_int),
        ("inputs", ctypes.POINTER(ctypes.c_char_p)),
        ("n_inputs", ctypes.c_size_t),
    ]


# lm_sink_vtable callbacks (libmerge/sink.h)
SINK_BEGIN_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.POINTER(_TensorDesc)),
                                 ctypes.c_size_t, ctypes.c_void_p)
SINK_WRITE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p,
                                 ctypes.c_size_t, ctypes.c_void_p)
SINK_END_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


class _SinkVtable(ctypes.Structure):
    """Mirror of lm_sink_vtable (buffer and write_range left NULL: the
    library's scratch, whole tensors to write)."""
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("begin", SINK_BEGIN_FN),
        ("buffer", ctypes.c_void_p),
        ("write", SINK_WRITE_FN),
        ("end", SINK_END_FN),
        ("user", ctypes.c_void_p),
        ("write_range", ctypes.c_void_p),  # NULL: whole tensors to write
    ]


# int (*lm_progress_fn)(size_t done, size_t total, uint64_t bytes_done,
#                       uint64_t bytes_total, void *user)
PROGRESS_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t,
                               ctypes.c_uint64, ctypes.c_uint64, ctypes.c_void_p)
# lm_status (*lm_tensor_read_fn)(const char *name, void *dst, size_t nbytes,
#                                void *user)
TENSOR_READ_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p,
                                  ctypes.c_size_t, ctypes.c_void_p)


# The options structs the bindings fill from the library's defaults
# (lm_<x>_options_init), never from copies of the C macros.
OPTIONS_INIT = {
    "lm_context_options_init": _ContextOptions,
    "lm_purify_options_init": _PurifyOptions,
    "lm_purify_cv_options_init": _PurifyCvOptions,
    "lm_stats_split_options_init": _StatsSplitOptions,
    "lm_nsc_options_init": _NscOptions,
    "lm_nsc_spsa_options_init": _NscSpsaOptions,
    "lm_npz_options_init": _NpzOptions,
    "lm_search_options_init": _SearchOptions,
    "lm_safetensors_sink_options_init": _SafetensorsSinkOptions,
    "lm_gguf_options_init": _GgufOptions,
    "lm_output_dir_options_init": _OutputDirOptions,
}


def options(lib, struct):
    """A new options struct holding the library's defaults."""
    out = struct()
    for fn, cls in OPTIONS_INIT.items():
        if cls is struct:
            getattr(lib, fn)(ctypes.byref(out))
            return out
    raise KeyError(struct.__name__)


def check_api_version(number, expected=API_VERSION):
    """Raise ImportError unless library version `number` (major*10000 +
    minor*100 + patch) has the expected major.minor."""
    found = (number // 10000, (number // 100) % 100)
    if found != tuple(expected):
        raise ImportError(
            "libmerge: the shared library is version %d.%d.%d but these "
            "bindings need %d.%d.x" % (found[0], found[1], number % 100,
                                       expected[0], expected[1]))


def _candidates():
    env = os.environ.get("LIBMERGE_LIBRARY")
    if env:
        return [("$LIBMERGE_LIBRARY", env)]
    names = ["libmerge.so.%d" % SOVERSION]
    found = ctypes.util.find_library("merge")
    if found and found not in names:
        names.append(found)
    return [("system loader", n) for n in names]


def load():
    """Load the library: $LIBMERGE_LIBRARY wins, else the system loader's
    search for libmerge.so.<soversion>. ImportError says what was tried."""
    tried = []
    for how, name in _candidates():
        try:
            lib = ctypes.CDLL(name)
        except OSError as e:
            tried.append("%s (%s): %s" % (name, how, e))
            continue
        _declare(lib)
        check_api_version(lib.lm_version())
        return lib
    raise ImportError(
        "libmerge: cannot load the shared library. Tried:\n  " +
        "\n  ".join(tried) +
        "\nSet LIBMERGE_LIBRARY to the path of libmerge.so.%d, or install "
        "libmerge (meson install) so the system loader finds it." % SOVERSION)


def _declare(lib):
    P = ctypes.c_void_p
    I64P = ctypes.POINTER(ctypes.c_int64)
    sigs = {
        "lm_version": (ctypes.c_uint, []),
        "lm_version_string": (ctypes.c_char_p, []),
        "lm_strerror": (ctypes.c_char_p, [ctypes.c_int]),
        "lm_context_create": (ctypes.c_int,
                              [ctypes.POINTER(_ContextOptions),
                               ctypes.POINTER(P)]),
        "lm_context_destroy": (None, [P]),
        "lm_context_error": (ctypes.c_char_p, [P]),
        "lm_tensor_wrap": (ctypes.c_int, [P, ctypes.c_int, ctypes.c_int, I64P,
                                          P, ctypes.c_size_t,
                                          ctypes.POINTER(P)]),
        "lm_tensor_destroy": (None, [P]),
        "lm_tensor_dtype": (ctypes.c_int, [P]),
        "lm_tensor_ndim": (ctypes.c_int, [P]),
        "lm_tensor_shape": (I64P, [P]),
        "lm_tensor_nbytes": (ctypes.c_size_t, [P]),
        "lm_tensor_cdata": (P, [P]),
        "lm_convert": (ctypes.c_int, [P, ctypes.c_int, P, ctypes.c_int,
                                      ctypes.c_size_t]),
        "lm_model_create": (ctypes.c_int, [P, ctypes.POINTER(P)]),
        "lm_model_destroy": (None, [P]),
        "lm_model_add": (ctypes.c_int, [P, ctypes.c_char_p, P]),
        "lm_model_count": (ctypes.c_size_t, [P]),
        "lm_model_name_at": (ctypes.c_char_p, [P, ctypes.c_size_t]),
        "lm_model_at": (P, [P, ctypes.c_size_t]),
        "lm_plan_create": (ctypes.c_int, [P, ctypes.c_char_p,
                                          ctypes.POINTER(P)]),
        "lm_plan_destroy": (None, [P]),
        "lm_plan_set_float": (ctypes.c_int, [P, ctypes.c_char_p,
                                             ctypes.c_double]),
        "lm_plan_set_float_for": (ctypes.c_int, [P, ctypes.c_char_p,
                                                 ctypes.c_double,
                                                 ctypes.c_char_p,
                                                 ctypes.c_size_t]),
        "lm_plan_set_string": (ctypes.c_int, [P, ctypes.c_char_p,
                                              ctypes.c_char_p]),
        "lm_plan_set_base": (ctypes.c_int, [P, P]),
        "lm_plan_add_model": (ctypes.c_int, [P, P, ctypes.c_double]),
        "lm_plan_add_task_vector": (ctypes.c_int, [P, P, ctypes.c_double]),
        "lm_task_vector_create": (ctypes.c_int, [P, P, P, ctypes.POINTER(P)]),
        "lm_task_vector_from_model": (ctypes.c_int, [P, P, ctypes.POINTER(P)]),
        "lm_task_vector_to_model": (ctypes.c_int, [P, ctypes.POINTER(P)]),
        "lm_task_vector_destroy": (None, [P]),
        "lm_plan_set_stats": (ctypes.c_int, [P, P]),
        "lm_plan_execute": (ctypes.c_int, [P, ctypes.POINTER(P)]),
        "lm_plan_search": (ctypes.c_int, [P, ctypes.c_char_p, ctypes.c_double,
                                          ctypes.c_double, ctypes.c_double,
                                          ctypes.c_int, SCORE_FN, P,
                                          ctypes.POINTER(ctypes.c_double),
                                          ctypes.POINTER(ctypes.c_double)]),
        "lm_plan_search_with": (ctypes.c_int, [P, ctypes.c_char_p,
                                               ctypes.POINTER(_SearchOptions), SCORE_FN, P,
                                               ctypes.POINTER(_SearchResult)]),
        "lm_plan_set_purify": (ctypes.c_int, [P, ctypes.POINTER(_PurifyOptions)]),
        "lm_plan_tune_purify": (ctypes.c_int, [P, P, ctypes.POINTER(ctypes.c_double),
                                               ctypes.c_size_t,
                                               ctypes.POINTER(ctypes.c_double),
                                               ctypes.POINTER(ctypes.c_double)]),
        "lm_plan_tune_purify_folds": (ctypes.c_int, [P, ctypes.POINTER(P), ctypes.c_size_t,
                                                     ctypes.POINTER(ctypes.c_double),
                                                     ctypes.c_size_t,
                                                     ctypes.POINTER(ctypes.c_double),
                                                     ctypes.POINTER(ctypes.c_double)]),
        "lm_plan_tune_purify_score": (ctypes.c_int, [P, ctypes.POINTER(ctypes.c_double),
                                                     ctypes.c_size_t, SCORE_FN, P,
                                                     ctypes.POINTER(ctypes.c_double),
                                                     ctypes.POINTER(ctypes.c_double)]),
        "lm_plan_tune_purify_cv": (ctypes.c_int, [P, ctypes.POINTER(_PurifyCvOptions),
                                                  ctypes.POINTER(ctypes.c_double),
                                                  ctypes.POINTER(_PurifyCvResult)]),
        "lm_plan_tune_purify_layers": (ctypes.c_int, [P, ctypes.POINTER(_PurifyCvOptions),
                                                      ctypes.POINTER(_PurifyCvResult)]),
        "lm_plan_purify_layer_keep": (ctypes.c_int, [P, ctypes.c_char_p,
                                                     ctypes.POINTER(ctypes.c_double)]),
        "lm_purify_default_candidates": (ctypes.c_size_t,
                                         [ctypes.POINTER(ctypes.POINTER(ctypes.c_double))]),
        "lm_stats_set_split": (ctypes.c_int, [P, ctypes.POINTER(_StatsSplitOptions)]),
        "lm_stats_heldout": (P, [P]),
        "lm_stats_fold_count": (ctypes.c_size_t, [P]),
        "lm_stats_fold_at": (P, [P, ctypes.c_size_t]),
        "lm_strategy_count": (ctypes.c_size_t, [P]),
        "lm_strategy_at": (ctypes.POINTER(_StrategyVtable),
                           [P, ctypes.c_size_t]),
        "lm_stats_create": (ctypes.c_int, [P, ctypes.POINTER(P)]),
        "lm_tensor_data": (P, [P]),
        "lm_plan_set_nonfinite": (ctypes.c_int, [P, ctypes.c_int]),
        "lm_plan_set_rows_policy": (ctypes.c_int, [P, ctypes.c_int]),
        "lm_plan_set_transposed": (ctypes.c_int, [P, ctypes.c_char_p]),
        "lm_plan_set_subspace": (ctypes.c_int, [P, ctypes.c_int, ctypes.c_char_p,
                                                ctypes.c_size_t, P]),
        "lm_plan_subspace_count": (ctypes.c_size_t, [P]),
        "lm_plan_subspace_at": (ctypes.c_int, [P, ctypes.c_size_t,
                                               ctypes.POINTER(ctypes.c_int),
                                               ctypes.POINTER(ctypes.c_char_p),
                                               ctypes.POINTER(ctypes.c_size_t),
                                               ctypes.POINTER(P)]),
        "lm_plan_subspace_find": (ctypes.c_int, [P, ctypes.c_int, ctypes.c_char_p,
                                                 ctypes.c_size_t, ctypes.POINTER(P)]),
        "lm_lora_create": (ctypes.c_int, [P, ctypes.POINTER(P)]),
        "lm_lora_destroy": (None, [P]),
        "lm_lora_add": (ctypes.c_int, [P, ctypes.c_char_p, P, P, ctypes.c_double]),
        "lm_lora_count": (ctypes.c_size_t, [P]),
        "lm_lora_at": (ctypes.c_int, [P, ctypes.c_size_t, ctypes.POINTER(ctypes.c_char_p),
                                         ctypes.POINTER(P), ctypes.POINTER(P),
                                         ctypes.POINTER(ctypes.c_double)]),
        "lm_peft_read": (ctypes.c_int, [P, ctypes.c_char_p, ctypes.POINTER(P)]),
        "lm_model_open": (ctypes.c_int, [P, ctypes.c_char_p, ctypes.POINTER(P)]),
        "lm_safetensors_write": (ctypes.c_int, [P, P, ctypes.c_char_p, P]),
        "lm_gguf_write": (ctypes.c_int, [P, P, ctypes.c_char_p, P]),
        "lm_npz_write": (ctypes.c_int, [P, P, ctypes.c_char_p, P]),
        "lm_nsc_create": (ctypes.c_int, [P, ctypes.POINTER(P), ctypes.c_size_t,
                                         ctypes.POINTER(_NscOptions), ctypes.POINTER(P)]),
        "lm_nsc_destroy": (None, [P]),
        "lm_nsc_task_count": (ctypes.c_size_t, [P]),
        "lm_nsc_module_count": (ctypes.c_size_t, [P]),
        "lm_nsc_module_at": (ctypes.c_char_p, [P, ctypes.c_size_t, I64P, I64P]),
        "lm_nsc_get_lambdas": (ctypes.c_int, [P, ctypes.c_size_t, ctypes.POINTER(ctypes.c_double)]),
        "lm_nsc_set_lambdas": (ctypes.c_int, [P, ctypes.c_size_t, ctypes.POINTER(ctypes.c_double)]),
        "lm_nsc_ratio": (ctypes.c_int, [P, ctypes.c_size_t, ctypes.c_size_t, P, ctypes.c_size_t,
                                        ctypes.c_size_t, ctypes.POINTER(ctypes.c_double), P,
                                        ctypes.c_double]),
        "lm_nsc_materialize": (ctypes.c_int, [P, ctypes.c_size_t, P, P]),
        "lm_nsc_accumulate": (ctypes.c_int, [P, ctypes.c_size_t, P, ctypes.POINTER(ctypes.c_double)]),
        "lm_nsc_step": (ctypes.c_int, [P]),
        "lm_nsc_set_frozen": (ctypes.c_int, [P, ctypes.c_size_t, ctypes.c_int]),
        "lm_nsc_observe": (ctypes.c_int, [P, ctypes.c_size_t, ctypes.c_size_t, P, ctypes.c_size_t,
                                          ctypes.c_size_t]),
        "lm_nsc_spsa": (ctypes.c_int, [P, ctypes.POINTER(_NscSpsaOptions), NSC_EVAL_FN, P,
                                       ctypes.POINTER(ctypes.c_double),
                                       ctypes.POINTER(ctypes.c_double),
                                       ctypes.POINTER(ctypes.c_double)]),
        "lm_nsc_save_coefficients": (ctypes.c_int, [P, ctypes.c_char_p,
                                                    ctypes.POINTER(ctypes.c_char_p)]),
        "lm_nsc_load_coefficients": (ctypes.c_int, [P, ctypes.c_char_p]),
        "lm_plan_add_lora": (ctypes.c_int, [P, P, ctypes.c_double]),
        "lm_plan_set_nsc_forward": (ctypes.c_int, [P, NSC_EVAL_FN, P,
                                                   ctypes.POINTER(_NscOptions),
                                                   ctypes.POINTER(_NscSpsaOptions)]),
        "lm_plan_nsc": (P, [P]),
        "lm_stats_destroy": (None, [P]),
        "lm_stats_observe": (ctypes.c_int, [P, ctypes.c_size_t,
                                            ctypes.c_char_p, P,
                                            ctypes.c_size_t, ctypes.c_size_t]),
        "lm_stats_observe_folds": (ctypes.c_int, [ctypes.POINTER(P), ctypes.c_size_t,
                                                  ctypes.c_size_t, ctypes.c_char_p, P,
                                                  ctypes.c_size_t, ctypes.c_size_t]),
        "lm_stats_find": (ctypes.c_int, [P, ctypes.c_size_t, ctypes.c_char_p,
                                        ctypes.POINTER(
                                            ctypes.POINTER(ctypes.c_double)),
                                        ctypes.POINTER(ctypes.c_size_t),
                                        ctypes.POINTER(ctypes.c_uint64)]),
        "lm_stats_count": (ctypes.c_size_t, [P]),
        "lm_stats_at": (ctypes.c_int, [P, ctypes.c_size_t,
                                        ctypes.POINTER(ctypes.c_size_t),
                                        ctypes.POINTER(ctypes.c_char_p)]),
        "lm_stats_merge": (ctypes.c_int, [P, P]),
        "lm_stats_save": (ctypes.c_int, [P, ctypes.c_char_p]),
        "lm_stats_load": (ctypes.c_int, [P, ctypes.c_char_p,
                                         ctypes.POINTER(P)]),
        # context: errors and utilities for Python strategies
        "lm_context_threads": (ctypes.c_int, [P]),
        "lm_context_seed": (ctypes.c_uint64, [P]),
        "lm_context_error_status": (ctypes.c_int, [P]),
        "lm_context_copy_error": (ctypes.c_size_t, [P, ctypes.c_char_p, ctypes.c_size_t]),
        "lm_context_clear_error": (None, [P]),
        # variadic: called with the format "%s" and one bytes argument
        "lm_context_set_error": (ctypes.c_int, [P, ctypes.c_int, ctypes.c_char_p]),
        "lm_log": (None, [P, ctypes.c_int, ctypes.c_char_p]),
        # dtypes and tensors
        "lm_dtype_size": (ctypes.c_size_t, [ctypes.c_int]),
        "lm_dtype_name": (ctypes.c_char_p, [ctypes.c_int]),
        "lm_dtype_parse": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)]),
        "lm_tensor_create": (ctypes.c_int, [P, ctypes.c_int, ctypes.c_int, I64P,
                                            ctypes.POINTER(P)]),
        "lm_tensor_dim": (ctypes.c_int64, [P, ctypes.c_int]),
        "lm_tensor_numel": (ctypes.c_size_t, [P]),
        # models: lookup, lazy tensors, metadata, files
        "lm_model_find": (ctypes.c_int, [P, ctypes.c_char_p, ctypes.POINTER(P)]),
        "lm_model_add_lazy": (ctypes.c_int, [P, ctypes.c_char_p, ctypes.c_int, ctypes.c_int,
                                             I64P, TENSOR_READ_FN, P]),
        "lm_model_metadata_count": (ctypes.c_size_t, [P]),
        "lm_model_metadata_at": (ctypes.c_int, [P, ctypes.c_size_t,
                                                ctypes.POINTER(ctypes.c_char_p),
                                                ctypes.POINTER(ctypes.c_char_p)]),
        "lm_model_metadata_find": (ctypes.c_int, [P, ctypes.c_char_p,
                                                  ctypes.POINTER(ctypes.c_char_p)]),
        "lm_model_save": (ctypes.c_int, [P, P, ctypes.c_char_p, ctypes.c_uint]),
        "lm_safetensors_read": (ctypes.c_int, [P, ctypes.c_char_p, ctypes.POINTER(P)]),
        "lm_gguf_read": (ctypes.c_int, [P, ctypes.c_char_p, ctypes.POINTER(P)]),
        "lm_npz_read": (ctypes.c_int, [P, ctypes.c_char_p, ctypes.POINTER(P)]),
        "lm_gguf_tensor_type": (ctypes.c_char_p, [P, ctypes.c_char_p]),
        "lm_input_open": (ctypes.c_int, [P, ctypes.c_char_p, ctypes.POINTER(P),
                                         ctypes.POINTER(P)]),
        "lm_lora_open": (ctypes.c_int, [P, ctypes.c_char_p, ctypes.POINTER(P)]),
        "lm_gguf_read_lora": (ctypes.c_int, [P, ctypes.c_char_p, ctypes.POINTER(P)]),
        # task vectors and LoRA adapters
        "lm_task_vector_count": (ctypes.c_size_t, [P]),
        "lm_task_vector_name_at": (ctypes.c_char_p, [P, ctypes.c_size_t]),
        "lm_task_vector_find": (ctypes.c_int, [P, ctypes.c_char_p, ctypes.POINTER(P)]),
        "lm_task_vector_scale": (ctypes.c_int, [P, ctypes.c_double]),
        "lm_task_vector_from_lora": (ctypes.c_int, [P, P, P, ctypes.POINTER(P)]),
        "lm_lora_find": (ctypes.c_int, [P, ctypes.c_char_p, ctypes.POINTER(P),
                                        ctypes.POINTER(P), ctypes.POINTER(ctypes.c_double)]),
        "lm_lora_set_transposed": (ctypes.c_int, [P, ctypes.c_char_p, ctypes.c_int]),
        "lm_lora_is_transposed": (ctypes.c_int, [P, ctypes.c_char_p]),
        # plans
        "lm_plan_strategy": (ctypes.c_char_p, [P]),
        "lm_plan_model_count": (ctypes.c_size_t, [P]),
        "lm_plan_tie": (ctypes.c_int, [P, ctypes.c_char_p, ctypes.c_char_p]),
        "lm_plan_set_output_dtype": (ctypes.c_int, [P, ctypes.c_int]),
        "lm_plan_set_progress": (ctypes.c_int, [P, PROGRESS_FN, P]),
        "lm_plan_execute_to": (ctypes.c_int, [P, P]),
        # projectors
        "lm_projector_from_tensor": (ctypes.c_int, [P, P, ctypes.c_int, ctypes.c_size_t,
                                                    ctypes.c_double, ctypes.POINTER(P)]),
        "lm_projector_from_stats": (ctypes.c_int, [P, P, ctypes.c_size_t, ctypes.c_char_p,
                                                   ctypes.c_size_t, ctypes.c_double,
                                                   ctypes.POINTER(P)]),
        "lm_projector_destroy": (None, [P]),
        "lm_projector_dim": (ctypes.c_size_t, [P]),
        "lm_projector_rank": (ctypes.c_size_t, [P]),
        "lm_projector_energy": (ctypes.c_double, [P]),
        "lm_projector_basis": (ctypes.POINTER(ctypes.c_double), [P]),
        "lm_projector_values": (ctypes.POINTER(ctypes.c_double), [P]),
        "lm_projector_project": (ctypes.c_int, [P, P, ctypes.c_size_t, P]),
        "lm_projector_complement": (ctypes.c_int, [P, P, ctypes.c_size_t, P]),
        "lm_plan_add_projection": (ctypes.c_int, [P, ctypes.c_char_p, ctypes.c_size_t, P,
                                                  ctypes.c_int, ctypes.c_int]),
        # statistics
        "lm_stats_observe_tensor": (ctypes.c_int, [P, ctypes.c_size_t, ctypes.c_char_p, P]),
        "lm_stats_add_gram": (ctypes.c_int, [P, ctypes.c_size_t, ctypes.c_char_p,
                                             ctypes.POINTER(ctypes.c_double), ctypes.c_size_t,
                                             ctypes.c_uint64]),
        # strategies
        "lm_register_strategy": (ctypes.c_int, [P, ctypes.POINTER(_FullStrategyVtable)]),
        "lm_strategy_find": (ctypes.c_int, [P, ctypes.c_char_p,
                                            ctypes.POINTER(ctypes.POINTER(_StrategyVtable))]),
        "lm_params_get_float": (ctypes.c_int, [P, ctypes.c_char_p,
                                               ctypes.POINTER(ctypes.c_double)]),
        "lm_params_get_int": (ctypes.c_int, [P, ctypes.c_char_p,
                                             ctypes.POINTER(ctypes.c_int64)]),
        "lm_params_get_bool": (ctypes.c_int, [P, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)]),
        "lm_params_get_choice": (ctypes.c_int, [P, ctypes.c_char_p,
                                                ctypes.POINTER(ctypes.c_char_p)]),
        "lm_params_get_string": (ctypes.c_int, [P, ctypes.c_char_p,
                                                ctypes.POINTER(ctypes.c_char_p)]),
        "lm_params_is_set": (ctypes.c_int, [P, ctypes.c_char_p]),
        "lm_params_get_model_float": (ctypes.c_int, [P, ctypes.c_char_p, ctypes.c_size_t,
                                                     ctypes.POINTER(ctypes.c_double)]),
        # load-time mergers
        "lm_merger_create": (ctypes.c_int, [P, ctypes.POINTER(P)]),
        "lm_merger_destroy": (None, [P]),
        "lm_merger_touches": (ctypes.c_int, [P, ctypes.c_char_p]),
        "lm_merger_apply": (ctypes.c_int, [P, ctypes.c_char_p, P]),
        "lm_merger_apply_to": (ctypes.c_int, [P, ctypes.c_char_p, P, P]),
        # sinks and output directories
        "lm_safetensors_sink_create": (ctypes.c_int, [P, ctypes.c_char_p,
                                                      ctypes.POINTER(_SafetensorsSinkOptions),
                                                      ctypes.POINTER(P)]),
        "lm_gguf_sink_create": (ctypes.c_int, [P, ctypes.c_char_p,
                                               ctypes.POINTER(_GgufOptions),
                                               ctypes.POINTER(P)]),
        "lm_file_sink_create_for": (ctypes.c_int, [P, ctypes.c_char_p, P,
                                                   ctypes.POINTER(_SafetensorsSinkOptions),
                                                   ctypes.POINTER(P)]),
        "lm_file_sink_vtable": (P, [P]),
        "lm_file_sink_file_count": (ctypes.c_size_t, [P]),
        "lm_file_sink_file_at": (ctypes.c_char_p, [P, ctypes.c_size_t]),
        "lm_file_sink_destroy": (None, [P]),
        "lm_output_dir_begin": (ctypes.c_int, [P, ctypes.c_char_p,
                                               ctypes.POINTER(_OutputDirOptions),
                                               ctypes.POINTER(P)]),
        "lm_output_dir_path": (ctypes.c_char_p, [P]),
        "lm_output_dir_commit": (ctypes.c_int, [P]),
        "lm_output_dir_destroy": (None, [P]),
        "lm_nsc_module_find": (ctypes.c_int, [P, ctypes.c_char_p,
                                              ctypes.POINTER(ctypes.c_size_t)]),
    }
    for name, struct in OPTIONS_INIT.items():
        sigs[name] = (None, [ctypes.POINTER(struct)])
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
