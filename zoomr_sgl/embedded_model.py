"""The embedded default model: a tiny Qwen3 built offline, deterministically, from code in this file.

Contract:
- ``build(out, force=False) -> Path`` writes a servable HuggingFace model folder to ``out``: ``config.json``
  (``Qwen3ForCausalLM``, float32), ``generation_config.json``, ``model.safetensors``, ``tokenizer.json``,
  ``tokenizer_config.json``, ``special_tokens_map.json``, ``chat_template.jinja`` and ``zoomr_manifest.json``.
  No network, no downloads: the tokenizer is trained on text generated here from a fixed seed, and the weights are
  computed from that text's bigram statistics plus seeded random attention/MLP weights (no gradient training).
- Deterministic: every build of the same recipe writes the same files, byte for byte.
- Idempotent: if ``out`` holds a manifest whose ``recipe_hash`` equals ``recipe_hash()`` (sha256 of this file's
  source and ``PARAMS``), ``build`` returns at once. ``force=True`` rebuilds.
- Atomic: the model is written to a temporary sibling folder and renamed into place; an interrupted build never
  leaves a half model at ``out``.
- ``default_model_path()`` is ``<repo>/.models/zoomr-tiny`` (repository root found from this file's path).
- Tokenizer: byte-level BPE (any text encodes), Qwen2-style pre-tokenizer (digits split one by one, so ``".\\n\\n"``
  or ``"\\n\\n"`` can be a single token). Special tokens (stripped by ``skip_special_tokens``): ``<|endoftext|>``
  (pad), ``<|im_start|>``, ``<|im_end|>`` (eos). Added non-special tokens (kept in decoded text):
  ``<think>``, ``</think>``, ``<summary>``, ``</summary>``, each a single id.
- Model: greedy decoding gives varied text (bigram model in the residual stream, perturbed by context through
  attention), so which KV positions are attended changes outputs; blank lines appear now and then; 2,000+ tokens
  can be generated (``max_position_embeddings`` 40960).
- dtype float32: fewer near-ties for greedy-exactness comparisons between server configurations. SGLang downcasts
  a float32 checkpoint to float16 under ``--dtype auto``; serve it with ``--dtype float32``.

CLI: ``python -m zoomr_sgl.embedded_model build [--out DIR] [--quiet] [--force]`` and ``... path``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MANIFEST = "zoomr_manifest.json"

PARAMS = {
    "seed": 20240917,
    "corpus_docs": 2500,
    "vocab_size": 2048,
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "intermediate_size": 512,
    "max_position_embeddings": 40960,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "bigram_smoothing": 1.0,  # pseudo-count of the unigram back-off
    "summary_open_penalty": 6.0,  # nats off the bigram logit of <summary>: the model seldom opens one by itself
    "summary_close_penalty": 3.0,  # nats off </summary>: rarely written outside a summary (engine mode forces it)
    "qk_norm_scale": 3.0,  # q_norm / k_norm weights: sharp attention, so *which* positions are attended matters
    "attn_out_scale": 0.5,  # attention output RMS relative to the (unit RMS) embedding
    "mlp_out_scale": 0.2,
    "logit_scale": 1.0,
    "weight_grid_bits": 20,  # weights are snapped to multiples of 2**-bits (robust against BLAS rounding)
}

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ADDED_TOKENS = ["<think>", "</think>", "<summary>", "</summary>"]
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

# Qwen2-style split: letters with an optional leading non-letter, single digits, punctuation runs with trailing
# newlines, newline runs, spaces.
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- elif message['content'] is not none %}"
    "{%- for part in message['content'] %}{%- if part['type'] == 'text' %}{{- part['text'] }}{%- endif %}{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def default_model_path() -> Path:
    return repo_root() / ".models" / "zoomr-tiny"


def recipe_hash() -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(json.dumps(PARAMS, sort_keys=True).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Corpus: reasoning-like English, generated from a seed.

_NAMES = (
    "Tom Anna Lena Omar Mia Ravi Sara Ben Yuki Paul Nora Ivan Clara Diego Fatima Hugo Iris Jonas Kenji Laila "
    "Marco Nadia Oscar Priya Quentin Rosa Samir Tara Umar Vera Walter Xena Yusuf Zoe Elena Felix Greta Hassan "
    "Ingrid Jamal Kofi Lucia Mateo Nina Olga Pedro Rahul Sofia Theo Ursula Victor Wanda Amir Bianca Carlos Dana"
).split()
_ITEMS = (
    "apples books coins marbles pencils cookies stamps cards shells boxes bottles candles tickets flowers "
    "stickers buttons crayons oranges lemons eggs cupcakes plates cups bricks seeds pebbles ribbons balloons "
    "notebooks erasers batteries bananas carrots potatoes tomatoes peppers muffins sandwiches bracelets rings "
    "keys nails screws bolts beads feathers leaves stones puzzles toys blocks chairs tables lamps blankets"
).split()
_PLACES = (
    "market library school garden bakery station museum harbor park farm office kitchen village city "
    "river bridge forest beach island mountain valley factory store warehouse hospital stadium theater"
).split()
_VEHICLES = ["car", "bus", "train", "bike", "boat", "truck", "plane", "scooter"]
_JOBS = ["paint a fence", "build a wall", "fill a tank", "write a report", "clean the room", "sort the mail",
         "plant the trees", "pack the boxes", "wash the dishes", "mow the lawn", "fix the roof", "bake the bread"]
_VERBS_GAIN = ["buys", "finds", "gets", "receives", "picks up", "wins", "collects", "borrows", "makes", "earns"]
_VERBS_LOSE = ["gives away", "loses", "sells", "eats", "drops", "uses", "breaks", "donates", "trades", "returns"]
_ADJ = (
    "red blue green small large old new heavy light bright quiet careful quick slow happy tired busy "
    "simple tricky strange useful important different similar whole exact rough final correct wrong"
).split()
_OPENERS = [
    "Let me think step by step.",
    "Let me work through this carefully.",
    "First, I need to understand the problem.",
    "Okay, let me start with what we know.",
    "Let me break this down.",
    "Alright, I will go through the numbers one at a time.",
    "I should write down every quantity before computing anything.",
    "Let me restate the question in my own words.",
    "Hmm, this looks like a problem about rates.",
    "There are several parts here, so I will handle them in order.",
]
_CHECKS = [
    "Wait, let me check that again.",
    "Wait, that does not look right.",
    "Hmm, let me double check.",
    "Wait, I should verify this step.",
    "Let me recompute to be sure.",
    "Actually, I made a mistake earlier.",
    "Hold on, I think I mixed up the numbers.",
    "But wait, did I read the question correctly?",
    "Let me try a different approach to confirm.",
    "Maybe I should count again from the beginning.",
]
_FILLERS = [
    "This means the total changes.",
    "I need to keep track of each step.",
    "The order of the steps matters here.",
    "So far the numbers look consistent.",
    "Now I can combine the two results.",
    "That gives a new total.",
    "I will write the result down.",
    "Then I can move on to the next part.",
    "Notice that the question only asks about the final amount.",
    "It helps to think about what happens first and what happens later.",
    "Another way to see it is to draw a small table.",
    "The units have to match, otherwise the answer makes no sense.",
    "I should not forget the earlier change.",
    "Each part depends on the previous one.",
    "If I group the numbers differently, the sum stays the same.",
    "Multiplication is repeated addition, so this is consistent.",
    "The difference between the two values is what matters.",
    "A quick estimate says the answer should be close to this.",
    "Therefore the intermediate result is reasonable.",
    "In other words, nothing else changes in this step.",
]
_CLOSERS = ["So the answer is {a}.", "The answer is {a}.", "Therefore, the final answer is {a}.",
            "That means the result is {a}.", "In total, the answer is {a}."]


def _num(rng, lo: int, hi: int) -> int:
    return rng.randint(lo, hi)


def _p_items(rng):
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    adj = rng.choice(_ADJ)
    a = _num(rng, 2, 80)
    total, q, steps = a, [f"{name} has {a} {adj} {item} at the {rng.choice(_PLACES)}."], []
    for _ in range(rng.randint(1, 4)):
        kind = rng.random()
        if kind < 0.4:
            b, verb = _num(rng, 1, 50), rng.choice(_VERBS_GAIN)
            q.append(f"Then {name} {verb} {b} more {item}.")
            steps.append(f"{name} {verb} {b}, so {total} + {b} = {total + b}.")
            total += b
        elif kind < 0.75 and total > 1:
            b, verb = _num(rng, 1, total - 1), rng.choice(_VERBS_LOSE)
            q.append(f"Then {name} {verb} {b} {item}.")
            steps.append(f"{name} {verb} {b}, so {total} - {b} = {total - b}.")
            total -= b
        else:
            k = _num(rng, 2, 6)
            q.append(f"Then the number of {item} is multiplied by {k}.")
            steps.append(f"The {item} are multiplied by {k}, so {total} * {k} = {total * k}.")
            total *= k
    q.append(f"How many {item} does {name} have now?")
    start = f"{name} starts with {a} {item}."
    return " ".join(q), start, steps, f"{name} ends with {total} {item}.", total


def _p_travel(rng):
    name, veh = rng.choice(_NAMES), rng.choice(_VEHICLES)
    speed, hours = _num(rng, 3, 90), _num(rng, 2, 9)
    src, dst = rng.sample(_PLACES, 2)
    dist = speed * hours
    q = (f"{name} rides a {veh} from the {src} to the {dst} at {speed} km per hour. "
         f"The trip takes {hours} hours. How far is the {dst} from the {src}?")
    steps = [f"Distance is speed times time.", f"The speed is {speed} km per hour and the time is {hours} hours.",
             f"So {speed} * {hours} = {dist} km."]
    if rng.random() < 0.5:
        back = _num(rng, 1, hours)
        steps.append(f"If the way back takes {back} hours less, the return time is {hours} - {back} = {hours - back}.")
    return q, f"The trip starts at the {src}.", steps, f"The distance is {dist} km.", dist


def _p_price(rng):
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    n, price = _num(rng, 2, 20), _num(rng, 1, 25)
    paid = n * price + _num(rng, 0, 50)
    cost = n * price
    q = (f"At the {rng.choice(_PLACES)}, {item} cost {price} dollars each. {name} buys {n} {item} and pays with "
         f"{paid} dollars. How much change does {name} get?")
    steps = [f"The cost is {n} * {price} = {cost} dollars.", f"The change is {paid} - {cost} = {paid - cost} dollars."]
    if rng.random() < 0.4:
        steps.insert(1, f"{name} pays {paid} dollars, which is more than {cost}, so there is change.")
    return q, f"Each of the {item} costs {price} dollars.", steps, f"The change is {paid - cost} dollars.", paid - cost


def _p_work(rng):
    a_name, b_name = rng.sample(_NAMES, 2)
    job = rng.choice(_JOBS)
    a_rate, b_rate = _num(rng, 1, 9), _num(rng, 1, 9)
    hours = _num(rng, 2, 8)
    done = (a_rate + b_rate) * hours
    q = (f"{a_name} can {job} at {a_rate} units per hour and {b_name} works at {b_rate} units per hour. "
         f"They work together for {hours} hours. How many units do they finish?")
    steps = [f"Together they do {a_rate} + {b_rate} = {a_rate + b_rate} units per hour.",
             f"In {hours} hours they finish {a_rate + b_rate} * {hours} = {done} units."]
    return q, f"There are two workers, {a_name} and {b_name}.", steps, f"They finish {done} units.", done


def _p_share(rng):
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    friends, each = _num(rng, 2, 9), _num(rng, 2, 15)
    rest = _num(rng, 0, friends - 1)
    total = friends * each + rest
    q = (f"{name} has {total} {item} and shares them equally among {friends} friends. "
         f"How many {item} does each friend get, and how many are left over?")
    steps = [f"I divide {total} by {friends}.", f"{friends} * {each} = {friends * each}, which is at most {total}.",
             f"The remainder is {total} - {friends * each} = {rest}."]
    return q, f"There are {total} {item} in total.", steps, f"Each friend gets {each}, and {rest} are left.", each


def _p_age(rng):
    a_name, b_name = rng.sample(_NAMES, 2)
    a_age, diff, years = _num(rng, 5, 60), _num(rng, 1, 30), _num(rng, 1, 20)
    q = (f"{a_name} is {a_age} years old. {b_name} is {diff} years older than {a_name}. "
         f"How old will {b_name} be in {years} years?")
    steps = [f"{b_name} is {a_age} + {diff} = {a_age + diff} years old now.",
             f"In {years} years {b_name} will be {a_age + diff} + {years} = {a_age + diff + years}."]
    return q, f"{a_name} is {a_age} now.", steps, f"{b_name} will be {a_age + diff + years}.", a_age + diff + years


_PROBLEMS = [_p_items, _p_travel, _p_price, _p_work, _p_share, _p_age]


def _problem(rng) -> tuple[str, list[str], str, int]:
    """One word problem: (question, reasoning paragraphs, summary, answer)."""
    question, start, steps, summary, answer = rng.choice(_PROBLEMS)(rng)
    paras = [rng.choice(_OPENERS) + "\n" + start]
    for s in steps:
        body = s
        if rng.random() < 0.5:
            body += "\n" + rng.choice(_FILLERS)
        if rng.random() < 0.3:
            body += "\n" + rng.choice(_CHECKS) + "\n" + s + " Yes, that is correct."
        paras.append(body)
    return question, paras, summary, answer


def _document(rng, summaries: bool, chat: bool) -> str:
    question, paras, summary, answer = _problem(rng)
    out_paras = []
    for p in paras:
        out_paras.append(p)
        if summaries and rng.random() < 0.6:
            last = p.strip().split("\n")[-1]
            out_paras.append(f"<summary>{last}</summary>")
    think = "<think>\n" + "\n\n".join(out_paras) + "\n\n" + f"<summary>{summary}</summary>\n</think>\n\n"
    final = rng.choice(_CLOSERS).format(a=answer)
    if chat:
        sys_msg = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" if rng.random() < 0.3 else ""
        return f"{sys_msg}<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n{think}{final}<|im_end|>\n"
    return f"{question}\n\n{think}{final}<|endoftext|>"


def corpus(n_docs: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    docs = []
    for i in range(n_docs):
        docs.append(_document(rng, summaries=rng.random() < 0.7, chat=rng.random() < 0.4))
    return docs


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer.


def _train_tokenizer(docs: list[str], vocab_size: int) -> str:
    """Train a byte-level BPE; returns tokenizer.json text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=SPECIAL_TOKENS + ADDED_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # Train on the text between markers so BPE never learns pieces of the marker strings.
    import re

    pieces = []
    pat = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS + ADDED_TOKENS))
    for d in docs:
        pieces.extend(p for p in pat.split(d) if p)
    tok.train_from_iterator(pieces, trainer=trainer, length=len(pieces))
    data = json.loads(tok.to_str())
    for entry in data["added_tokens"]:
        entry.update(single_word=False, lstrip=False, rstrip=False, normalized=False)
        entry["special"] = entry["content"] in SPECIAL_TOKENS
    data["post_processor"] = None
    return json.dumps(data, ensure_ascii=False, indent=2, sort_keys=False) + "\n"


