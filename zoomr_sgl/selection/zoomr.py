"""``zoomr``: offload each closed thought's detail, and on zoom steps recall the few whose summaries the query
scores highest.

Contract (on a zoom step): candidates are the closed thoughts with a summary and a non-empty detail in ``HOST``,
``PARKED`` (the host store refused it: it waits in its device slots, out of the resident set), ``RECALLING`` or
``ZOOM`` (a ``DEVICE`` detail is attended anyway; a preset span of the table has no summary to score). A recall in flight
stays selected until it lands. The others are scored over their summary text keys (``StepInputs.score_summaries`` when
given, else ``scoring.thought_scores``), and ``scoring.top_within_budget`` picks up to ``zoom_topk`` of them (fewer by
the recalls in flight) within what they leave of ``zoom_budget``. ``recall`` = picked thoughts on the host or parked:
where the detail waits changes what a recall costs, never what is picked. The zoom
buffer is an LRU cache of ``zoom_budget`` tokens: thoughts recalled earlier stay (and are attended, at no copy cost)
until room is needed; ``evict`` = unpicked buffer members, least recently selected first (ties to the lower index),
just enough to fit the recalls. With ``zoom_retain`` false, ``evict`` is every unpicked buffer member: the step
attends only what this zoom picked (a detail recalled for an earlier step no longer competes with the one needed now).
"""

import torch

from zoomr_sgl.scoring import pad_summary_keys, thought_scores, top_within_budget
from zoomr_sgl.selection.base import THOUGHT, DetailAction, Policy
from zoomr_sgl.thought_table import ZOOMABLE_HOMES, Location


class ZoomRPolicy(Policy):
    name = "zoomr"
    detail_action = DetailAction.OFFLOAD
    zooms = True

    def host_units(self, config):  # a closed prompt thought's detail: borrowed from the tree and zoomed
        return frozenset({THOUGHT})

    @staticmethod
    def _candidates(table):
        return zoomable(table, preset=False)

    def to_score(self, table):
        cands = self._candidates(table)
        pinned = sum(s.location is Location.RECALLING for s in cands)
        if pinned >= table.config.zoom_topk:
            return ()
        return tuple(s.thought.index for s in cands if s.location is not Location.RECALLING)

    def zoom(self, table, inputs):
        cands = self._candidates(table)
        if not cands:
            return (), (), ()
        if inputs.score_summaries is None and (inputs.query is None or inputs.keys_at is None):
            raise ValueError("zoomr needs the step's query and keys (or a summary scorer) on a zoom step")
        cfg = table.config
        return zoom_within(table, cands, cfg.zoom_topk, cfg.zoom_budget, lambda free: summary_scores(table, inputs, free))


def zoomable(table, preset: bool) -> list:
    """The ``ThoughtState``s a zoom may pick or evict: a non-empty detail in ``HOST``, ``PARKED``, ``RECALLING`` or
    ``ZOOM``, of the table's preset thoughts (``preset``) or of its marker thoughts."""
    return [s for s in table.states() if s.location in (Location.HOST, Location.PARKED, Location.RECALLING, Location.ZOOM)
            and s.thought.detail_len > 0 and table.is_preset(s.thought.index) == preset]


def summary_scores(table, inputs, states) -> torch.Tensor:
    """``states``' thoughts scored over their summary text keys for this step's query (see the module contract)."""
    spans = [table.summary_positions(s.thought.index) for s in states]
    if inputs.score_summaries is not None:  # the Triton kernel on CUDA, or scores the server computed
        return inputs.score_summaries(spans)
    lengths = torch.tensor([len(p) for p in spans])
    keys = inputs.keys_at(torch.cat(spans))  # one gather for every summary: [L, total, Hkv, D]
    return thought_scores(inputs.query, pad_summary_keys(keys, lengths), lengths)


def zoom_within(table, cands, topk: int, budget: int, score) -> tuple[list[int], list[int], list[int]]:
    """The zoom over ``cands`` (``ThoughtState``s in ``HOST``/``PARKED``/``RECALLING``/``ZOOM``) as the module contract says, with
    ``topk`` picks at most and a buffer of ``budget`` tokens for them; ``score(free)`` scores the candidates not in
    flight. Returns ``(selected, recall, evict)``."""
    cfg = table.config
    pinned = [s.thought.index for s in cands if s.location is Location.RECALLING]
    pinned_tokens = sum(table.thought(i).detail_len for i in pinned)
    free = [s for s in cands if s.location is not Location.RECALLING]
    picked: list[int] = []
    if free and len(pinned) < topk:
        sizes = torch.tensor([s.thought.detail_len for s in free])
        ranks = top_within_budget(score(free), sizes, topk - len(pinned), budget - pinned_tokens)
        picked = [free[r].thought.index for r in ranks]
    selected = set(pinned) | set(picked)
    recall = [i for i in picked if table.location(i) in ZOOMABLE_HOMES]
    buffer = [s for s in cands if s.location not in ZOOMABLE_HOMES]
    tokens = sum(s.thought.detail_len for s in buffer) + sum(table.thought(i).detail_len for i in recall)
    evict = []
    unpicked = [s for s in buffer if s.thought.index not in selected]
    for s in sorted(unpicked, key=lambda s: (s.last_used, s.thought.index)):  # least recently selected first
        if cfg.zoom_retain and tokens <= budget:
            break
        evict.append(s.thought.index)
        tokens -= s.thought.detail_len
    return pinned + picked, recall, evict
