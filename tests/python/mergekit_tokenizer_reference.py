"""An independent numpy reference of mergekit's tokenizer merging, written
from mergekit's README ("Tokenizer Configuration") and its sources
mergekit/tokenizer/build.py, embed.py and mergekit/merge.py
(github.com/arcee-ai/mergekit); it does not import libmerge.

Where mergekit's order is arbitrary (it walks a Python set of models and
transformers' get_vocab() dictionaries, whose order follows a Rust hash
map), this reference fixes one: models in config order (base first), each
model's tokens in id order. Only the ids of tokens new to the base depend
on that choice; every token's embedding rows do not.
"""
import json
import os

import numpy as np


def read_tokenizer(model_dir):
    """(vocab {token: id} as transformers' get_vocab(), added-token entries
    sorted by id, config.json vocab_size or None) of a model directory."""
    with open(os.path.join(model_dir, "tokenizer.json")) as f:
        tok = json.load(f)
    model = tok["model"]
    if isinstance(model["vocab"], list):  # Unigram: [[piece, score], ...]
        vocab = {piece: i for i, (piece, _score) in enumerate(model["vocab"])}
    else:
        vocab = dict(model["vocab"])
    added = sorted(tok.get("added_tokens") or [], key=lambda e: e["id"])
    for e in added:
        vocab[e["content"]] = e["id"]
    vocab_size = None
    cfg = os.path.join(model_dir, "config.json")
    if os.path.exists(cfg):
        with open(cfg) as f:
            vocab_size = json.load(f).get("vocab_size")
    return vocab, added, vocab_size


def usable(vocab, vocab_size):
    """Tokens a model can use: ids below its vocab_size (build.py skips and
    strips the others)."""
    limit = len(vocab) if vocab_size is None else vocab_size
    return {t: i for t, i in vocab.items() if i < limit}


def output_vocab(source, base, models, extra_tokens=()):
    """The merged vocabulary as a list of tokens by id.
    base / models: (name, vocab, added, vocab_size); source: "base",
    "union" or a model name. Follows build_tokenizer / build_union_tokenizer:
    union = stripped base, then the models' plain tokens missing from it,
    then their added tokens missing from it; then tokenizer.tokens keys."""
    base_vocab = usable(base[1], base[3])
    if source in ("base", "union"):
        out = [t for t, _ in sorted(base_vocab.items(), key=lambda kv: kv[1])]
    else:
        src = next(m for m in [base] + list(models) if m[0] == source)
        out = [t for t, _ in sorted(src[1].items(), key=lambda kv: kv[1])]
    if source == "union":
        everyone = [base] + [m for m in models if m[0] != base[0]]
        added_first = {}
        for _name, vocab, added, vs in everyone:
            use = usable(vocab, vs)
            for e in added:
                if e["content"] in use and e["content"] not in added_first:
                    added_first[e["content"]] = e
        present = set(out)
        for _name, vocab, _added, vs in everyone:
            for t, _ in sorted(usable(vocab, vs).items(), key=lambda kv: kv[1]):
                if t not in present and t not in added_first:
                    out.append(t)
                    present.add(t)
        for t in added_first:
            if t not in present:
                out.append(t)
                present.add(t)
    for t in extra_tokens:
        if t not in out:
            out.append(t)
    return out


def permutation(out_tokens, vocab, vocab_size):
    """Output id -> the model's row, -1 where the model lacks the token."""
    use = usable(vocab, vocab_size)
    return np.array([use.get(t, -1) for t in out_tokens], dtype=np.int64)


def remap(out_tokens, mats, perms, base_name, token_cfgs=None,
          original_vocabs=None, pad_to_multiple_of=None):
    """PermutedEmbeddings.execute: mats / perms are {model: matrix} and
    {model: permutation} in config order (base first); base_name None: a
    config without base_model (the base-row rule is skipped). token_cfgs:
    {token: {"source": model | ("model_token", model, token_or_id) |
    ("zero",), "force": bool}}. Returns {model: remapped matrix} (f32,
    sums in f32 in model order as torch does in the merge dtype)."""
    token_cfgs = dict(token_cfgs or {})
    names = list(mats)
    n = len(out_tokens)
    rows = n
    if pad_to_multiple_of and n % pad_to_multiple_of:
        rows = (n // pad_to_multiple_of + 1) * pad_to_multiple_of
    width = mats[names[0]].shape[1]

    def default(i, tok):
        cfg = token_cfgs.get(tok)
        if cfg is not None:
            src = cfg["source"]
            if isinstance(src, tuple) and src[0] == "zero":
                return np.zeros(width, np.float32)
            if isinstance(src, tuple) and src[0] == "model_token":
                _, model, which = src
                row = which if isinstance(which, int) else original_vocabs[model][which]
                return mats[model][row]
            assert perms[src][i] >= 0
            return mats[src][perms[src][i]]
        have = [m for m in names if perms[m][i] >= 0]
        if len(have) == 1:
            return mats[have[0]][perms[have[0]][i]]
        if not have:
            return np.zeros(width, np.float32)
        if base_name is not None and perms[base_name][i] >= 0:
            return mats[base_name][perms[base_name][i]]
        acc = np.zeros(width, np.float32)
        for m in have:
            acc = (acc + mats[m][perms[m][i]]).astype(np.float32)
        return (acc / np.float32(len(have))).astype(np.float32)

    out = {}
    for m in names:
        new = np.zeros((rows, width), np.float32)
        for i, tok in enumerate(out_tokens):
            force = token_cfgs.get(tok, {}).get("force", False)
            if perms[m][i] >= 0 and not force:
                new[i] = mats[m][perms[m][i]]
            else:
                new[i] = default(i, tok)
        if rows > n:
            new[n:] = new[:n].astype(np.float64).mean(axis=0).astype(np.float32)
        out[m] = new
    return out