def _tokenizer_files(vocab_size: int) -> dict[str, str]:
    cfg = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "backend": "tokenizers",
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        "errors": "replace",
        "extra_special_tokens": [],
        "model_max_length": PARAMS["max_position_embeddings"],
        "pad_token": PAD_TOKEN,
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
        "chat_template": CHAT_TEMPLATE,
    }
    special_map = {"eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
    return {
        "tokenizer_config.json": json.dumps(cfg, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special_map, indent=2) + "\n",
        "chat_template.jinja": CHAT_TEMPLATE,
    }


# ----------------------------------------------------------------------------------------------------------------
# Weights.


def _bigram_logits(ids_per_doc: list[list[int]], vocab: int, smoothing: float):
    """Centred log P(b | a), interpolated with the unigram distribution (rows never seen fall back to it)."""
    import numpy as np

    stream = np.asarray([i for ids in ids_per_doc for i in ids], dtype=np.int64)  # documents back to back
    counts = np.zeros((vocab, vocab), dtype=np.float64)
    np.add.at(counts, (stream[:-1], stream[1:]), 1.0)
    uni = (np.bincount(stream, minlength=vocab).astype(np.float64) + 0.5) / (len(stream) + 0.5 * vocab)
    k = smoothing
    probs = (counts + k * uni[None, :]) / (counts.sum(axis=1, keepdims=True) + k)
    logp = np.log(probs)
    return logp - logp.mean(axis=1, keepdims=True), uni


def _snap(x, bits: int):
    import numpy as np

    q = float(2**bits)
    return (np.round(np.asarray(x, dtype=np.float64) * q) / q).astype(np.float32)


def _orth(y):
    """Orthonormal basis of y's columns, with the sign convention diag(R) > 0 (a continuous function of y)."""
    import numpy as np

    q, r = np.linalg.qr(y)
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)[None, :]


