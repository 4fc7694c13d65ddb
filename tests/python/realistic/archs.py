"""Scaled-down checkpoints of real architectures: config.json as the
published models have it (keys, model_type, architectures, tie flag,
dtype), sizes shrunk (hidden 32, 2 layers, vocabulary 512), and the tensor
names and layouts the Hugging Face classes save (forward.py builds them).

`write_family(root, arch)` writes a base and three fine-tunes (base plus a
low-rank-plus-noise delta per matrix, as fine-tuning leaves) as
safetensors directories with their config.json; Llama's base is sharded
with model.safetensors.index.json, Mistral's files are bf16 (its
published dtype), the others f32."""
import json
import os

import numpy as np
import torch

import st_format
from realistic import forward

V, H, L = 512, 32, 2
FINETUNES = 3


def _decoder(model_type, arch, **kw):
    c = {"architectures": [arch], "model_type": model_type, "hidden_size": H,
         "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": L,
         "num_key_value_heads": 2, "vocab_size": V, "rms_norm_eps": 1e-5,
         "rope_theta": 10000.0, "max_position_embeddings": 128, "hidden_act": "silu",
         "tie_word_embeddings": False, "torch_dtype": "float32",
         "bos_token_id": 1, "eos_token_id": 2, "attention_dropout": 0.0,
         "initializer_range": 0.02, "use_cache": True, "transformers_version": "4.44.0"}
    c.update(kw)
    return c


CONFIGS = {
    # Meta-Llama-3-8B: GQA, rope_theta 500000, untied head, bf16 on the Hub
    "llama3": _decoder("llama", "LlamaForCausalLM", rope_theta=500000.0,
                       bos_token_id=128000, eos_token_id=128001, pretraining_tp=1,
                       attention_bias=False, mlp_bias=False, rope_scaling=None),
    # Mistral-7B-v0.1: sliding window, untied, bf16 files
    "mistral": _decoder("mistral", "MistralForCausalLM", sliding_window=4096,
                        torch_dtype="bfloat16"),
    # Qwen2-0.5B: q/k/v biases, tied embeddings (no lm_head.weight stored)
    "qwen2": _decoder("qwen2", "Qwen2ForCausalLM", tie_word_embeddings=True,
                      rms_norm_eps=1e-6, rope_theta=1000000.0, use_sliding_window=False,
                      sliding_window=131072, max_window_layers=24,
                      bos_token_id=151643, eos_token_id=151643),
    # gemma-2b: multi-query attention, head_dim 16 != 32 / 4, GELU-tanh,
    # RMSNorm (1 + w), embeddings scaled by sqrt(hidden), tied
    "gemma": _decoder("gemma", "GemmaForCausalLM", num_key_value_heads=1, head_dim=16,
                      hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
                      tie_word_embeddings=True, rms_norm_eps=1e-6, pad_token_id=0),
    # Phi-3-mini-4k-instruct: fused qkv_proj and gate_up_proj, untied
    "phi3": _decoder("phi3", "Phi3ForCausalLM", num_key_value_heads=4,
                     original_max_position_embeddings=128, rope_scaling=None,
                     sliding_window=2047, embd_pdrop=0.0, resid_pdrop=0.0),
    # gpt2: Conv1D weights [in, out], head tied to wte
    "gpt2": {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": H,
             "n_head": 4, "n_layer": L, "n_positions": 64, "n_ctx": 64, "n_inner": None,
             "vocab_size": V, "activation_function": "gelu_new",
             "layer_norm_epsilon": 1e-5, "attn_pdrop": 0.1, "embd_pdrop": 0.1,
             "resid_pdrop": 0.1, "bos_token_id": 50256, "eos_token_id": 50256,
             "initializer_range": 0.02, "tie_word_embeddings": True,
             "torch_dtype": "float32"},
    # google/vit-base-patch16-224 shape family, 10 labels
    "vit": {"architectures": ["ViTForImageClassification"], "model_type": "vit",
            "hidden_size": H, "num_hidden_layers": L, "num_attention_heads": 4,
            "intermediate_size": 64, "hidden_act": "gelu", "image_size": 16,
            "patch_size": 4, "num_channels": 3, "layer_norm_eps": 1e-12,
            "qkv_bias": True, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0, "encoder_stride": 4,
            "id2label": {str(i): "LABEL_%d" % i for i in range(10)},
            "label2id": {"LABEL_%d" % i: i for i in range(10)},
            "torch_dtype": "float32"},
}

ARCHS = list(CONFIGS)


def base_state(arch, seed=0):
    """{name: float32 array} of a freshly initialised model, as saved."""
    torch.manual_seed(seed)
    m = forward.build(CONFIGS[arch])
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in m.state_dict().items():
        a = v.detach().numpy().astype(np.float32)
        if a.ndim >= 2 and "norm" not in k:
            a = (0.1 * rng.standard_normal(a.shape)).astype(np.float32)
        else:  # norms, biases: around their usual values, not all equal
            a = (a + 0.05 * rng.standard_normal(a.shape)).astype(np.float32)
        out[k] = a
    return out


