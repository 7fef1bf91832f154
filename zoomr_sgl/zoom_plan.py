"""The zoom as a per-step plan: every request due to zoom this step is scored in one launch, the scores come to the
host in one copy, then each request's policy decides and the ``DetailMover`` applies.

Contract:
- ``ZoomPlanner.run(due, queries, step, headroom)``: ``due`` lists ``(RequestZoom, batch_index)`` of this decode
  step; ``queries[layer]`` is the step's ``[bs, Hq, D]`` post-RoPE queries at each scoring layer, in batch order.
  Missing queries skip the zoom for everyone (counted in ``totals['zooms_skipped']`` and logged once, never
  silent). For each request, ``policy.to_score(table)`` names the thoughts to score; their summary keys are read
  from the pool by slot (``req_to_token``) and scored by each request's own query: on CUDA by the Triton kernel
  (``kernels.thought_scoring``), elsewhere by ``zoomr_sgl.scoring.thought_scores`` over the gathered keys; both one
  launch for the whole step. ``policy.sentences_to_score(table)`` names the prompt sentences to score (``sentencekv``):
  each by its row of the request's ``SentenceIndex`` as a one-token summary, one launch for the step as well. The
  ``policy.pages_to_score(table)`` names the pages to score (``quest``): each by its key bounds
  (``page_bounds.PageBounds``, ``selection.quest.bound_scores``), one computation for the step as well. The
  scores are read to the host once, all kinds together (with tensor parallelism, averaged over the ranks' heads, the
  same on every rank: ``zoomr_sgl.tp_consensus``); ``policy.decide`` then runs per request on host data.
- Recall room: a recall takes fresh slots only if the allocator keeps ``headroom`` free slots afterwards (the next
  decode step's tokens), counting the slots its own evictions free. A recall that does not fit is trimmed
  (``recalls_trimmed``; a later zoom asks again) and the evictions that only made buffer room for it are not done.
  With ``zoom_retain`` false, or a policy that does not retain (``quest``), every eviction the policy lists is done
  first (it lists every unpicked detail).
- The selected thoughts still in the buffer are stamped most recently used (``ThoughtTable.touch``).
- With ``wait_for_recall`` the request's recalls are waited for before the next forward.
"""

from __future__ import annotations

import contextlib
import logging
from typing import NamedTuple, Sequence

import torch

from zoomr_sgl.detail_mover import DetailMover
from zoomr_sgl.host_clock import HostClock
from zoomr_sgl.request_state import RequestZoom
from zoomr_sgl.scoring import scores_over_padded
from zoomr_sgl.tp_consensus import digest
from zoomr_sgl.selection.base import StepInputs
from zoomr_sgl.selection.quest import bound_scores
from zoomr_sgl.thought_table import ZoomDecision

logger = logging.getLogger("zoomr_sgl")


class Plan(NamedTuple):
    """One due request's zoom: where its query sits in the batch and what it scores (thought indices)."""

    st: RequestZoom
    batch_index: int
    summaries: tuple[int, ...]  # marker thoughts, by their summary keys
    sentences: tuple[int, ...]  # prompt sentences (preset thoughts), by their mean keys
    pages: tuple[int, ...] = ()  # quest's pages, by their key bounds


def _given(scores: torch.Tensor, planned, what: str):
    """The policy's scorer: this request's slice of the step's scores, for exactly what was planned."""
    n = planned if isinstance(planned, int) else len(planned)

    def scorer(asked):
        if len(asked) != n or (not isinstance(planned, int) and tuple(asked) != tuple(planned)):
            raise RuntimeError(f"policy scored {len(asked)} {what}, {n} were planned")
        return scores
    return scorer