def _weights(logits, p: dict) -> dict:
    """State dict (numpy float32) for Qwen3ForCausalLM."""
    import numpy as np

    vocab = logits.shape[0]
    d, L = p["hidden_size"], p["num_hidden_layers"]
    nh, nkv, hd, inter = p["num_attention_heads"], p["num_key_value_heads"], p["head_dim"], p["intermediate_size"]
    rng = np.random.Generator(np.random.PCG64(p["seed"]))

    # Rank-d fit of the centred log-bigram matrix (truncated SVD): logits[a] ~= emb[a] @ head.T. Signs are made
    # canonical; the bytes are reproducible because the build runs with single-threaded BLAS (see build()).
    u, s, vt = np.linalg.svd(logits, full_matrices=False)
    u, s, vt = u[:, :d], s[:d], vt[:d]
    flip = np.where(u[np.abs(u).argmax(axis=0), np.arange(u.shape[1])] < 0, -1.0, 1.0)
    u, vt = u * flip[None, :], vt * flip[:, None]
    emb, head = u * np.sqrt(s), vt.T * np.sqrt(s)
    rms = np.sqrt((emb**2).mean(axis=1, keepdims=True)) + 1e-12
    head = head * float(np.median(rms)) * p["logit_scale"]
    emb = emb / rms  # unit RMS rows: what the final RMSNorm sees when the layers add nothing
    rot = _orth(rng.standard_normal((d, d)))  # spread the bigram directions over all dims (keeps the fit exact)
    emb, head = emb @ rot, head @ rot

    g = p["weight_grid_bits"]
    sd = {
        "model.embed_tokens.weight": _snap(emb, g),
        "lm_head.weight": _snap(head, g),
        "model.norm.weight": _snap(np.ones(d), g),
    }
    for i in range(L):
        pre = f"model.layers.{i}."
        sd[pre + "input_layernorm.weight"] = _snap(np.ones(d), g)
        sd[pre + "post_attention_layernorm.weight"] = _snap(np.ones(d), g)
        sd[pre + "self_attn.q_proj.weight"] = _snap(rng.standard_normal((nh * hd, d)) / np.sqrt(d), g)
        sd[pre + "self_attn.k_proj.weight"] = _snap(rng.standard_normal((nkv * hd, d)) / np.sqrt(d), g)
        sd[pre + "self_attn.v_proj.weight"] = _snap(rng.standard_normal((nkv * hd, d)) / np.sqrt(d), g)
        sd[pre + "self_attn.o_proj.weight"] = _snap(
            rng.standard_normal((d, nh * hd)) / np.sqrt(nh * hd) * p["attn_out_scale"], g
        )
        sd[pre + "self_attn.q_norm.weight"] = _snap(np.full(hd, p["qk_norm_scale"]), g)
        sd[pre + "self_attn.k_norm.weight"] = _snap(np.full(hd, p["qk_norm_scale"]), g)
        sd[pre + "mlp.gate_proj.weight"] = _snap(rng.standard_normal((inter, d)) / np.sqrt(d), g)
        sd[pre + "mlp.up_proj.weight"] = _snap(rng.standard_normal((inter, d)) / np.sqrt(d), g)
        sd[pre + "mlp.down_proj.weight"] = _snap(
            rng.standard_normal((d, inter)) / np.sqrt(inter) * p["mlp_out_scale"] * 2.0, g
        )
    return sd


