"""Small torch models whose state_dict names, shapes and orientations are
those of the Hugging Face classes (written from the transformers model
files' parameter layout and the public config.json keys, not from
libmerge): LlamaForCausalLM (also Mistral), Qwen2ForCausalLM (q/k/v
biases), GemmaForCausalLM (tied head, RMSNorm scaled by 1 + w, embeddings
scaled by sqrt(hidden), head_dim != hidden / heads), GPT2LMHeadModel
(Conv1D weights stored [in, out], tied head), Phi3ForCausalLM (fused
qkv_proj and gate_up_proj) and ViTForImageClassification.

`build(config)` returns the module for a config.json dict; loading a
checkpoint with `load_state_dict(strict=True)` fails on any missing,
extra or misshapen tensor, and the forward uses every weight in its real
orientation, so a square weight written transposed or a head that is no
longer the embedding changes the output. Rotary embeddings follow HF's
rotate_half convention; attention is causal for the language models."""
import math

import torch
from torch import nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim, eps, offset=0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps, self.offset = eps, offset  # Gemma stores w and scales by 1 + w

    def forward(self, x):
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return y * (self.offset + self.weight)


def rotary(x, theta):
    """x: (batch, heads, seq, head_dim); HF's rotate_half layout."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=x.dtype) / d)
    ang = torch.arange(x.shape[-2], dtype=x.dtype)[:, None] * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1)
    sin = torch.cat([ang.sin(), ang.sin()], -1)
    rot = torch.cat([-x[..., d // 2:], x[..., :d // 2]], -1)
    return x * cos + rot * sin


def attend(q, k, v, causal):
    """q: (b, h, s, d); k, v: (b, kv, s, d) repeated to h heads (GQA)."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        s = q.shape[-2]
        mask = torch.ones(s, s, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return scores.softmax(-1) @ v


class DecoderAttention(nn.Module):
    def __init__(self, c, fused):
        super().__init__()
        h, nh = c["hidden_size"], c["num_attention_heads"]
        nkv = c.get("num_key_value_heads", nh)
        hd = c.get("head_dim", h // nh)
        self.nh, self.nkv, self.hd, self.theta = nh, nkv, hd, c["rope_theta"]
        self.fused = fused
        if fused:  # Phi-3: rows [q; k; v]
            self.qkv_proj = nn.Linear(h, (nh + 2 * nkv) * hd, bias=False)
        else:
            bias = c.get("model_type") == "qwen2"
            self.q_proj = nn.Linear(h, nh * hd, bias=bias)
            self.k_proj = nn.Linear(h, nkv * hd, bias=bias)
            self.v_proj = nn.Linear(h, nkv * hd, bias=bias)
        self.o_proj = nn.Linear(nh * hd, h, bias=False)

    def forward(self, x):
        b, s, _ = x.shape
        if self.fused:
            q, k, v = self.qkv_proj(x).split(
                [self.nh * self.hd, self.nkv * self.hd, self.nkv * self.hd], -1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(b, s, self.nh, self.hd).transpose(1, 2)
        k = k.view(b, s, self.nkv, self.hd).transpose(1, 2)
        v = v.view(b, s, self.nkv, self.hd).transpose(1, 2)
        q, k = rotary(q, self.theta), rotary(k, self.theta)
        o = attend(q, k, v, True).transpose(1, 2).reshape(b, s, self.nh * self.hd)
        return self.o_proj(o)


class GatedMLP(nn.Module):
    def __init__(self, c, fused):
        super().__init__()
        h, i = c["hidden_size"], c["intermediate_size"]
        self.fused = fused
        if fused:  # Phi-3: rows [gate; up]
            self.gate_up_proj = nn.Linear(h, 2 * i, bias=False)
        else:
            self.gate_proj = nn.Linear(h, i, bias=False)
            self.up_proj = nn.Linear(h, i, bias=False)
        self.down_proj = nn.Linear(i, h, bias=False)
        act = c.get("hidden_activation") or c.get("hidden_act")
        self.act = (lambda t: F.gelu(t, approximate="tanh")) if act.startswith("gelu") else F.silu

    def forward(self, x):
        if self.fused:
            g, u = self.gate_up_proj(x).chunk(2, -1)
        else:
            g, u = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(self.act(g) * u)


class DecoderLayer(nn.Module):
    def __init__(self, c, fused, offset):
        super().__init__()
        eps = c["rms_norm_eps"]
        self.self_attn = DecoderAttention(c, fused)
        self.mlp = GatedMLP(c, fused)
        self.input_layernorm = RMSNorm(c["hidden_size"], eps, offset)
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], eps, offset)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderBody(nn.Module):
    def __init__(self, c, fused, offset):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(DecoderLayer(c, fused, offset)
                                    for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"], offset)
        self.scale = math.sqrt(c["hidden_size"]) if c["model_type"] == "gemma" else 1.0

    def forward(self, ids):
        x = self.embed_tokens(ids) * self.scale
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class DecoderForCausalLM(nn.Module):
    """Llama, Mistral, Qwen2, Gemma, Phi-3: model.* plus lm_head unless tied."""

    def __init__(self, c):
        super().__init__()
        fused = c["model_type"] == "phi3"
        offset = 1.0 if c["model_type"] == "gemma" else 0.0
        self.model = DecoderBody(c, fused, offset)
        self.tied = c["tie_word_embeddings"]
        if not self.tied:
            self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)

    def head_weight(self):
        return self.model.embed_tokens.weight if self.tied else self.lm_head.weight

    def forward(self, ids):
        h = self.model(ids)
        return F.linear(h, self.model.embed_tokens.weight) if self.tied else self.lm_head(h)


class Conv1D(nn.Module):
    """GPT-2's layer: weight stored [in, out], y = x W + b."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x):
        return x @ self.weight + self.bias


class GPT2Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        h = c["n_embd"]
        self.nh = c["n_head"]
        self.c_attn = Conv1D(h, 3 * h)
        self.c_proj = Conv1D(h, h)

    def forward(self, x):
        b, s, h = x.shape
        q, k, v = (t.view(b, s, self.nh, h // self.nh).transpose(1, 2)
                   for t in self.c_attn(x).split(h, -1))
        return self.c_proj(attend(q, k, v, True).transpose(1, 2).reshape(b, s, h))


class GPT2MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        h = c["n_embd"]
        self.c_fc = Conv1D(h, c["n_inner"] or 4 * h)
        self.c_proj = Conv1D(c["n_inner"] or 4 * h, h)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class GPT2Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        h, eps = c["n_embd"], c["layer_norm_epsilon"]
        self.ln_1, self.attn = nn.LayerNorm(h, eps), GPT2Attention(c)
        self.ln_2, self.mlp = nn.LayerNorm(h, eps), GPT2MLP(c)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2Body(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.wte = nn.Embedding(c["vocab_size"], c["n_embd"])
        self.wpe = nn.Embedding(c["n_positions"], c["n_embd"])
        self.h = nn.ModuleList(GPT2Block(c) for _ in range(c["n_layer"]))
        self.ln_f = nn.LayerNorm(c["n_embd"], c["layer_norm_epsilon"])

    def forward(self, ids):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for block in self.h:
            x = block(x)
        return self.ln_f(x)


class GPT2LMHeadModel(nn.Module):
    """transformer.*; lm_head is wte (save_pretrained drops it)."""

    def __init__(self, c):
        super().__init__()
        self.transformer = GPT2Body(c)

    def head_weight(self):
        return self.transformer.wte.weight

    def forward(self, ids):
        return F.linear(self.transformer(ids), self.transformer.wte.weight)


class ViTSelfAttention(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)


class ViTAttention(nn.Module):
    def __init__(self, h, nh):
        super().__init__()
        self.nh = nh
        self.attention = ViTSelfAttention(h)
        self.output = nn.Module()
        self.output.dense = nn.Linear(h, h)

    def forward(self, x):
        b, s, h = x.shape
        a = self.attention
        q, k, v = (t.view(b, s, self.nh, h // self.nh).transpose(1, 2)
                   for t in (a.query(x), a.key(x), a.value(x)))
        return self.output.dense(attend(q, k, v, False).transpose(1, 2).reshape(b, s, h))


class ViTLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        h, eps = c["hidden_size"], c["layer_norm_eps"]
        self.attention = ViTAttention(h, c["num_attention_heads"])
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(h, c["intermediate_size"])
        self.output = nn.Module()
        self.output.dense = nn.Linear(c["intermediate_size"], h)
        self.layernorm_before = nn.LayerNorm(h, eps)
        self.layernorm_after = nn.LayerNorm(h, eps)

    def forward(self, x):
        x = x + self.attention(self.layernorm_before(x))
        return x + self.output.dense(F.gelu(self.intermediate.dense(self.layernorm_after(x))))


class ViTEmbeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        h, p = c["hidden_size"], c["patch_size"]
        n = (c["image_size"] // p) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, h))
        self.position_embeddings = nn.Parameter(torch.zeros(1, n + 1, h))
        self.patch_embeddings = nn.Module()
        self.patch_embeddings.projection = nn.Conv2d(c["num_channels"], h, p, p)

    def forward(self, img):
        x = self.patch_embeddings.projection(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)
        return x + self.position_embeddings


class ViTModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embeddings = ViTEmbeddings(c)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(ViTLayer(c) for _ in range(c["num_hidden_layers"]))
        self.layernorm = nn.LayerNorm(c["hidden_size"], c["layer_norm_eps"])

    def forward(self, img):
        x = self.embeddings(img)
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x)


class ViTForImageClassification(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.vit = ViTModel(c)
        self.classifier = nn.Linear(c["hidden_size"], len(c["id2label"]))

    def forward(self, img):
        return self.classifier(self.vit(img)[:, 0])


def build(config):
    t = config["model_type"]
    if t == "gpt2":
        return GPT2LMHeadModel(config)
    if t == "vit":
        return ViTForImageClassification(config)
    return DecoderForCausalLM(config)


def load(config, tensors, dtype=torch.float64):
    """The module for `config` holding `tensors` ({name: float array}),
    strictly: every name and shape must be the module's."""
    m = build(config).to(dtype)
    m.load_state_dict({k: torch.as_tensor(v, dtype=dtype) for k, v in tensors.items()},
                      strict=True)
    return m.eval()


def inputs(config, seed, batch=2, seq=12):
    """Token ids (or images) for one forward pass."""
    g = torch.Generator().manual_seed(seed)
    if config["model_type"] == "vit":
        return torch.randn(batch, config["num_channels"], config["image_size"],
                           config["image_size"], generator=g, dtype=torch.float64)
    return torch.randint(0, config["vocab_size"], (batch, seq), generator=g)
