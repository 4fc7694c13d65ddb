"""`lmerge run` with mergekit's tokenizer keys (tokenizer_source, tokenizer:,
chat_template) on generated Llama-style models whose fine-tunes added
tokens, checked against mergekit_tokenizer_reference (numpy, written from
mergekit's documented semantics, not from libmerge).

Embedding values are multiples of 1/16 in [-4, 4), so remapped rows,
means of two rows and task arithmetic with weights 1 and 0.5 are exact in
f32: those rows must match bit for bit (max abs diff 0). Rows averaged over
more models and pad_to_multiple_of rows (a mean of the whole vocabulary)
are checked to 1e-6."""
import json
import os
import subprocess

import numpy as np
import pytest

import mergekit_tokenizer_reference as ref
import st_format

LMERGE = os.environ.get("LIBMERGE_LMERGE")
pytestmark = pytest.mark.skipif(not LMERGE, reason="LIBMERGE_LMERGE is not set "
                                "(meson test sets it to the built lmerge)")
EMB, HEAD = "model.embed_tokens.weight", "lm_head.weight"
WIDTH = 8

LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "e r", "a n", "Ġ a", "o n", "r e",
          "e d", "a t", "e n", "Ġ s"]
# 40 plain tokens: letters, "Ġ", then what the merges make ("Ġs" is id 39).
BASE_VOCAB = LETTERS + ["Ġ"] + [m.replace(" ", "") for m in MERGES]


def added(token_id, content, special=True):
    return {"id": token_id, "content": content, "single_word": False,
            "lstrip": False, "rstrip": False, "normalized": not special,
            "special": special}


def tokenizer_json(vocab, merges, added_tokens):
    """A byte-level BPE tokenizer.json as the tokenizers library writes it."""
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added_tokens, "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False,
                          "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True,
                    "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(vocab)},
                  "merges": merges},
    }


def dyadic(rng, shape):
    return (rng.integers(-64, 64, size=shape) / 16).astype(np.float32)


