"""The zoom loss: train a reasoner's queries to find, by ZoomR's own score, the thought whose detail they need.

Why: ZoomR recalls the thoughts whose summary keys score highest against the step's query (``zoomr_sgl.scoring``).
A model trained with full attention, or with the needed detail handed back by an oracle, never learns to look at a
summary: its queries at the answer point at the detail itself, so the summaries of the thought it needs rank at
chance (``python -m reasoner.view_probe``). This loss makes that score a classifier over the closed thoughts.

Contract:
- ``zoom_loss(qs, ks, seg, own, ids, end_think)``: ``qs``/``ks`` are per scoring layer the post-RoPE queries
  ``[B, Hq, S, D]`` and keys ``[B, Hkv, S, D]`` of one forward; ``seg``/``own`` ``[B, S]`` the ZoomR view of
  ``reasoner.data.zoomr_view``. A row takes part when it is under that view (some ``seg`` >= 0) and its positions
  after ``</think>`` read a thought (``own`` >= 0 there: the thought the answer needs). For each such position, each
  closed thought is scored exactly as ``zoomr_sgl.scoring.thought_score`` scores it (its summary tokens, markers
  included: positions before ``</think>`` with ``seg`` -1 and ``own`` >= 0; max over tokens, mean over heads and
  layers, float32), and the loss is the cross-entropy of those scores against the needed thought, averaged over the
  positions of a row, then over the rows. Returns ``ZoomLoss(loss, rows)``: ``loss`` a scalar tensor (0 when
  ``rows`` is 0), differentiable in the queries and keys.
- The queries must come from a forward under ``blind(own, ids, end_think)``'s view: positions after ``</think>`` read
  no thought's detail. That is what the server's query holds when it decides its first recall there; under the
  training view (the oracle has handed the needed detail back) the query has already read the answer's thought, and
  the loss falls to zero without teaching the zoom anything (measured: train zoom loss 0.001, probe hit rate 10%).
- ``participants(seg, own, ids, end_think)`` ``[B]`` bool: the rows ``zoom_loss`` would take part with, so that
  the blind forward runs on those only.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


class ZoomLoss(NamedTuple):
    loss: torch.Tensor
    rows: int


def row_scores(qs, ks, r: int, qpos: torch.Tensor, spos: torch.Tensor, sid: torch.Tensor, thoughts: int):
    """Scores ``[P, thoughts]`` of row ``r``'s queries at ``qpos`` against the summaries at ``spos`` (thought ``sid``)."""
    return group_scores([q[r][:, qpos] for q in qs], [k[r][:, spos] for k in ks], sid, thoughts)


def group_scores(q_rows, k_rows, gid: torch.Tensor, groups: int) -> torch.Tensor:
    """ZoomR's score of ``P`` queries against ``groups`` groups of keys, ``[P, groups]`` float32: per scoring layer,
    ``q_rows`` ``[Hq, P, D]`` and ``k_rows`` ``[Hkv, N, D]`` with key ``n`` in group ``gid[n]``; the max over a group's
    keys of ``q·k / sqrt(D)``, then the mean over query heads (GQA: head ``h`` reads kv head ``h // group``) and
    layers. A group of one key is SentenceKV's sentence score (its mean key)."""
    per_layer = []
    for q, k in zip(q_rows, k_rows):
        hq, hkv, d = q.shape[0], k.shape[0], q.shape[-1]
        kr = k.float().repeat_interleave(hq // hkv, 0)  # [Hq, N, D]
        logits = q.float() @ kr.transpose(1, 2) / math.sqrt(d)  # [Hq, P, N]
        best = torch.full((hq, q.shape[1], groups), float("-inf"), device=logits.device)
        best = best.scatter_reduce(2, gid.expand(hq, q.shape[1], -1), logits, "amax", include_self=True)
        per_layer.append(best.mean(0))
    return torch.stack(per_layer).mean(0)


def summary_positions(seg: torch.Tensor, own: torch.Tensor, before: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One row's summary tokens (markers included) among the positions ``before`` marks: positions, and thought ids."""
    spos = torch.nonzero(before & (seg < 0) & (own >= 0)).flatten()
    return spos, own[spos].long()


def after_think(ids: torch.Tensor, end_think: int) -> torch.Tensor:
    """``[..., S]`` bool: the positions from the first ``</think>`` on."""
    return (ids == end_think).cumsum(-1) > 0


def blind(own: torch.Tensor, ids: torch.Tensor, end_think: int) -> torch.Tensor:
    """``own`` with no detail read after ``</think>`` (``[..., S]``, a copy): before the zoom's first recall."""
    return own.masked_fill(after_think(ids, end_think), -1)


def participants(seg: torch.Tensor, own: torch.Tensor, ids: torch.Tensor, end_think: int) -> torch.Tensor:
    return (seg >= 0).any(-1) & (after_think(ids, end_think) & (own >= 0)).any(-1)


def zoom_loss(qs, ks, seg: torch.Tensor, own: torch.Tensor, ids: torch.Tensor, end_think: int) -> ZoomLoss:
    losses = []
    for r in range(ids.shape[0]):
        if not bool((seg[r] >= 0).any()):
            continue
        after = after_think(ids[r], end_think)
        qpos = torch.nonzero(after & (own[r] >= 0)).flatten()
        spos, sid = summary_positions(seg[r], own[r], ~after)
        if not len(qpos) or not len(spos):
            continue
        scores = row_scores(qs, ks, r, qpos, spos, sid, int(sid.max()) + 1)
        target = own[r, qpos].long()
        losses.append(F.cross_entropy(scores, target))
    if not losses:
        return ZoomLoss(torch.zeros((), device=ids.device), 0)
    return ZoomLoss(torch.stack(losses).mean(), len(losses))
