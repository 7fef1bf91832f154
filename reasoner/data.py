"""Tokenized training data for the reasoner: the tokenizer trained on the task text, problems as id sequences with
a loss mask, and batches by token budget.

Contract:
- ``build_tokenizer(vocab_size, docs=600)`` -> tokenizer.json text: byte-level BPE (the embedded model's recipe:
  digits one by one, the chat and ZoomR marker tokens as single ids) trained on ``docs`` train-split problems
  rendered as the model sees them (chat prompt, trace, ``<|im_end|>``).
- ``encode(tok, problem)`` -> ``Example``: ``ids`` = the chat prompt's ids, then the trace's, then the eos id (each
  part encoded alone, so the prompt ids are exactly what the server tokenizes and the trace ids what the model
  must write); ``prompt_len``: where the loss starts.
- ``examples(tok, split, n, workers, records_share, chain)``: ``n`` encoded problems of the mixed split (problem
  ``i``'s family from ``reasoner.tasks.family_of``; ``chain`` problems sized by ``chain``, e.g. ``{"items": 4,
  "boxes": 20}``), generated in ``workers`` processes, in problem order.
- ``Batches(examples, token_budget, seed)``: an endless, seeded stream of ``(ids, targets)`` int64 tensors; each batch
  holds examples of similar length (right-padded with the pad id; targets are -100 on the prompt and the padding),
  at most ``token_budget`` padded tokens, at least one example.
"""

from __future__ import annotations

import random
from concurrent.futures import ProcessPoolExecutor
from typing import Iterator, NamedTuple

import torch

from reasoner.tasks import Problem, chat_text, family_of, generate, problem
from zoomr_sgl import embedded_model as em

EOS, PAD = em.EOS_TOKEN, em.PAD_TOKEN
IGNORE = -100


class Example(NamedTuple):
    ids: list[int]
    prompt_len: int


def build_tokenizer(vocab_size: int, docs: int = 600) -> str:
    texts = [chat_text(p.prompt) + p.trace + EOS for p in generate("train", docs)]
    return em._train_tokenizer(texts, vocab_size)


def encode(tok, p: Problem) -> Example:
    prompt = tok.encode(chat_text(p.prompt), add_special_tokens=False).ids
    trace = tok.encode(p.trace, add_special_tokens=False).ids
    return Example(prompt + trace + [tok.token_to_id(EOS)], len(prompt))


_TOK = None


def _init(tok_json: str) -> None:
    global _TOK
    from tokenizers import Tokenizer

    _TOK = Tokenizer.from_str(tok_json)


def _encode_range(args: tuple) -> list[Example]:
    split, lo, hi, share, chain = args
    out = []
    for i in range(lo, hi):
        family = family_of(i, share)
        out.append(encode(_TOK, problem(split, family, i, **(chain if family == "chain" else {}))))
    return out


def examples(tok_json: str, split: str, n: int, workers: int = 1, records_share: float = 0.25,
             chain: dict | None = None) -> list[Example]:
    chunk = max(1, -(-n // (workers * 4)))
    ranges = [(split, lo, min(n, lo + chunk), records_share, chain or {}) for lo in range(0, n, chunk)]
    if workers <= 1:
        _init(tok_json)
        return [e for r in ranges for e in _encode_range(r)]
    with ProcessPoolExecutor(workers, initializer=_init, initargs=(tok_json,)) as pool:
        return [e for part in pool.map(_encode_range, ranges) for e in part]


class Batches:
    def __init__(self, data: list[Example], token_budget: int, pad_id: int, seed: int):
        if not data:
            raise ValueError("no training examples")
        self.data = sorted(data, key=lambda e: len(e.ids))
        self.budget, self.pad, self.rng = token_budget, pad_id, random.Random(seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            i = self.rng.randrange(len(self.data))
            longest = len(self.data[i].ids)
            n = max(1, self.budget // longest)
            lo = max(0, min(i - n + 1, len(self.data) - n))  # neighbours in length order, the longest at i or below
            rows = self.data[lo:lo + n]
            width = max(len(e.ids) for e in rows)
            ids = torch.full((len(rows), width), self.pad, dtype=torch.int64)
            tgt = torch.full((len(rows), width), IGNORE, dtype=torch.int64)
            for r, e in enumerate(rows):
                x = torch.tensor(e.ids)
                ids[r, : len(x)] = x
                tgt[r, e.prompt_len - 1: len(x) - 1] = x[e.prompt_len:]  # predict the trace and the eos
            yield ids, tgt
