"""SentenceKV in the server: a ``sentencekv`` request's prompt sentences, their mean-key index, and how they leave
the device.

The prompt's closed sentences are the request's preset thoughts (``ThoughtTable(preset=...)``: no summary). They stay
on the device, attended, through the prefill and the first decode step, so the request starts exactly as with full
attention. At its first zoom (its first decode step, whatever the zoom interval) the index is built from their keys,
every sentence the policy lets leave is parked, and the zoom picks among all of them; what it did not pick is then
demoted to a tree-owned host block and borrowed like any host-backed prompt thought, so a later request sharing the
prompt finds those sentences as host-backed holes and does not recompute them. Later zooms recall and evict them as
``zoomr`` does thoughts.

Contract:
- ``PromptSentences(tokenizer)``, one per scheduler: ``ends`` (``sentences.SentenceEnds``) is built from the tokenizer
  on first use, decoding each vocabulary id once.
- ``presets(cfg, prompt_ids, open_ids)``: the closed sentences (``sentences.sentences`` with
  ``cfg.sentence_min_tokens``, from position 0) of the prompt before its first opening summary marker (an earlier
  turn's marker thoughts are ``zoomr``'s), as ``(lo, hi)`` spans. Canonical: a prefix's spans are a prefix of the
  whole prompt's, which is what lets a later request borrow them.
- ``due(st)``: the request still has to take its first zoom (it has sentences and no index yet).
- ``leave(due, req_to_token, k_buffers, scoring_layers, host, mover)``, right before the zoom of the requests ``due``
  for their first one is planned (all of them at once: one index build for the step): builds each one's
  ``st.sentences`` (a ``SentenceIndex`` with one row per preset thought, ``k_buffers`` being the scoring layers' key
  buffers: device sentences' mean keys from the pool, borrowed ones' from their host block, dropped ones' zero: never
  candidates), then parks every ``DEVICE`` sentence the policy lets leave (``SentenceKVPolicy.may_leave``: outside
  the sink and recent windows; ``DetailMover.park``).
- ``demote_parked(st, borrow)``, after each zoom of such a request: every parked sentence goes to a tree-owned host
  block (``TreeBorrow.demote_parked``, asked once per sentence); one the tree refuses (shared with another running
  request, no host room, no ZoomR tree) stays parked: out of the resident set, zoomable, its memory not saved.
- Known limits: the prompt is whole on the device until the first zoom (the prefill needs it anyway); a later
  request whose prompt leaves the cached text inside a demoted sentence gets part of its block, which it can neither
  attend nor zoom (that sentence is dropped for it).
"""

from __future__ import annotations

from typing import Sequence

import torch

from zoomr_sgl.config import ZoomRConfig
from zoomr_sgl.host_store import HostBlock, HostDetailStore
from zoomr_sgl.request_state import RequestZoom
from zoomr_sgl.sentence_index import SentenceIndex, build
from zoomr_sgl.sentences import Sentence, SentenceEnds, sentences
from zoomr_sgl.thought_table import Location


class PromptSentences:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._ends: SentenceEnds | None = None
        self.totals = dict(sentence_indexes=0, sentences_indexed=0)

    @property
    def ends(self) -> SentenceEnds:
        if self._ends is None:
            self._ends = SentenceEnds.from_tokenizer(self.tokenizer)
        return self._ends

    def presets(self, cfg: ZoomRConfig, prompt_ids: Sequence[int], open_ids: Sequence[int]) -> list[tuple[int, int]]:
        cut = _first(prompt_ids, tuple(open_ids))
        spans = sentences(prompt_ids, self.ends, cfg.sentence_min_tokens, 0, cut)
        return [(s.start, s.end) for s in spans if s.closed]

    @staticmethod
    def due(st: RequestZoom) -> bool:
        return st.policy.prompt_sentences and st.sentences is None and bool(st.table.segmenter.preset)

    def leave(self, due: Sequence[RequestZoom], req_to_token: torch.Tensor, k_buffers: Sequence[torch.Tensor],
              scoring_layers: Sequence[int], host: HostDetailStore, mover) -> None:
        """Every request of ``due`` takes its first zoom now: their device sentences' mean keys come from one index
        build over all of them (one launch per scoring layer for the step, not per request)."""
        rows, spans, at = [], [], 0  # the due requests' rows end to end, and their device sentences in those terms
        device = {st.rid: [i for i in range(len(st.table.segmenter.preset)) if st.table.location(i) is Location.DEVICE]
                  for st in due}
        for st in due:
            on_device = device[st.rid]
            if on_device:
                end = st.table.thought(on_device[-1]).detail_end
                rows.append(req_to_token[st.row, :end])
                spans += [Sentence(at + st.table.thought(i).detail_start, at + st.table.thought(i).detail_end, True)
                          for i in on_device]
                at += end
        device_keys = build(k_buffers, torch.cat(rows), spans).keys if spans else None
        kv_heads, head_dim = k_buffers[0].shape[1:]
        taken = 0
        for st in due:
            table = st.table
            presets = [Sentence(lo, hi, True) for lo, hi in table.segmenter.preset]
            keys = torch.zeros(len(presets), len(k_buffers), kv_heads, head_dim, dtype=torch.float32,
                               device=k_buffers[0].device)
            on_device = device[st.rid]
            if on_device:
                keys[on_device] = device_keys[taken:taken + len(on_device)]
                taken += len(on_device)
            for i in range(len(presets)):
                if table.location(i) is Location.HOST and i in st.blocks:
                    keys[i] = host_mean_keys(host, st.blocks[i], scoring_layers).to(keys.device, non_blocking=True)
            st.sentences = SentenceIndex(tuple(presets), keys)
            self.totals["sentence_indexes"] += 1
            self.totals["sentences_indexed"] += len(presets)
            mover.park_many(st, [i for i in on_device if st.policy.may_leave(table, i, st.prompt_len)])

    @staticmethod
    def demote_parked(st: RequestZoom, borrow) -> None:
        borrow.demote_parked(st, [i for i in st.parked if st.table.is_preset(i)])


def host_mean_keys(host: HostDetailStore, block: HostBlock, layers: Sequence[int]) -> torch.Tensor:
    """Mean over a host block's rows of each of ``layers``' keys: float32 ``[len(layers), Hkv, D]`` on the host."""
    rows = torch.cat([torch.arange(start, start + count) for start, count in block.runs])
    return torch.stack([host.k[layer][rows].float().mean(dim=0) for layer in layers])


def _first(ids: Sequence[int], marker: tuple[int, ...]) -> int:
    """Where ``marker`` first begins in ``ids`` (``len(ids)`` when it never does)."""
    n = len(marker)
    first = marker[0]
    for pos, token in enumerate(ids):
        if token == first and tuple(ids[pos:pos + n]) == marker:
            return pos
    return len(ids)
