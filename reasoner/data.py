"""Tokenized training data for the reasoner: the tokenizer trained on the task text, problems as id sequences with
a loss mask, and batches by token budget.

Contract:
- ``build_tokenizer(vocab_size, docs=600)`` -> tokenizer.json text: byte-level BPE (``zoomr_sgl.bpe_tokenizer``,
  the embedded model's recipe: digits one by one, the chat and ZoomR marker tokens as single ids) trained on ``docs``
  train-split problems rendered as the model sees them (chat prompt, trace, ``<|im_end|>``).
- ``encode(tok, problem)`` -> ``Example``: ``ids`` = the chat prompt's ids, then the trace's, then the eos id (each
  part encoded alone, so the prompt ids are exactly what the server tokenizes and the trace ids what the model
  must write); ``prompt_len``: where the loss starts.
- ``examples(tok, split, n, workers, records_share, chain, zoomr_aware, first, stray)``: ``n`` encoded problems of the mixed
  split, problems ``first .. first + n - 1`` (problem ``i``'s family from ``reasoner.tasks.family_of``; ``chain``
  problems sized by ``chain``, e.g. ``{"items": 4, "boxes": 20}``), generated in ``workers`` processes, in problem
  order.
- ``warm_examples(tok, n, workers, zoomr_aware)``: the curriculum's warm-up set: ``n`` small train-split chain
  problems (``WARM_SIZES``: 2-6 items over 8-24 boxes), indices far from the main set's.
- ``Batches(examples, token_budget, seed)``: an endless, seeded stream of ``(ids, targets, view)``: int64 tensors;
  each batch holds examples of similar length (right-padded with the pad id; targets are -100 on the prompt and the
  padding), at most ``token_budget`` padded tokens, at least one example. ``view`` is None (causal attention) unless
  the examples are ZoomR-aware: then their ``(seg, own, stray, sent)``, int16 tensors and a ``SentenceBatch`` or None,
  for ``attention_mask`` (built
  where the model runs: the mask is quadratic in the length).
- ZoomR-aware examples (``encode(..., zoomr_aware=True)``, ``zoomr_view``) train under ZoomR's view of the context:
  a closed thought's detail is masked out for every later query, except the thought the answer needs, which the
  answer's queries read (in the spirit of Breadcrumbs' training under compression). ``zoomr_aware`` in
  ``examples`` is the share of problems so encoded (1: all; between 0 and 1: problem ``i`` is, or is under full
  attention with every ``seg`` -1, by a draw fixed by ``i``), so one model can learn both views. ``stray`` (0 to 1)
  is the share of ``STRAY_BLOCK``-token blocks of each later thought whose queries also read one earlier thought's
  detail, drawn at random (``stray`` in ``Example``): what the server's zoom leaves while the model writes (top-k 1
  without retention keeps the one detail its last zoom picked), a view the oracle alone never shows.
- Under ``sentences`` (a ``reasoner.sentence_view.SentenceSettings``; ``examples(..., sentences, sentence_share)``:
  that share of the ZoomR-aware problems, by a draw fixed by ``i``) an example also carries ``sent``, SentenceKV's
  view of its prompt (``reasoner.sentence_view``): past the first decode step a query reads only the prompt sentences
  the last zoom handed back, besides the sink and the recent window. ``Batches`` then yields it as the view's fourth
  member (a ``SentenceBatch``, None when no row of the batch has one), and ``attention_mask`` applies it.
"""

from __future__ import annotations

import random
from concurrent.futures import ProcessPoolExecutor
from typing import Iterator, NamedTuple

import torch

from reasoner import sentence_view
from reasoner.tasks import Problem, chat_text, family_of, generate, line_reads, problem
from zoomr_sgl import bpe_tokenizer

EOS, PAD = bpe_tokenizer.EOS_TOKEN, bpe_tokenizer.PAD_TOKEN
IGNORE = -100


class Example(NamedTuple):
    ids: list[int]
    prompt_len: int
    seg: list[int] | None = None  # per position: the thought whose detail it is, or -1 (prompt, summary, answer)
    own: list[int] | None = None  # per position: the thought detail a query there may read besides the -1s
    stray: list[int] | None = None  # per position: one more thought detail a query there reads (-1: none)
    sent: sentence_view.SentenceView | None = None  # SentenceKV's view of the prompt (None: the whole prompt)