def finetune(base, seed, rank=2, scale=0.05):
    """base + a low-rank-plus-noise delta per matrix, small noise elsewhere."""
    rng = np.random.default_rng(1000 + seed)
    out = {}
    for k, a in base.items():
        if a.ndim == 2:
            d = rng.standard_normal((a.shape[0], rank)) @ rng.standard_normal((rank, a.shape[1]))
            d = scale * d / np.sqrt(rank) + 0.2 * scale * rng.standard_normal(a.shape)
        else:
            d = 0.5 * scale * rng.standard_normal(a.shape)
        out[k] = (a + d).astype(np.float32)
    return out


def to_bf16_bits(x):
    """float32 -> bf16 bit patterns, round to nearest even."""
    b = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(h):
    return (h.astype(np.uint32) << 16).view(np.float32)


def header_dtypes(directory):
    """{name: safetensors dtype} over a directory's file or shards."""
    files = [f for f in os.listdir(directory) if f.endswith(".safetensors")]
    out = {}
    for f in files:
        with open(os.path.join(directory, f), "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            h = json.loads(fh.read(n))
        h.pop("__metadata__", None)
        out.update({k: e["dtype"] for k, e in h.items()})
    return out


def read_float(directory):
    """A checkpoint directory's tensors as float32 arrays (bf16 decoded)."""
    dtypes = header_dtypes(directory)
    raw = st_format.read_dir(directory)
    return {k: from_bf16_bits(v) if dtypes[k] == "BF16" else v.astype(np.float32)
            for k, v in raw.items()}


def write_checkpoint(directory, arch, tensors, sharded=False, dtype=None):
    """dtype: "float32" or "bfloat16" (default: the config's torch_dtype,
    which config.json then states)."""
    os.makedirs(directory, exist_ok=True)
    config = dict(CONFIGS[arch], torch_dtype=dtype or CONFIGS[arch]["torch_dtype"])
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    bf16 = config["torch_dtype"] == "bfloat16"
    data = {k: to_bf16_bits(v) if bf16 else v for k, v in tensors.items()}
    names = list(data) if bf16 else ()
    if not sharded:
        st_format.write(os.path.join(directory, "model.safetensors"), data,
                        metadata={"format": "pt"}, bf16=names)
        return
    keys = list(data)
    half = len(keys) // 2
    weight_map, total = {}, 0
    for i, part in enumerate((keys[:half], keys[half:])):
        fname = "model-%05d-of-00002.safetensors" % (i + 1)
        st_format.write(os.path.join(directory, fname), {k: data[k] for k in part},
                        metadata={"format": "pt"}, bf16=[k for k in part if k in names])
        weight_map.update({k: fname for k in part})
        total += sum(data[k].nbytes for k in part)
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def write_family(root, arch):
    """Base and fine-tunes under root/arch/{base,ft0,ft1,ft2}; returns
    (base_dir, [ft_dirs]). Values as stored (bf16-rounded for Mistral)
    are what read_float gives back."""
    base = base_state(arch)
    d = os.path.join(str(root), arch)
    write_checkpoint(os.path.join(d, "base"), arch, base, sharded=(arch == "llama3"))
    fts = []
    for t in range(FINETUNES):
        p = os.path.join(d, "ft%d" % t)
        write_checkpoint(p, arch, finetune(base, t))
        fts.append(p)
    return os.path.join(d, "base"), fts


# LoRA targets per architecture (module names as PEFT lists them) and
# whether the weights are stored [in, out] (PEFT's fan_in_fan_out).
LORA_TARGETS = {"llama3": (["q_proj", "down_proj"], False),
                "gpt2": (["c_attn", "c_proj"], True)}


def write_adapters(root, arch, base, count=2, r=2, alpha=4):
    """PEFT LoRA adapter directories for `base` (adapter_config.json and
    adapter_model.safetensors, names base_model.model.<module>.lora_A/B
    .weight); returns ([dirs], [{weight name: delta}]) with each adapter's
    update in the stored layout: (alpha / r) B A, transposed for
    fan_in_fan_out."""
    targets, fifo = LORA_TARGETS[arch]
    rng = np.random.default_rng(77)
    dirs, deltas = [], []
    for k in range(count):
        tensors, delta = {}, {}
        for name, w in base.items():
            module = name[:-len(".weight")]
            if not name.endswith(".weight") or module.split(".")[-1] not in targets:
                continue
            d_in, d_out = (w.shape[0], w.shape[1]) if fifo else (w.shape[1], w.shape[0])
            a = (0.1 * rng.standard_normal((r, d_in))).astype(np.float32)
            b = (0.1 * rng.standard_normal((d_out, r))).astype(np.float32)
            tensors["base_model.model.%s.lora_A.weight" % module] = a
            tensors["base_model.model.%s.lora_B.weight" % module] = b
            upd = (alpha / r) * (b.astype(np.float64) @ a)
            delta[name] = upd.T if fifo else upd
        p = os.path.join(str(root), "%s_lora%d" % (arch, k))
        os.makedirs(p, exist_ok=True)
        st_format.write(os.path.join(p, "adapter_model.safetensors"), tensors)
        with open(os.path.join(p, "adapter_config.json"), "w") as f:
            json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r,
                       "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none",
                       "fan_in_fan_out": fifo, "target_modules": targets,
                       "base_model_name_or_path": arch}, f)
        dirs.append(p)
        deltas.append(delta)
    return dirs, deltas
