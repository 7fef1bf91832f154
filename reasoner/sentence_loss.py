"""The sentence loss: train a reasoner's queries to pick, by SentenceKV's score, the prompt sentences they are about to
copy from.

Why: under ``sentencekv`` the server hands a query back only the prompt sentences whose mean keys its query scored
highest at the last zoom (``zoomr_sgl.sentence_index``). A model trained with its whole prompt in view has no reason to
make that score find the table line its next hop reads. ``reasoner.sentence_view`` trains it to read through the
holes; this loss makes the score a classifier over the prompt's leavable sentences, as ``reasoner.zoom_loss`` does
for thoughts' summaries.

Contract:
- ``sentence_loss(qs, ks, sb, interval)``: ``qs``/``ks`` per scoring layer the post-RoPE queries ``[B, Hq, S, D]``
  and keys ``[B, Hkv, S, D]`` of the forward under the view ``sb`` (a ``SentenceBatch``: a query there has read only
  the last zoom's pick, as the server's has when it decides the next). For each row with leavable sentences, each
  sentence's key is the mean of its positions' keys per layer and kv head (``zoomr_sgl.sentence_index``'s mean key),
  and each query from the first decode step's on is scored against them as the server scores it
  (``zoom_loss.group_scores`` with one key per sentence). A query at ``q`` could be a zoom, whose pick serves the
  queries up to ``q + interval`` (one more for a late recall): its targets are the sentences ``need`` names at
  ``q + 1 .. q + interval + 1``; the loss is the cross-entropy of its scores against each target, averaged over every
  (query, target) of a row, then over the rows. Returns ``SentenceLoss(loss, rows)``; ``loss`` is 0 when ``rows``
  is 0, and differentiable in the queries and keys.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from reasoner.sentence_view import SentenceBatch
from reasoner.zoom_loss import group_scores


class SentenceLoss(NamedTuple):
    loss: torch.Tensor
    rows: int


def mean_keys(ks, r: int, psent: torch.Tensor, count: int) -> list[torch.Tensor]:
    """Per layer, row ``r``'s ``[Hkv, count, D]`` mean key of each leavable sentence (``psent``: its positions)."""
    pos = torch.nonzero(psent >= 0).flatten()
    onehot = F.one_hot(psent[pos].long(), count).float()  # [P, count]
    share = onehot / onehot.sum(0).clamp_min(1.0)
    return [torch.einsum("hpd,pn->hnd", k[r][:, pos].float(), share) for k in ks]


def targets(need: torch.Tensor, interval: int) -> torch.Tensor:
    """``[S, (interval + 1) * R]`` from ``need`` ``[S, R]``: the sentences needed at ``q + 1 .. q + interval + 1``
    for each ``q`` (-1: none; a sentence needed at several of them is there each time)."""
    S, R = need.shape
    padded = torch.cat([need[1:].long(), need.new_full((interval + 1, R), -1).long()])  # [S + interval, R]
    return padded.unfold(0, interval + 1, 1)[:S].transpose(1, 2).reshape(S, (interval + 1) * R)


def sentence_loss(qs, ks, sb: SentenceBatch, interval: int) -> SentenceLoss:
    losses = []
    for r in range(sb.psent.shape[0]):
        count = int(sb.psent[r].max()) + 1
        reading = torch.nonzero(sb.zpick[r] >= 0).flatten()
        if count <= 0 or not len(reading):
            continue
        t = targets(sb.need[r], interval)
        wanted = (t >= 0).any(-1)
        wanted[: int(reading[0]) - 1] = False  # from the first decode step's query on
        qpos = torch.nonzero(wanted).flatten()
        if not len(qpos):
            continue
        scores = group_scores([q[r][:, qpos] for q in qs], mean_keys(ks, r, sb.psent[r], count),
                              torch.arange(count, device=qpos.device), count)  # [P, count]
        t = t[qpos]  # [P, (interval + 1) * R]
        which = torch.nonzero(t >= 0)
        losses.append(F.cross_entropy(scores[which[:, 0]], t[which[:, 0], which[:, 1]]))
    if not losses:
        return SentenceLoss(torch.zeros((), device=sb.psent.device), 0)
    return SentenceLoss(torch.stack(losses).mean(), len(losses))