class ZoomPlanner:
    def __init__(self, kv_pool, req_to_token: torch.Tensor, scoring_layers: Sequence[int], mover: DetailMover,
                 allocator, agree=lambda scores: scores, verify=None):
        self.k_buffers = [kv_pool.k_buffer[layer] for layer in scoring_layers]
        self.scoring_layers = tuple(scoring_layers)
        self.req_to_token = req_to_token
        self.mover = mover
        self.allocator = allocator
        self.agree = agree  # this rank's scores -> the scores over every TP rank's heads (TPConsensus.scores)
        self.verify = verify  # debug, or None: the ranks took the same decisions (TPConsensus.verify)
        self.device = self.k_buffers[0].device
        self.totals = dict(zooms=0, zooms_skipped=0, recalls_trimmed=0, scored_thoughts=0, scored_sentences=0,
                           scored_pages=0)
        self._warned = False
        self.host_side = contextlib.nullcontext  # the step probe swaps in its pause (zoomr_sgl.step_probe)
        self.clock = HostClock()  # the manager hands its own: where a zoom's time goes, piece by piece

    def run(self, due: list[tuple[RequestZoom, int]], queries: dict, step: int, headroom: int) -> None:
        if not due:
            return
        if not all(layer in queries for layer in self.scoring_layers):
            self.totals["zooms_skipped"] += len(due)
            if not self._warned:
                logger.warning("zoom skipped: the attention backend gave no queries at scoring layers %s",
                               self.scoring_layers)
                self._warned = True
            return
        with self.clock.part("after_decode/zoom_score"):
            plans = [Plan(st, b, st.policy.to_score(st.table), st.policy.sentences_to_score(st.table),
                          st.policy.pages_to_score(st.table)) for st, b in due]
            summary_scores, sentence_scores, page_scores = self._score(plans, queries)
        room = int(self.allocator.available_size()) - headroom
        at_summary = at_sentence = at_page = 0
        taken = []
        for plan in plans:
            st = plan.st
            mine = summary_scores[at_summary:at_summary + len(plan.summaries)]
            theirs = sentence_scores[at_sentence:at_sentence + len(plan.sentences)]
            pages = page_scores[at_page:at_page + len(plan.pages)]
            at_summary += len(plan.summaries)
            at_sentence += len(plan.sentences)
            at_page += len(plan.pages)
            inputs = StepInputs(step, score_summaries=_given(mine, len(plan.summaries), "thoughts"),
                                score_sentences=_given(theirs, plan.sentences, "sentences"),
                                score_pages=_given(pages, plan.pages, "pages"))
            with self.host_side(), self.clock.part("after_decode/zoom_decide"):  # policies decide on host data only
                decision = st.policy.decide(st.table, inputs)
            room = self._apply(st, decision, room)
            self.totals["zooms"] += 1
            if self.verify is not None:
                taken.append((st.rid, decision.recall, decision.evict))
        if self.verify is not None:
            self.verify(f"the zoom of step {step}", [digest(taken), int(self.allocator.available_size())])

    # ------------------------------------------------------------------ scoring, once for the step
    def _score(self, plans: list["Plan"], queries) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every plan's summary scores, then its sentence scores, then its page scores, each kind in plan order: one
        device read."""
        dev = self.device
        to_dev = lambda values, dtype=torch.int64: torch.tensor(values, dtype=dtype).to(dev, non_blocking=True)  # noqa: E731
        batch_index = to_dev([p.batch_index for p in plans])
        q = torch.stack([queries[layer][batch_index] for layer in self.scoring_layers], dim=1)  # [B, L, Hq, D]
        parts = [self._score_summaries(plans, q, to_dev), self._score_sentences(plans, q, to_dev),
                 self._score_pages(plans, q, to_dev)]
        sizes = [len(p) for p in parts]
        if not sum(sizes):
            return torch.empty(0), torch.empty(0), torch.empty(0)
        scores = self.agree(torch.cat(parts).cpu())  # the step's one device read; with TP, the same on every rank
        a, b = sizes[0], sizes[0] + sizes[1]  # each kind's scores, in plan order
        return scores[:a], scores[a:b], scores[b:]

    def _score_summaries(self, plans, q, to_dev) -> torch.Tensor:
        rows, positions, owner, lengths = [], [], [], []
        for b, plan in enumerate(plans):
            for i in plan.summaries:
                lo, hi = plan.st.table.summary_span(i)
                rows.extend([plan.st.row] * (hi - lo))
                positions.extend(range(lo, hi))
                owner.append(b)
                lengths.append(hi - lo)
        if not owner:
            return torch.empty(0, device=self.device)
        self.totals["scored_thoughts"] += len(owner)
        dev = self.device
        slots = self.req_to_token[to_dev(rows), to_dev(positions)]
        if dev.type == "cuda":
            from kernels.thought_scoring import thought_scores_triton

            indptr = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)
            return thought_scores_triton(q.to(self.k_buffers[0].dtype).contiguous(), self.k_buffers,
                                         to_dev(owner, torch.int32), indptr.to(dev, non_blocking=True), slots)
        # the torch reference, padded by index on the host (no device value read before the scores)
        width, starts = max(lengths), [0]
        for n in lengths[:-1]:
            starts.append(starts[-1] + n)
        pad = torch.tensor([[s + min(j, n - 1) for j in range(width)] for s, n in zip(starts, lengths)])
        valid = torch.tensor([[j < n for j in range(width)] for n in lengths])
        picked = slots.long()[pad.to(dev)]  # [T, N]
        keys = torch.stack([buf[picked] for buf in self.k_buffers], dim=1)  # [T, L, N, Hkv, D]
        return scores_over_padded(q.float()[to_dev(owner)], keys, valid.to(dev))

    def _score_sentences(self, plans, q, to_dev) -> torch.Tensor:
        """Prompt sentences scored by their mean keys, a one-token summary each (``SentenceIndex.scores``)."""
        keys, owner = [], []
        for b, plan in enumerate(plans):
            if plan.sentences:
                keys.append(plan.st.sentences.keys[to_dev(plan.sentences)])
                owner.extend([b] * len(plan.sentences))
        if not owner:
            return torch.empty(0, device=self.device)
        self.totals["scored_sentences"] += len(owner)
        keys = torch.cat(keys)[:, :, None]  # [K, L, 1, Hkv, D]
        valid = torch.ones(len(owner), 1, dtype=torch.bool, device=self.device)
        return scores_over_padded(q.float()[to_dev(owner)], keys, valid)

    def _score_pages(self, plans, q, to_dev) -> torch.Tensor:
        """Quest's pages scored by their key bounds (``selection.quest.bound_scores``)."""
        lo, hi, owner = [], [], []
        for b, plan in enumerate(plans):
            if plan.pages:
                kmin, kmax = plan.st.pages.bounds(to_dev(plan.pages))
                lo.append(kmin)
                hi.append(kmax)
                owner.extend([b] * len(plan.pages))
        if not owner:
            return torch.empty(0, device=self.device)
        self.totals["scored_pages"] += len(owner)
        return bound_scores(q[to_dev(owner)], torch.cat(lo), torch.cat(hi))

    # ------------------------------------------------------------------ applying, with room
    def _apply(self, st: RequestZoom, decision: ZoomDecision, room: int) -> int:
        if not (decision.recall or decision.evict):
            st.table.touch(decision.selected)
            return room
        takes = lambda i: self.mover.recall_slots(st, i)  # noqa: E731  allocator slots a recall takes
        frees = lambda j: self.mover.evict_slots(st, j)  # noqa: E731  allocator slots an eviction frees
        size = lambda i: st.table.thought(i).detail_len  # noqa: E731  what the budget counts
        budget = st.config.zoom_budget
        buffered = st.table.zoom_tokens()
        spare = list(decision.evict)  # least recently selected first
        evict, recall, trimmed = [], [], []
        if not st.config.zoom_retain or st.policy.pages:  # the policy's whole list: the step attends only what this zoom picked
            evict, spare = spare, []
            buffered -= sum(size(j) for j in evict)
            room += sum(frees(j) for j in evict)
        for i in decision.recall:
            need, buf = [], buffered
            while buf + size(i) > budget and spare:
                need.append(spare.pop(0))
                buf -= size(need[-1])
            freed = sum(frees(j) for j in need)
            if buf + size(i) > budget or (takes(i) and takes(i) > room + freed):  # a parked recall takes none
                spare[:0] = need  # that room was for this recall only
                trimmed.append(i)
                continue
            evict += need
            recall.append(i)
            room += freed - takes(i)
            buffered = buf + size(i)
        with self.clock.part("after_decode/zoom_evict"):
            self.mover.evict_many(st, evict)
        with self.clock.part("after_decode/zoom_recall"):
            self.mover.recall_many(st, recall)
        st.table.touch([i for i in decision.selected if i not in trimmed])
        if trimmed:
            st.recalls_trimmed += len(trimmed)
            self.totals["recalls_trimmed"] += len(trimmed)
        if recall:
            with self.clock.part("after_decode/zoom_land"):
                self.mover.land(st, wait=st.config.wait_for_recall)
        return room
