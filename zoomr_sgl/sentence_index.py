"""SentenceKV's index over a prompt: one mean key per closed sentence and scoring layer, and the query's ranking.

The second piece of the ``sentencekv`` policy (after ``zoomr_sgl.sentences``; the server's side is
``zoomr_sgl.prompt_sentences``).

Contract:
- ``build(k_buffers, slots, sentences)``: ``k_buffers`` is the scoring layers' key buffers (SGLang's
  ``MHATokenToKVPool.k_buffer[layer]``, each ``[pool_slots, Hkv, D]``, in scoring-layer order), ``slots`` the
  request's pool slot per prompt position (its ``req_to_token`` row), ``sentences`` the spans of
  ``sentences.sentences``; only the closed ones are indexed (the open tail is the recent window, never offloaded).
  Returns a ``SentenceIndex``: ``spans`` (the indexed ``Sentence``s, in order) and ``keys`` float32
  ``[S, L, Hkv, D]``, ``keys[s, l]`` = the mean over sentence ``s``'s positions of layer ``l``'s keys. On CUDA the
  means come from ``kernels.sentence_keys`` (one launch per layer, read straight from the pool), elsewhere from its
  torch reference; both are the same contract. Nothing else is read: computed once, at prefill, while the
  sentences' KV is still on the device.
- ``SentenceIndex.scores(query [L, Hq, D])`` -> float32 ``[S]``: ``zoomr_sgl.scoring``'s thought score with each
  sentence's mean key as a one-token summary, i.e. the mean over scoring layers and query heads (GQA: head ``h``
  reads kv head ``h // (Hq // Hkv)``) of ``q·k̄ / sqrt(D)``: a consensus of heads, as for thoughts.
- ``SentenceIndex.pick(scores, budget)``: the sentences to attend this step, ranked by ``scores`` (this index's, read
  to the host by the caller: like the zoom planner, once per step for every request due, not once per request) and
  taken while they fit ``budget`` tokens (``scoring.top_within_budget`` with no count limit), in rank order.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from zoomr_sgl.scoring import thought_scores, top_within_budget
from zoomr_sgl.sentences import Sentence


class SentenceIndex(NamedTuple):
    spans: tuple[Sentence, ...]
    keys: torch.Tensor  # [S, L, Hkv, D] float32

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        """Each sentence's score for this step's query (see the module contract)."""
        if not self.spans:
            return torch.zeros(0, dtype=torch.float32, device=self.keys.device)
        ones = torch.ones(len(self.spans), dtype=torch.int64, device=self.keys.device)
        return thought_scores(query.to(self.keys.device), self.keys[:, :, None], ones)

    def pick(self, scores: torch.Tensor, budget: int) -> tuple[int, ...]:
        """Indices into ``spans`` to attend, best first, filling ``budget`` tokens (see the module contract)."""
        if budget < 0:
            raise ValueError(f"a sentence budget must be >= 0, got {budget}")
        if scores.shape != (len(self.spans),):
            raise ValueError(f"{tuple(scores.shape)} scores for {len(self.spans)} sentences")
        sizes = torch.tensor([s.tokens for s in self.spans], dtype=torch.int64)
        return top_within_budget(scores, sizes, len(self.spans), budget)


def build(k_buffers: Sequence[torch.Tensor], slots: torch.Tensor, sentences: Sequence[Sentence]) -> SentenceIndex:
    """The index of ``sentences``' closed spans (see the module contract)."""
    if not k_buffers:
        raise ValueError("a sentence index needs at least one scoring layer's key buffer")
    spans = tuple(s for s in sentences if s.closed)
    kv_heads, head_dim = k_buffers[0].shape[1:]
    device = k_buffers[0].device
    if not spans:
        return SentenceIndex((), torch.zeros(0, len(k_buffers), kv_heads, head_dim, device=device))
    if spans[-1].end > slots.shape[0]:
        raise ValueError(f"sentences reach position {spans[-1].end}, the request has {slots.shape[0]} slots")
    starts = torch.tensor([s.start for s in spans], dtype=torch.int64, device=device)
    ends = torch.tensor([s.end for s in spans], dtype=torch.int64, device=device)
    if device.type == "cuda":
        from kernels.sentence_keys import sentence_mean_keys as means
    else:
        from kernels.sentence_keys import sentence_mean_keys_reference as means
    slots = slots.to(device)
    return SentenceIndex(spans, torch.stack([means(k, slots, starts, ends) for k in k_buffers], dim=1))