STRAY_BLOCK = 8  # tokens a stray recall stays for: twice the reasoner's zoom interval


def zoomr_view(ids: list[int], prompt_len: int, open_ids, close_ids, end_think: int, target: int,
               stray: float = 0.0, rng: random.Random | None = None):
    """``(seg, own, stray)`` of ``Example``: what ZoomR leaves on the device for a query at each position. Thoughts
    are found by the server's own segmenter from ``prompt_len``; a thought's detail is readable by its own detail
    and summary tokens (the detail leaves once the summary closes); after ``</think>`` only the ``target`` thought's
    detail is back (an oracle zoom: the thought the answer needs), else none. Within thought ``k >= 1``, each block
    of ``STRAY_BLOCK`` positions reads, with probability ``stray`` (draws from ``rng``), one earlier thought's detail
    too, the same for the whole block."""
    from zoomr_sgl.segmenter import segment

    seg, own, extra = [-1] * len(ids), [-1] * len(ids), [-1] * len(ids)
    for t in segment(ids, open_ids, close_ids, start=prompt_len):
        for pos in range(t.detail_start, t.detail_end):
            seg[pos] = own[pos] = t.index
        for pos in range(t.summary_start, t.summary_end):
            own[pos] = t.index
        if stray > 0 and t.index > 0:
            for lo in range(t.detail_start, t.summary_end, STRAY_BLOCK):
                pick = rng.randrange(t.index) if rng.random() < stray else -1
                extra[lo:min(lo + STRAY_BLOCK, t.summary_end)] = [pick] * (min(lo + STRAY_BLOCK, t.summary_end) - lo)
    if end_think in ids[prompt_len:]:
        for pos in range(ids.index(end_think, prompt_len), len(ids)):
            own[pos], extra[pos] = target, -1
    return seg, own, extra


def build_tokenizer(vocab_size: int, docs: int = 600) -> str:
    texts = [chat_text(p.prompt) + p.trace + EOS for p in generate("train", docs)]
    return bpe_tokenizer.train_tokenizer(texts, vocab_size)


def encode(tok, p: Problem, zoomr_aware: bool = False, stray: float = 0.0,
           sentences: sentence_view.SentenceSettings | None = None, ends=None) -> Example:
    """``sentences`` (with ``ends``, the tokenizer's ``SentenceEnds``): also SentenceKV's view of the prompt."""
    chat = chat_text(p.prompt)
    prompt_enc, trace_enc = tok.encode(chat, add_special_tokens=False), tok.encode(p.trace, add_special_tokens=False)
    prompt, trace = prompt_enc.ids, trace_enc.ids
    ids = prompt + trace + [tok.token_to_id(EOS)]
    if not zoomr_aware:
        return Example(ids, len(prompt))
    marker = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    seg, own, extra = zoomr_view(ids, len(prompt), marker("<summary>"), marker("</summary>"),
                                 tok.token_to_id("</think>"), p.target_thought, stray, random.Random(f"stray:{p.seed}"))
    sent = None
    if sentences is not None:
        spans = sentence_view.leavable(prompt, ends, sentences)
        need = sentence_view.needs(prompt_enc, chat, p.prompt, trace_enc, p.trace, line_reads(p), spans)
        sent = sentence_view.sentence_view(prompt, len(ids), spans, need, sentences, random.Random(f"zoom:{p.seed}"))
    return Example(ids, len(prompt), seg, own, extra, sent)


_TOK, _ENDS = None, None


def _init(tok_json: str) -> None:
    global _TOK, _ENDS
    from tokenizers import Tokenizer

    from zoomr_sgl.sentences import SentenceEnds

    _TOK = Tokenizer.from_str(tok_json)
    _ENDS = SentenceEnds.from_tokenizer(_TOK)


def _encode_range(args: tuple) -> list[Example]:
    split, lo, hi, share, chain, aware, stray, sentences, sentence_share = args
    out = []
    for i in range(lo, hi):
        family = family_of(i, share)
        p = problem(split, family, i, **(chain if family == "chain" else {}))
        sent = sentences if sentences and random.Random(f"sentences:{i}").random() < sentence_share else None
        e = encode(_TOK, p, aware > 0, stray, sent, _ENDS)
        if 0 < aware < 1 and random.Random(f"view:{i}").random() >= aware:  # this one under full attention
            e = e._replace(seg=[-1] * len(e.ids), sent=None)
        out.append(e)
    return out


