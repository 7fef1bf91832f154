"""SentenceKV's view of a prompt, for training: which prompt sentences a query reads when the server serves the
request under ``sentencekv`` (the prompt's sentences offloaded, recalled by the query), with an oracle zoom.

Why: ZoomR keeps a problem's prompt on the device, and on the accuracy task that is about half of its peak device KV
(README, "Accuracy"). ``sentencekv`` moves the prompt out too, but a model that never saw holes in its prompt loses
the answers (0 and 1 of 6 on the CPU host): each step of a trace copies one line of the prompt's table, and the
server hands back only the sentences the query's score picked. This view trains under that, as ``reasoner.data``'s
``zoomr_view`` does for the output's thoughts, and ``reasoner.sentence_loss`` teaches the query to pick.

Contract:
- ``SentenceSettings``: the server settings trained for: ``min_tokens`` (``--zoomr-sentence-min-tokens``), ``sink``
  and ``recent`` (``--zoomr-sink-tokens``, ``--zoomr-recent-tokens``), ``budget`` (``--zoomr-sentence-budget``) and
  ``interval`` (``--zoomr-zoom-interval``).
- ``needs(prompt_enc, chat_prompt, user, trace_enc, trace, reads, spans)``: per position of the example, a tuple: at
  a trace position ``q``, the indices into ``spans`` of the sentences that hold the prompt lines
  (``reasoner.tasks.line_reads``) the line of the token at ``q + 1`` copies from; empty elsewhere, and a line whose
  sentence is not in ``spans`` (the sink, the recent window) is left out.
- ``sentence_view(prompt_ids, n, spans, need, s, rng)`` -> ``SentenceView`` over an example of ``n`` positions whose
  prompt is ``prompt_ids`` and whose leavable sentences are ``spans`` (``leavable``):
  - ``psent``: per position, the index of its leavable sentence, -1 elsewhere (the sink, the recent window, the
    trace): a query always reads a -1 key;
  - ``zpick``: per query position, the zoom whose pick it reads, -1 where it reads the whole prompt (the prompt and the
    first decode step, as the server: the sentences leave at the request's first zoom, after that step);
  - ``picks``: per zoom, the sentence indices it hands back.
  Zooms are at the first decode step's position (``prompt_len``), then at a phase drawn from ``rng`` and every
  ``interval`` positions (the server zooms on the scheduler's steps, so a request's phase is any). Zoom ``z``'s pick
  is readable from ``z + 1`` to the next zoom inclusive; it holds every sentence a query there needs (``need``) and
  one position beyond (a recall that lands a step late), then sentences drawn at random while they fit ``budget``
  tokens (the server's pick fills its budget by score; what fills it is, to the model, noise).
- ``collate(views, width)`` -> ``SentenceBatch`` (tensors of a batch's rows; None: a row that reads its whole prompt)
  and ``restrict(mask, batch)``: an attention mask ``[B, 1, S, S]`` with each query past the first decode step kept
  off the leavable sentences its zoom did not hand back (``reasoner.data.attention_mask`` applies it).
- ``leavable(prompt_ids, ends, s)``: the prompt's closed sentences the server lets leave
  (``zoomr_sgl.sentences.sentences`` from 0 with ``min_tokens``, then ``zoomr_sgl.selection.sentencekv.leaves``).
"""

from __future__ import annotations

import random
from typing import NamedTuple, Sequence

import torch

from zoomr_sgl.selection.sentencekv import leaves
from zoomr_sgl.sentences import Sentence, SentenceEnds, sentences


class SentenceSettings(NamedTuple):
    min_tokens: int = 4
    sink: int = 4
    recent: int = 32
    budget: int = 64
    interval: int = 4


class SentenceView(NamedTuple):
    psent: list[int]
    zpick: list[int]
    picks: list[list[int]]
    need: list[tuple[int, ...]]


class SentenceBatch(NamedTuple):
    """``collate``'s tensors: ``psent``, ``zpick`` ``[B, W]`` int16 (-1 on the padding), ``need`` ``[B, W, R]`` int16
    (a position's needs, -1 padded), ``picks`` ``[B, Z, N]`` bool (``picks[b, z, k]``: row ``b``'s zoom ``z`` hands
    sentence ``k`` back)."""
    psent: torch.Tensor
    zpick: torch.Tensor
    need: torch.Tensor
    picks: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> "SentenceBatch":
        return SentenceBatch(*(t.to(device, non_blocking=non_blocking) for t in self))

    def rows(self, index: torch.Tensor) -> "SentenceBatch":
        return SentenceBatch(*(t[index] for t in self))


def collate(views: Sequence[SentenceView | None], width: int) -> SentenceBatch:
    """The views of a batch's rows (None: a row under full attention of its prompt) as tensors of ``width`` columns."""
    B = len(views)
    zooms = max((len(v.picks) for v in views if v), default=0)
    count = max((max(v.psent) + 1 for v in views if v), default=0)
    reads = max((len(x) for v in views if v for x in v.need), default=0)
    out = SentenceBatch(torch.full((B, width), -1, dtype=torch.int16), torch.full((B, width), -1, dtype=torch.int16),
                        torch.full((B, width, max(reads, 1)), -1, dtype=torch.int16),
                        torch.zeros(B, max(zooms, 1), max(count, 1), dtype=torch.bool))
    for r, v in enumerate(views):
        if v is None:
            continue
        n = len(v.psent)
        out.psent[r, :n], out.zpick[r, :n] = torch.tensor(v.psent), torch.tensor(v.zpick)
        for q, ks in enumerate(v.need):
            if ks:
                out.need[r, q, : len(ks)] = torch.tensor(ks)
        for z, pick in enumerate(v.picks):
            out.picks[r, z, list(pick)] = True
    return out


