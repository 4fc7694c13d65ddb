"""An independent evaluator of mergekit configs for Llama-style models, in
numpy, written from mergekit's documented semantics (never from lmerge's C
code): github.com/arcee-ai/mergekit, mergekit/config.py (ParameterSetting,
evaluate_setting, ConfigReader.parameter precedence), mergekit/plan.py
(MergePlanner: `models:` become one slice with the base appended; layer t =
i / (n - 1), 1 for a one-layer slice; pre and post weights at t = 0 with
the first / last slice), mergekit/_data/architectures/llama.json (tensor
names) and the per-method merge functions of mergekit/merge_methods/.

evaluate(config_dict, models) -> {output tensor name: float64 array}, where
models maps each model reference string of the config to a dict of f32
arrays (a MODEL+LORA reference is looked up as written).
"""
import numpy as np

try:  # helper B's references of the geometric methods, when present
    import mergekit_reference_geo as geo
except ImportError:
    geo = None

PRE = ["model.embed_tokens.weight"]
LAYER = ["input_layernorm.weight", "self_attn.q_proj.weight",
         "self_attn.k_proj.weight", "self_attn.v_proj.weight",
         "self_attn.o_proj.weight", "post_attention_layernorm.weight",
         "mlp.up_proj.weight", "mlp.gate_proj.weight", "mlp.down_proj.weight"]
POST = ["model.norm.weight", "lm_head.weight"]


def layer_name(i, suffix):
    return "model.layers.%d.%s" % (i, suffix)


def num_layers(model):
    return 1 + max(int(k.split(".")[2]) for k in model if k.startswith("model.layers."))


def evaluate_setting(tensor_name, setting, t):
    """mergekit/config.py evaluate_setting."""
    if isinstance(setting, (float, int, bool, str)):
        return setting
    if isinstance(setting, list):
        if all(isinstance(e, (int, float)) for e in setting):
            scaled = t * (len(setting) - 1)
            i0 = int(scaled)
            i1 = min(len(setting) - 1, i0 + 1)
            frac = scaled - i0
            return (1 - frac) * setting[i0] + frac * setting[i1]
        if all(isinstance(e, (float, int, bool, str)) for e in setting):
            return setting[int(t * (len(setting) - 1))]
        for cond in setting:
            f = cond.get("filter")
            if f is None or f == "*" or (tensor_name and f in tensor_name):
                return evaluate_setting(tensor_name, cond["value"], t)
        return None
    if isinstance(setting, dict):  # a single conditional
        return evaluate_setting(tensor_name, [setting], t)
    raise ValueError(setting)


def parameter(config, slice_, name, tensor_name, t, model=None):
    """ConfigReader.parameter: slice source (this model) > slice > global."""
    if model is not None:
        for s in slice_["sources"]:
            if s["model"] == model and name in (s.get("parameters") or {}):
                v = evaluate_setting(tensor_name, s["parameters"][name], t)
                if v is not None:
                    return v
    if name in (slice_.get("parameters") or {}):
        v = evaluate_setting(tensor_name, slice_["parameters"][name], t)
        if v is not None:
            return v
    if name in (config.get("parameters") or {}):
        v = evaluate_setting(tensor_name, config["parameters"][name], t)
        if v is not None:
            return v
    return None


def slices_of(config, models):
    """normalize_config: `models:` -> one slice over every layer, the base
    appended when it is not listed."""
    if config.get("slices"):
        return config["slices"]
    sources = []
    base = config.get("base_model")
    for m in config["models"]:
        m = m if isinstance(m, dict) else {"model": m}
        sources.append({"model": m["model"], "parameters": m.get("parameters"),
                        "layer_range": [0, num_layers(models[m["model"]])]})
    if base and base not in [s["model"] for s in sources]:
        sources.append({"model": base, "parameters": None,
                        "layer_range": [0, num_layers(models[base])]})
    return [{"sources": sources, "parameters": None}]


def plan(config, models):
    """Yields (output name, slice, t, [(model, input name)]) as MergePlanner
    orders them: pre weights, every slice's layers, post weights."""
    slices = slices_of(config, models)
    first, last = slices[0], slices[-1]
    for w in PRE:
        yield w, first, 0.0, [(s["model"], w) for s in first["sources"]]
    out_layer = 0
    for sl in slices:
        lo = [s["layer_range"][0] for s in sl["sources"]]
        n = sl["sources"][0]["layer_range"][1] - lo[0]
        for i in range(n):
            t = i / (n - 1) if n > 1 else 1.0
            for suffix in LAYER:
                yield (layer_name(out_layer, suffix), sl, t,
                       [(s["model"], layer_name(lo[k] + i, suffix))
                        for k, s in enumerate(sl["sources"])])
            out_layer += 1
    for w in POST:
        yield w, last, 0.0, [(s["model"], w) for s in last["sources"]]


# --- merge methods (f64) ------------------------------------------------