def write_model(path, vocab, merges, added_tokens, rows, vocab_size, rng,
                tied=False, extra_files=None, bf16=False):
    """A model directory: safetensors weights, config.json, tokenizer files.
    bf16: tensors stored as bf16 (the values are exact in bf16)."""
    path.mkdir()
    tensors = {EMB: dyadic(rng, (rows, WIDTH)),
               "model.layers.0.mlp.up_proj.weight": dyadic(rng, (16, WIDTH)),
               "model.norm.weight": dyadic(rng, (WIDTH,))}
    if not tied:
        tensors[HEAD] = dyadic(rng, (rows, WIDTH))
    if bf16:
        st_format.write(path / "model.safetensors",
                        {k: (v.view(np.uint32) >> 16).astype(np.uint16)
                         for k, v in tensors.items()}, bf16=list(tensors))
    else:
        st_format.write(path / "model.safetensors", tensors)
    (path / "config.json").write_text(json.dumps(
        {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
         "hidden_size": WIDTH, "vocab_size": vocab_size,
         "tie_word_embeddings": tied, "torch_dtype": "float32"}, indent=2))
    (path / "tokenizer.json").write_text(json.dumps(
        tokenizer_json(vocab, merges, added_tokens), indent=2))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
         "model_max_length": 2048,
         "added_tokens_decoder": {str(e["id"]): {k: v for k, v in e.items() if k != "id"}
                                  for e in added_tokens}}, indent=2))
    (path / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": "<|endoftext|>"}))
    for name, text in (extra_files or {}).items():
        (path / name).write_text(text)
    return tensors


def make_models(tmp_path, base_vocab_size=41, base_rows=41, bf16=False):
    """base: 40 plain tokens + <|endoftext|>; A adds the plain token "ll"
    (so its <|endoftext|> moves to 41) and <|im_start|>, <|im_end|>; B adds
    <|tool|> and <|im_start|> at other ids, pads its matrices to 48 rows and
    ties its LM head to the embedding (no lm_head.weight)."""
    rng = np.random.default_rng(22)
    eot = "<|endoftext|>"
    models = {}
    models["base"] = (write_model(tmp_path / "base", BASE_VOCAB, MERGES,
                                  [added(40, eot)], base_rows, base_vocab_size,
                                  rng, extra_files={"vocab.json": "{}",
                                                    "merges.txt": "#\n"}, bf16=bf16),
                      tmp_path / "base")
    models["a"] = (write_model(tmp_path / "a", BASE_VOCAB + ["ll"], MERGES + ["l l"],
                               [added(41, eot), added(42, "<|im_start|>"),
                                added(43, "<|im_end|>")], 44, 44, rng,
                               extra_files={"chat_template.jinja":
                                            "{% for m in messages %}A{{ m.content }}{% endfor %}\n"},
                               bf16=bf16),
                   tmp_path / "a")
    models["b"] = (write_model(tmp_path / "b", BASE_VOCAB, MERGES,
                               [added(40, eot), added(41, "<|tool|>"),
                                added(42, "<|im_start|>")], 48, 48, rng, tied=True,
                               bf16=bf16),
                   tmp_path / "b")
    return models


def run(*args):
    return subprocess.run([LMERGE, *map(str, args)], capture_output=True, text=True)


CONFIG = """merge_method: task_arithmetic
base_model: {base}
models:
  - model: {a}
    parameters: {{weight: 1.0}}
  - model: {b}
    parameters: {{weight: 0.5}}
parameters:
  lambda: 1.0
{extra}"""


def merge(tmp_path, models, extra, ok=True):
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(CONFIG.format(base=models["base"][1], a=models["a"][1],
                                 b=models["b"][1], extra=extra))
    out = tmp_path / "out"
    r = run("run", cfg, "-o", out, "--threads", "2")
    if ok:
        assert r.returncode == 0, r.stderr
    return r, out


def reference(models, source, tokens=(), token_cfgs=None, pad=None):
    """Expected (vocabulary, merged tensors) by the numpy reference:
    remapped inputs merged by task arithmetic (lambda 1, weights 1, 0.5)."""
    infos = {k: (k,) + ref.read_tokenizer(path) for k, (_t, path) in models.items()}
    out_tokens = ref.output_vocab(source, infos["base"], [infos["a"], infos["b"]],
                                  tokens)
    perms = {k: ref.permutation(out_tokens, infos[k][1], infos[k][3]) for k in models}
    vocabs = {k: infos[k][1] for k in models}
    want = {}
    for name in (EMB, HEAD):
        # A model without an LM head gives its embedding (mergekit reads
        # lm_head.weight through its tied name).
        mats = {k: t.get(name, t[EMB]) for k, (t, _p) in models.items()}
        re = ref.remap(out_tokens, mats, perms, "base", token_cfgs, vocabs, pad)
        want[name] = (re["base"] + np.float32(1.0) * (re["a"] - re["base"])
                      + np.float32(0.5) * (re["b"] - re["base"]))
    return out_tokens, want


def check_tensors(out, want, exact_rows):
    tensors, _meta, _h = st_format.read(out / "model.safetensors")
    for name, w in want.items():
        got = tensors[name]
        assert got.shape == w.shape, (name, got.shape, w.shape)
        # exact where the arithmetic is exact (module docstring)
        assert np.array_equal(got[exact_rows], w[exact_rows]), name
        assert np.max(np.abs(got - w)) <= 1e-6, name
    return tensors


def vocab_of(out):
    vocab, added_tokens, _vs = ref.read_tokenizer(out)
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    assert [i for _t, i in by_id] == list(range(len(by_id))), "ids with gaps"
    return [t for t, _i in by_id], added_tokens


def test_union_remaps_rows_like_mergekit(tmp_path):
    models = make_models(tmp_path)
    r, out = merge(tmp_path, models, "tokenizer_source: union\n")
    out_tokens, want = reference(models, "union")
    assert out_tokens == BASE_VOCAB + ["<|endoftext|>", "ll", "<|im_start|>",
                                       "<|im_end|>", "<|tool|>"]
    tensors = check_tensors(out, want, slice(None))
    # B is tied but A has an LM head: the merge has one, as mergekit's.
    assert HEAD in tensors
    # the unchanged tensors merge as usual
    t = {k: m[0] for k, m in models.items()}
    up = "model.layers.0.mlp.up_proj.weight"
    assert np.array_equal(tensors[up], t["base"][up] + (t["a"][up] - t["base"][up])
                          + np.float32(0.5) * (t["b"][up] - t["base"][up]))
    # the tokenizer files describe the same vocabulary
    got_tokens, got_added = vocab_of(out)
    assert got_tokens == out_tokens
    by_content = {e["content"]: e for e in got_added}
    assert by_content["ll"]["special"] is False and by_content["ll"]["normalized"] is True
    assert by_content["<|tool|>"]["special"] is True and by_content["<|tool|>"]["id"] == 44
    tok = json.loads((out / "tokenizer.json").read_text())
    assert tok["model"]["merges"] == MERGES and tok["pre_tokenizer"]["type"] == "ByteLevel"
    tcfg = json.loads((out / "tokenizer_config.json").read_text())
    assert sorted(map(int, tcfg["added_tokens_decoder"])) == [40, 41, 42, 43, 44]
    assert tcfg["added_tokens_decoder"]["42"]["content"] == "<|im_start|>"
    assert tcfg["model_max_length"] == 2048
    assert json.loads((out / "special_tokens_map.json").read_text())["eos_token"] == "<|endoftext|>"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vocab_size"] == 45 and cfg["hidden_size"] == WIDTH
    # the base's slow-tokenizer files describe another vocabulary now
    assert not (out / "vocab.json").exists() and not (out / "merges.txt").exists()


def test_base_source_strips_beyond_vocab_size(tmp_path):
    # The base's config says 39 tokens: "Ġs" (39) and <|endoftext|> (40)
    # are padding to mergekit, stripped with the merges naming them as a
    # part ("Ġs e"); "Ġ s", whose parts remain, stays (get_stripped_tokenizer).
    models = make_models(tmp_path, base_vocab_size=39, base_rows=41)
    path = models["base"][1] / "tokenizer.json"
    t = json.loads(path.read_text())
    t["model"]["merges"].append("Ġs e")
    path.write_text(json.dumps(t))
    r, out = merge(tmp_path, models, "tokenizer_source: base\n")
    out_tokens, want = reference(models, "base")
    assert out_tokens == BASE_VOCAB[:39]
    check_tensors(out, want, slice(None))
    got_tokens, got_added = vocab_of(out)
    assert got_tokens == out_tokens and got_added == []
    tok = json.loads((out / "tokenizer.json").read_text())
    assert tok["model"]["merges"] == MERGES
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 39


def test_base_source_keeps_base_files(tmp_path):
    models = make_models(tmp_path)
    r, out = merge(tmp_path, models, "tokenizer_source: base\n")
    out_tokens, want = reference(models, "base")
    assert out_tokens == BASE_VOCAB + ["<|endoftext|>"]
    check_tensors(out, want, slice(None))
    # the vocabulary is the base's: its other tokenizer files still apply
    assert (out / "vocab.json").exists() and (out / "merges.txt").exists()


def test_model_source(tmp_path):
    models = make_models(tmp_path)
    r, out = merge(tmp_path, models, f"tokenizer_source: {models['a'][1]}\n")
    out_tokens, want = reference(models, "a")
    assert out_tokens == BASE_VOCAB + ["ll", "<|endoftext|>", "<|im_start|>",
                                       "<|im_end|>"]
    check_tensors(out, want, slice(None))
    assert vocab_of(out)[0] == out_tokens
    # A's own chat template comes along with its tokenizer
    assert (out / "chat_template.jinja").read_text().startswith("{% for m in")
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 44


def test_tokens_force_model_token_zero_and_padding(tmp_path):
    models = make_models(tmp_path)
    a, b = models["a"][1], models["b"][1]
    extra = f"""tokenizer:
  source: union
  pad_to_multiple_of: 16
  tokens:
    <|im_start|>:
      source: {a}
      force: true
    <|tool|>:
      source: {b}
    <|alias|>:
      source:
        kind: model_token
        model: {b}
        token: <|tool|>
    <|by_id|>:
      source: {{kind: model_token, model: {a}, token_id: 43}}
    <|unused|>:
      source: {{kind: zero}}
"""
    r, out = merge(tmp_path, models, extra)
    cfgs = {"<|im_start|>": {"source": "a", "force": True},
            "<|tool|>": {"source": "b"},
            "<|alias|>": {"source": ("model_token", "b", "<|tool|>")},
            "<|by_id|>": {"source": ("model_token", "a", 43)},
            "<|unused|>": {"source": ("zero",)}}
    out_tokens, want = reference(models, "union", tokens=list(cfgs),
                                 token_cfgs=cfgs, pad=16)
    assert len(out_tokens) == 48 and out_tokens[45:] == ["<|alias|>", "<|by_id|>",
                                                        "<|unused|>"]
    tensors = check_tensors(out, want, slice(0, 48))
    assert tensors[EMB].shape == (48, WIDTH)
    i = out_tokens.index("<|im_start|>")
    t = {k: m[0] for k, m in models.items()}
    # forced: every model took A's row, so the merge is A's row exactly
    assert np.array_equal(tensors[EMB][i], t["a"][EMB][42])
    assert not tensors[EMB][out_tokens.index("<|unused|>")].any()
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 48


def test_padding_rows_are_the_vocabulary_mean(tmp_path):
    models = make_models(tmp_path)
    r, out = merge(tmp_path, models, "tokenizer:\n  source: union\n"
                   "  pad_to_multiple_of: 32\n")
    out_tokens, want = reference(models, "union", pad=32)
    tensors = check_tensors(out, want, slice(0, 45))
    assert tensors[EMB].shape == (64, WIDTH)
    tok = json.loads((out / "tokenizer.json").read_text())
    assert len(tok["added_tokens"]) == 5  # padding rows have no token


def test_chat_template_literal_and_auto(tmp_path):
    models = make_models(tmp_path)
    tmpl = "{% for message in messages %}<|im_start|>{{ message.content }}{% endfor %}"
    r, out = merge(tmp_path, models, f"tokenizer_source: union\nchat_template: \"{tmpl}\"\n")
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == tmpl
    # auto: the template most models carry (only A has one here)
    (tmp_path / "merge.yaml").write_text(CONFIG.format(
        base=models["base"][1], a=models["a"][1], b=models["b"][1],
        extra="chat_template: auto\n"))
    r = run("run", tmp_path / "merge.yaml", "-o", out, "--overwrite")
    assert r.returncode == 0, r.stderr
    got = json.loads((out / "tokenizer_config.json").read_text())["chat_template"]
    assert got == "{% for m in messages %}A{{ m.content }}{% endfor %}"
    # without a tokenizer source the vocabulary and rows are the base's
    tensors, _m, _h = st_format.read(out / "model.safetensors")
    assert tensors[EMB].shape == (41, WIDTH)


@pytest.mark.parametrize("extra, want", [
    ("tokenizer_source: union\ntokenizer: {source: base}\n", "not both"),
    ("tokenizer: {source: union, colour: red}\n", "unknown key 'colour'"),
    ("tokenizer:\n  tokens:\n    <|x|>: {force: true}\n", "needs a 'source'"),
    ("tokenizer:\n  tokens:\n    <|x|>:\n      source: {kind: model_token, model: m}\n",
     "one of 'token' or 'token_id'"),
    ("tokenizer:\n  tokens:\n    <|x|>:\n      source: {kind: other}\n", "model_token or zero"),
    ("tokenizer:\n  tokens:\n    <|x|>: {source: ./elsewhere}\n",
     "'./elsewhere' is not a model of this merge"),
    ("tokenizer:\n  pad_to_multiple_of: -3\n", "non-negative integer"),
    ("chat_template: chatml\n", "bundled templates"),
    ("chat_template: hello\n", "invalid chat_template"),
])
def test_config_errors(tmp_path, extra, want):
    models = make_models(tmp_path)
    r, out = merge(tmp_path, models, extra, ok=False)
    assert r.returncode != 0 and want in r.stderr, r.stderr
    assert not out.exists()


@pytest.mark.parametrize("mutate, want", [
    (lambda tok: "{not json", "tokenizer.json: not valid JSON"),
    (lambda tok: {**tok, "model": {**tok["model"], "vocab": {"a": "zero"}}},
     "'model.vocab' of token 'a' is not a non-negative integer id"),
    (lambda tok: {k: v for k, v in tok.items() if k != "model"}, "'model' is missing"),
    (lambda tok: {**tok, "added_tokens": [{"id": 3}]}, "'added_tokens[0].content'"),
    (lambda tok: {**tok, "model": {**tok["model"], "type": "Magic"}}, "'model.type' 'Magic'"),
    (lambda tok: {**tok, "added_tokens": [added(4000, "<|far|>")]}, "not dense"),
])
def test_bad_tokenizer_files(tmp_path, mutate, want):
    models = make_models(tmp_path)
    path = models["b"][1] / "tokenizer.json"
    new = mutate(json.loads(path.read_text()))
    path.write_text(new if isinstance(new, str) else json.dumps(new))
    r, out = merge(tmp_path, models, "tokenizer_source: union\n", ok=False)
    assert r.returncode != 0 and want in r.stderr and str(path) in r.stderr, r.stderr
    assert not out.exists()


def test_tokenizer_beyond_embedding_rows_is_an_error(tmp_path):
    models = make_models(tmp_path)
    # A's config claims 50 tokens but its matrices have 44 rows
    cfg = models["a"][1] / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "vocab_size": 50}))
    tok = models["a"][1] / "tokenizer.json"
    t = json.loads(tok.read_text())
    t["added_tokens"].append(added(44, "<|beyond|>"))
    tok.write_text(json.dumps(t))
    r, out = merge(tmp_path, models, "tokenizer_source: union\n", ok=False)
    assert r.returncode != 0 and "beyond the rows" in r.stderr, r.stderr
    assert not out.exists()


