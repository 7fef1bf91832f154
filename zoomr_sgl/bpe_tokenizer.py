"""The byte-level BPE tokenizer recipe our models share: the embedded bigram model (``zoomr_sgl.embedded_model``) and
the trained reasoner (``reasoner``), each trained on its own text.

Contract:
- ``train_tokenizer(docs, vocab_size) -> str``: ``tokenizer.json`` text of a byte-level BPE (any text encodes)
  trained on ``docs`` with a Qwen2-style pre-tokenizer (``PRETOKENIZE_REGEX``: digits split one by one, so ``".\\n\\n"``
  or ``"\\n\\n"`` can be a single token). It never learns pieces of the marker strings: it trains on the text between
  them. ``SPECIAL_TOKENS`` (``<|endoftext|>`` the pad, ``<|im_start|>``, ``<|im_end|>`` the eos) are stripped by
  ``skip_special_tokens``; ``ADDED_TOKENS`` (``<think>``, ``</think>``, ``<summary>``, ``</summary>``) are kept in
  decoded text; each is a single id. Deterministic for the same ``docs``.
- ``tokenizer_files(model_max_length) -> {file name: text}``: ``tokenizer_config.json`` (a
  ``PreTrainedTokenizerFast`` with ``CHAT_TEMPLATE``, no BOS), ``special_tokens_map.json`` and
  ``chat_template.jinja``, written beside ``tokenizer.json`` in a HuggingFace model folder.
"""

from __future__ import annotations

import json
import re

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




def train_tokenizer(docs: list[str], vocab_size: int) -> str:
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


def tokenizer_files(model_max_length: int) -> dict[str, str]:
    cfg = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "backend": "tokenizers",
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        "errors": "replace",
        "extra_special_tokens": [],
        "model_max_length": model_max_length,
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