def _model_config(vocab: int, eos_ids: list[int], pad_id: int, p: dict) -> dict:
    L = p["num_hidden_layers"]
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": None,
        "dtype": "float32",
        "eos_token_id": eos_ids[0],
        "head_dim": p["head_dim"],
        "hidden_act": "silu",
        "hidden_size": p["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": p["intermediate_size"],
        "layer_types": ["full_attention"] * L,
        "max_position_embeddings": p["max_position_embeddings"],
        "max_window_layers": L,
        "model_type": "qwen3",
        "num_attention_heads": p["num_attention_heads"],
        "num_hidden_layers": L,
        "num_key_value_heads": p["num_key_value_heads"],
        "pad_token_id": pad_id,
        "rms_norm_eps": p["rms_norm_eps"],
        "rope_parameters": {"rope_theta": p["rope_theta"], "rope_type": "default"},
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "5.12.1",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab,
    }


def _write_safetensors(path: Path, tensors: dict) -> None:
    """Deterministic safetensors writer (sorted keys, fixed metadata), no torch needed."""
    import numpy as np

    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name], dtype="<f4")
        raw = arr.tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for raw in blobs:
            f.write(raw)


# ----------------------------------------------------------------------------------------------------------------
# Build.


def _read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def is_current(out: Path) -> bool:
    m = _read_manifest(Path(out))
    return bool(m) and m.get("recipe_hash") == recipe_hash() and all((Path(out) / f).is_file() for f in m["files"])