def test_no_tokenizer_source_merges_common_rows(tmp_path):
    # mergekit's rectify_embed_sizes: without a tokenizer source, matrices
    # of different row counts are cut to the common leading rows; B's tied
    # head is read through its embedding.
    models = make_models(tmp_path)
    r, out = merge(tmp_path, models, "")
    assert "common leading rows" in r.stderr
    t = {k: m[0] for k, m in models.items()}
    tensors, _m, _h = st_format.read(out / "model.safetensors")
    for name in (EMB, HEAD):
        rows = {k: v.get(name, v[EMB])[:41] for k, v in t.items()}
        want = rows["base"] + (rows["a"] - rows["base"]) + np.float32(0.5) * (rows["b"] - rows["base"])
        assert np.array_equal(tensors[name], want), name
    # the base's tokenizer files are copied unchanged
    assert (out / "tokenizer.json").read_bytes() == (models["base"][1] / "tokenizer.json").read_bytes()


def unigram_json(pieces, added_tokens):
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": added_tokens, "normalizer": None,
            "pre_tokenizer": {"type": "Metaspace", "replacement": "▁",
                              "prepend_scheme": "always", "split": True},
            "post_processor": None, "decoder": None,
            "model": {"type": "Unigram", "unk_id": 0, "byte_fallback": False,
                      "vocab": [[p, -1.0 - 0.25 * i] for i, p in enumerate(pieces)]}}