def examples(tok_json: str, split: str, n: int, workers: int = 1, records_share: float = 0.25,
             chain: dict | None = None, zoomr_aware: float = 0.0, first: int = 0,
             stray: float = 0.0, sentences: sentence_view.SentenceSettings | None = None,
             sentence_share: float = 1.0) -> list[Example]:
    chunk = max(1, -(-n // (workers * 4)))
    ranges = [(split, lo, min(first + n, lo + chunk), records_share, chain or {}, zoomr_aware, stray, sentences,
               sentence_share) for lo in range(first, first + n, chunk)]
    if workers <= 1:
        _init(tok_json)
        return [e for r in ranges for e in _encode_range(r)]
    with ProcessPoolExecutor(workers, initializer=_init, initargs=(tok_json,)) as pool:
        return [e for part in pool.map(_encode_range, ranges) for e in part]


WARM_SIZES = ({"items": 2, "boxes": 8}, {"items": 3, "boxes": 12}, {"items": 4, "boxes": 16}, {"items": 6, "boxes": 24})
WARM_FIRST = 10_000_000  # warm-up problems' indices: never a main-set problem


def warm_examples(tok_json: str, n: int, workers: int = 1, zoomr_aware: float = 0.0) -> list[Example]:
    per = -(-n // len(WARM_SIZES))
    return [e for g, size in enumerate(WARM_SIZES)
            for e in examples(tok_json, "train", per, workers, 0.0, size, zoomr_aware, WARM_FIRST + g * per)]


def attention_mask(seg: torch.Tensor, own: torch.Tensor, stray: torch.Tensor | None = None,
                   sentences: sentence_view.SentenceBatch | None = None) -> torch.Tensor:
    """``[B, 1, S, S]`` bool: query ``q`` reads key ``k <= q`` that is no thought's detail, or ``own[q]``'s, or
    ``stray[q]``'s; with ``sentences``, of the prompt's leavable sentences only those its zoom handed back."""
    S = seg.shape[1]
    causal = torch.ones(S, S, dtype=torch.bool, device=seg.device).tril()
    readable = (seg[:, None, :] < 0) | (seg[:, None, :] == own[:, :, None])
    if stray is not None:
        readable = readable | (seg[:, None, :] == stray[:, :, None])
    mask = (causal[None] & readable)[:, None]
    return mask if sentences is None else sentence_view.restrict(mask, sentences)


class Batches:
    def __init__(self, data: list[Example], token_budget: int, pad_id: int, seed: int):
        if not data:
            raise ValueError("no training examples")
        self.data = sorted(data, key=lambda e: len(e.ids))
        self.budget, self.pad, self.rng = token_budget, pad_id, random.Random(seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        while True:
            i = self.rng.randrange(len(self.data))
            longest = len(self.data[i].ids)
            n = max(1, self.budget // longest)
            lo = max(0, min(i - n + 1, len(self.data) - n))  # neighbours in length order, the longest at i or below
            rows = self.data[lo:lo + n]
            width = max(len(e.ids) for e in rows)
            ids = torch.full((len(rows), width), self.pad, dtype=torch.int64)
            tgt = torch.full((len(rows), width), IGNORE, dtype=torch.int64)
            aware = rows[0].seg is not None
            seg = torch.full((len(rows), width), -1, dtype=torch.int16) if aware else None
            own = torch.full((len(rows), width), -1, dtype=torch.int16) if aware else None
            extra = torch.full((len(rows), width), -1, dtype=torch.int16) if aware else None
            for r, e in enumerate(rows):
                x = torch.tensor(e.ids)
                ids[r, : len(x)] = x
                tgt[r, e.prompt_len - 1: len(x) - 1] = x[e.prompt_len:]  # predict the trace and the eos
                if aware:
                    seg[r, : len(x)], own[r, : len(x)] = torch.tensor(e.seg), torch.tensor(e.own)
                    extra[r, : len(x)] = torch.tensor(e.stray)
            sent = (sentence_view.collate([e.sent for e in rows], width)
                    if aware and any(e.sent is not None for e in rows) else None)
            yield ids, tgt, (None if seg is None else (seg, own, extra, sent))