def restrict(mask: torch.Tensor, sb: SentenceBatch) -> torch.Tensor:
    """``mask`` ``[B, 1, S, S]`` with every query that reads a zoom's pick (``zpick`` >= 0) kept off the leavable
    sentences that pick did not hand back (in place; returned)."""
    for r in range(mask.shape[0]):
        q = torch.nonzero(sb.zpick[r] >= 0).flatten()
        k = torch.nonzero(sb.psent[r] >= 0).flatten()
        if not len(q) or not len(k):
            continue
        kmax = int(k[-1]) + 1
        sent = sb.psent[r, :kmax]
        handed = sb.picks[r][sb.zpick[r, q].long()][:, sent.clamp_min(0).long()]  # [Q, kmax]
        mask[r, 0, q, :kmax] &= (sent < 0)[None] | handed
    return mask


def leavable(prompt_ids: Sequence[int], ends: SentenceEnds, s: SentenceSettings) -> list[Sentence]:
    n = len(prompt_ids)
    return [x for x in sentences(prompt_ids, ends, s.min_tokens, 0, n)
            if x.closed and leaves(x.start, x.end, n, s.sink, s.recent)]


def _char_tokens(offsets, size: int) -> list[int]:
    """Per character of a text of ``size`` characters, the token whose offsets cover it (-1: none)."""
    out = [-1] * size
    for t, (a, b) in enumerate(offsets):
        for c in range(a, min(b, size)):
            out[c] = t
    return out


def _line_starts(text: str) -> list[int]:
    return [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]


def needs(prompt_enc, chat_prompt: str, user: str, trace_enc, trace: str, reads: Sequence[tuple[int, ...]],
          spans: Sequence[Sentence]) -> list[tuple[int, ...]]:
    """See the module contract. ``prompt_enc``/``trace_enc`` are the tokenizer's encodings (``ids``, ``offsets``) of
    the chat prompt and of the trace; ``user`` is the user message inside ``chat_prompt``, whose lines ``reads``
    names."""
    prompt_len = len(prompt_enc.ids)
    user_at = chat_prompt.index(user)
    span_of = {pos: k for k, x in enumerate(spans) for pos in range(x.start, x.end)}
    char_tok = _char_tokens(prompt_enc.offsets, len(chat_prompt))
    starts = _line_starts(user)
    line_sentence = []  # per user line: the leavable sentence holding its last character's token
    for i, a in enumerate(starts):
        last = (starts[i + 1] - 1 if i + 1 < len(starts) else len(user)) - 1  # the character before its newline
        line_sentence.append(span_of.get(char_tok[user_at + max(a, last)], -1))
    tstarts = _line_starts(trace)
    need: list[tuple[int, ...]] = [()] * (prompt_len + len(trace_enc.ids) + 1)
    line = 0
    for j, (a, _) in enumerate(trace_enc.offsets):
        while line + 1 < len(tstarts) and tstarts[line + 1] <= a:
            line += 1
        # the query before a token predicts it
        need[prompt_len + j - 1] = tuple(dict.fromkeys(k for k in (line_sentence[i] for i in reads[line]) if k >= 0))
    return need


def sentence_view(prompt_ids: Sequence[int], n: int, spans: Sequence[Sentence], need: Sequence[tuple[int, ...]],
                  s: SentenceSettings, rng: random.Random) -> SentenceView:
    """See the module contract."""
    prompt_len = len(prompt_ids)
    psent = [-1] * n
    for k, x in enumerate(spans):
        psent[x.start:x.end] = [k] * x.tokens
    zooms = [prompt_len] + list(range(prompt_len + rng.randint(1, s.interval), n, s.interval))
    zpick, picks = [-1] * n, []
    for j, z in enumerate(zooms):
        nxt = zooms[j + 1] if j + 1 < len(zooms) else n
        zpick[z + 1:nxt + 1] = [j] * (min(nxt + 1, n) - min(z + 1, n))
        wanted = list(dict.fromkeys(k for ks in need[z + 1:nxt + 2] for k in ks))
        pick, used = _fill(wanted, spans, s.budget, [], 0)
        chosen = set(pick)
        others = [k for k in range(len(spans)) if k not in chosen]
        rng.shuffle(others)
        pick, _ = _fill(others, spans, s.budget, pick, used)
        picks.append(sorted(pick))
    return SentenceView(psent, zpick, picks, list(need))


def _fill(candidates, spans: Sequence[Sentence], budget: int, pick: list[int], used: int) -> tuple[list[int], int]:
    """``pick`` (holding ``used`` tokens) with each of ``candidates`` in order added while it fits ``budget``."""
    for k in candidates:
        if used + spans[k].tokens <= budget:
            pick.append(k)
            used += spans[k].tokens
    return pick, used