def test_unigram_union_and_base_listed_as_model(tmp_path):
    # A Unigram (SentencePiece-style) vocabulary; the fine-tune appends two
    # pieces; the base is also listed under models (one model, as mergekit
    # counts it: "▁new" is then only in the fine-tune and copied).
    rng = np.random.default_rng(5)
    pieces = ["<unk>", "<s>", "</s>"] + ["▁" + c for c in "abcdefgh"] + list("abcdefgh")
    specs = {"base": pieces, "ft": pieces + ["▁new", "▁word"]}
    models = {}
    for name, p in specs.items():
        d = tmp_path / name
        t = write_model(d, p, [], [added(1, "<s>"), added(2, "</s>")], len(p), len(p), rng)
        (d / "tokenizer.json").write_text(json.dumps(unigram_json(p, [added(1, "<s>"),
                                                                      added(2, "</s>")])))
        models[name] = (t, d)
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(f"""merge_method: task_arithmetic
base_model: {models['base'][1]}
models:
  - model: {models['base'][1]}
    parameters: {{weight: 0.5}}
  - model: {models['ft'][1]}
    parameters: {{weight: 1.0}}
tokenizer_source: union
""")
    out = tmp_path / "out"
    r = run("run", cfg, "-o", out)
    assert r.returncode == 0, r.stderr
    infos = {k: (k,) + ref.read_tokenizer(p) for k, (_t, p) in models.items()}
    out_tokens = ref.output_vocab("union", infos["base"], [infos["base"], infos["ft"]])
    assert out_tokens == pieces + ["▁new", "▁word"]
    perms = {k: ref.permutation(out_tokens, infos[k][1], infos[k][3]) for k in models}
    tensors, _m, _h = st_format.read(out / "model.safetensors")
    for name in (EMB, HEAD):
        re = ref.remap(out_tokens, {k: m[0][name] for k, m in models.items()}, perms, "base")
        want = re["base"] + np.float32(0.5) * (re["base"] - re["base"]) + (re["ft"] - re["base"])
        assert np.array_equal(tensors[name], want), name
    # "▁new" came from the fine-tune alone: every model has its row
    assert np.array_equal(tensors[EMB][len(pieces)], models["ft"][0][EMB][len(pieces)])
    got_tokens, got_added = vocab_of(out)
    assert got_tokens == out_tokens
    tok = json.loads((out / "tokenizer.json").read_text())
    assert tok["model"]["type"] == "Unigram" and len(tok["model"]["vocab"]) == len(pieces)