def _build_into(tmp: Path, log) -> None:
    from tokenizers import Tokenizer

    p = PARAMS
    t0 = time.perf_counter()
    docs = corpus(p["corpus_docs"], p["seed"])
    tok_json = _train_tokenizer(docs, p["vocab_size"])
    (tmp / "tokenizer.json").write_text(tok_json, encoding="utf-8")
    for name, text in _tokenizer_files(p["vocab_size"]).items():
        (tmp / name).write_text(text, encoding="utf-8")
    tok = Tokenizer.from_str(tok_json)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    log(f"tokenizer: {vocab} tokens ({time.perf_counter() - t0:.1f}s)")

    ids = [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)]
    logits, _ = _bigram_logits(ids, vocab, p["bigram_smoothing"])
    logits[:, tok.token_to_id("<summary>")] -= p["summary_open_penalty"]
    logits[:, tok.token_to_id("</summary>")] -= p["summary_close_penalty"]
    sd = _weights(logits, p)
    _write_safetensors(tmp / "model.safetensors", sd)
    log(f"weights: {sum(v.size for v in sd.values())} parameters ({time.perf_counter() - t0:.1f}s)")

    eos_ids = [tok.token_to_id(EOS_TOKEN), tok.token_to_id(PAD_TOKEN)]
    pad_id = tok.token_to_id(PAD_TOKEN)
    (tmp / "config.json").write_text(json.dumps(_model_config(vocab, eos_ids, pad_id, p), indent=2) + "\n")
    gen = {"eos_token_id": eos_ids, "pad_token_id": pad_id, "transformers_version": "5.12.1"}
    (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    files = sorted(f.name for f in tmp.iterdir())
    manifest = {
        "recipe_hash": recipe_hash(),
        "params": p,
        "files": files,
        "sha256": {f: hashlib.sha256((tmp / f).read_bytes()).hexdigest() for f in files},
        "token_ids": {t: tok.token_to_id(t) for t in SPECIAL_TOKENS + ADDED_TOKENS},
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _logger(verbose: bool):
    if not verbose:
        return lambda msg: None
    return lambda msg: print(f"[zoomr-tiny] {msg}", file=sys.stderr, flush=True)


def build(out: Path | str | None = None, force: bool = False, quiet: bool = True) -> Path:
    """Build the embedded model into ``out`` (default ``default_model_path()``) unless it is already current."""
    out = Path(out) if out is not None else default_model_path()
    if not force and is_current(out):
        return out
    log = _logger(not quiet)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        # The numerics run in a child with single-threaded BLAS/OpenMP: the bytes must not depend on the caller's
        # thread settings or on how many cores this machine has.
        pythonpath = os.pathsep.join([str(repo_root()), os.environ.get("PYTHONPATH", "")])
        env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                   MKL_NUM_THREADS="1", PYTHONPATH=pythonpath)
        cmd = [sys.executable, "-m", "zoomr_sgl.embedded_model", "_build-into", str(tmp)] + ([] if quiet else ["-v"])
        subprocess.run(cmd, env=env, check=True, cwd=str(repo_root()))
        os.chmod(tmp, 0o755)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
        try:
            os.rename(tmp, out)
        except OSError:
            if not is_current(out):  # a concurrent build finished first: keep its (identical) result
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"built {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zoomr_sgl.embedded_model", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the model folder (no-op when already current)")
    b.add_argument("--out", type=Path, default=None, help=f"target folder (default {default_model_path()})")
    b.add_argument("--quiet", action="store_true")
    b.add_argument("--force", action="store_true", help="rebuild even when current")
    sub.add_parser("path", help="print the default model folder")
    bi = sub.add_parser("_build-into", help=argparse.SUPPRESS)  # internal: the child that does the numerics
    bi.add_argument("dir", type=Path)
    bi.add_argument("-v", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "_build-into":
        _build_into(args.dir, _logger(args.v))
        return 0
    if args.cmd == "path":
        print(default_model_path())
        return 0
    t0 = time.perf_counter()
    out = build(args.out, force=args.force, quiet=args.quiet)
    if not args.quiet:
        print(f"{out} ({time.perf_counter() - t0:.2f}s)", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