def gta(method, base, tvs, weights, densities, normalize, lam):
    """mergekit/merge_methods/generalized_task_arithmetic.py with magnitude
    sparsification (mergekit/sparsify.py magnitude: keep the int(density n)
    largest magnitudes; density >= 1 keeps everything) and the sum sign
    consensus for ties."""
    deltas = []
    for tv, d in zip(tvs, densities):
        if method == "ties" and d < 1:
            k = int(d * tv.size)
            keep = np.argsort(-np.abs(tv).ravel(), kind="stable")[:k]
            m = np.zeros(tv.size)
            m[keep] = 1
            tv = tv * m.reshape(tv.shape)
        deltas.append(tv)
    deltas = np.stack(deltas)
    w = np.array(weights, dtype=np.float64).reshape((-1,) + (1,) * base.ndim)
    wd = deltas * w
    if method == "ties":
        majority = np.where(wd.sum(axis=0) >= 0, 1.0, -1.0)
        mask = np.sign(wd) == majority
        mixed = (wd * mask).sum(axis=0)
        div = (w * mask).sum(axis=0)
        div[div == 0] = 1
    else:
        mixed = wd.sum(axis=0)
        div = w.sum(axis=0) * np.ones_like(mixed)
        div[np.abs(div) < 1e-8] = 1
    if normalize:
        mixed = mixed / div
    return base + lam * mixed


GTA_DEFAULTS = {"task_arithmetic": False, "ties": True}


def merge_tensor(config, sl, out_name, t, inputs, models):
    method = config["merge_method"]
    base_ref = config.get("base_model")
    tensors = [(m, models[m][name].astype(np.float64), name) for m, name in inputs]
    if method == "passthrough":
        (m, x, name), = tensors
        scale = parameter(config, sl, "scale", name, t, model=m)
        return x if scale is None else x * scale
    if method == "linear":
        ws = [parameter(config, sl, "weight", name, t, model=m) for m, _, name in tensors]
        res = sum(w * x for w, (_, x, _) in zip(ws, tensors))
        normalize = parameter(config, sl, "normalize", out_name, t)
        return res / sum(ws) if normalize in (None, True) else res
    if method in ("slerp", "arcee_fusion"):
        base = next(x for m, x, _ in tensors if m == base_ref).astype(np.float32)
        other = next(x for m, x, _ in tensors if m != base_ref).astype(np.float32)
        if method == "arcee_fusion":
            return geo.arcee_fusion(base, other).astype(np.float64)
        tv = parameter(config, sl, "t", out_name, t)
        return np.asarray(geo.slerp(tv, base, other), np.float64)
    if method in GTA_DEFAULTS:
        base = next(x for m, x, _ in tensors if m == base_ref)
        tvs, ws, ds = [], [], []
        for m, x, name in tensors:
            if m == base_ref:
                continue
            tvs.append(x - base)
            ws.append(parameter(config, sl, "weight", name, t, model=m))
            d = parameter(config, sl, "density", name, t, model=m)
            ds.append(1.0 if d is None else d)
        normalize = parameter(config, sl, "normalize", out_name, t)
        if normalize is None:
            normalize = GTA_DEFAULTS[method]
        lam = parameter(config, sl, "lambda", out_name, t)
        return gta(method, base, tvs, ws, ds, normalize, 1.0 if lam is None else lam)
    raise NotImplementedError(method)


def evaluate(config, models):
    return {name: merge_tensor(config, sl, name, t, inputs, models)
            for name, sl, t, inputs in plan(config, models)}


# --- scaled-down Llama-style models -------------------------------------

def llama(rng, n_layers, hidden=8, inter=12, vocab=16, like=None, noise=0.1):
    """A model with llama.json's tensor names; `like` gives a fine-tune of
    it (like + noise)."""
    if like is not None:
        return {k: (v + noise * rng.standard_normal(v.shape)).astype(np.float32)
                for k, v in like.items()}
    shapes = {"model.embed_tokens.weight": (vocab, hidden),
              "model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    per_layer = {"input_layernorm.weight": (hidden,),
                 "self_attn.q_proj.weight": (hidden, hidden),
                 "self_attn.k_proj.weight": (hidden, hidden),
                 "self_attn.v_proj.weight": (hidden, hidden),
                 "self_attn.o_proj.weight": (hidden, hidden),
                 "post_attention_layernorm.weight": (hidden,),
                 "mlp.up_proj.weight": (inter, hidden),
                 "mlp.gate_proj.weight": (inter, hidden),
                 "mlp.down_proj.weight": (hidden, inter)}
    for i in range(n_layers):
        for s, shp in per_layer.items():
            shapes[layer_name(i, s)] = shp
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def llama_config(n_layers, hidden=8, inter=12, vocab=16):
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": hidden, "intermediate_size": inter,
            "num_hidden_layers": n_layers, "num_attention_heads": 2,
            "num_key_value_heads": 2, "vocab_size": vocab,
            "rms_norm_eps": 1e-05, "torch_dtype": "float32",
            "tie_word_embeddings": False}