def test_bf16_models_keep_their_rows(tmp_path):
    # bf16 inputs: rows are copied in bf16 and the means rounded once; the
    # values (multiples of 1/16) and the results here are exact in bf16.
    models = make_models(tmp_path, bf16=True)
    r, out = merge(tmp_path, models, "tokenizer_source: union\ndtype: bfloat16\n")
    _tokens, want = reference(models, "union")
    tensors, _m, _h = st_format.read(out / "model.safetensors")
    for name, w in want.items():
        assert tensors[name].dtype == np.uint16
        assert np.array_equal(tensors[name], (w.view(np.uint32) >> 16).astype(np.uint16)), name


def test_model_source_outside_the_merge(tmp_path):
    # tokenizer_source may name a model that is not merged (mergekit loads
    # its tokenizer only): here a copy of A's tokenizer files.
    models = make_models(tmp_path)
    donor = tmp_path / "donor"
    donor.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (donor / f).write_bytes((models["a"][1] / f).read_bytes())
    r, out = merge(tmp_path, models, f"tokenizer_source: {donor}\n")
    out_tokens, want = reference(models, "a")
    check_tensors(out, want, slice(None))
    assert vocab_of(out)[0] == out_tokens


def test_head_stored_as_a_copy_of_the_embedding(tmp_path):
    # Checkpoints saving tied weights twice: lmerge ties the pair (merged
    # once); the remapped head and embedding stay identical.
    models = make_models(tmp_path)
    for k, (t, path) in models.items():
        t[HEAD] = t[EMB].copy()
        st_format.write(path / "model.safetensors", t)
    r, out = merge(tmp_path, models, "tokenizer_source: union\n")
    _tokens, want = reference(models, "union")
    tensors = check_tensors(out, want, slice(None))
    assert np.array_equal(tensors[HEAD], tensors[EMB])


def test_union_without_base_model(tmp_path):
    # No base_model (mergekit's linear): the first model gives the base
    # vocabulary but a token the others share is their mean, not its row.
    models = make_models(tmp_path)
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(f"""merge_method: linear
models:
  - model: {models['a'][1]}
    parameters: {{weight: 1.0}}
  - model: {models['b'][1]}
    parameters: {{weight: 1.0}}
  - model: {models['base'][1]}
    parameters: {{weight: 2.0}}
tokenizer_source: union
""")
    out = tmp_path / "out"
    r = run("run", cfg, "-o", out)
    assert r.returncode == 0, r.stderr
    order = ["a", "b", "base"]
    infos = {k: (k,) + ref.read_tokenizer(models[k][1]) for k in order}
    out_tokens = ref.output_vocab("union", infos["a"], [infos["b"], infos["base"]])
    perms = {k: ref.permutation(out_tokens, infos[k][1], infos[k][3]) for k in order}
    tensors, _m, _h = st_format.read(out / "model.safetensors")
    for name in (EMB, HEAD):
        mats = {k: models[k][0].get(name, models[k][0][EMB]) for k in order}
        re = ref.remap(out_tokens, mats, perms, None)
        want = (re["a"] + re["b"] + np.float32(2.0) * re["base"]) / np.float32(4.0)
        assert np.max(np.abs(tensors[name] - want)) <= 1e-6, name
    # the test can tell the rules apart: with a as the base, the third
    # model's <|im_start|> row would be a's, not the mean of a's and b's
    i = out_tokens.index("<|im_start|>")
    as_base = ref.remap(out_tokens, {k: models[k][0][EMB] for k in order}, perms, "a")
    assert not np.array_equal(as_base["base"][i], re_emb := ref.remap(
        out_tokens, {k: models[k][0][EMB] for k in order}, perms, None)["base"][i])
    assert np.array_equal(re_emb, (models["a"][0][EMB][42] + models["b"][0][EMB][42]) / 2)
