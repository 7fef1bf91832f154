"""Tensor parallelism: every TP rank of one scheduler takes ZoomR's decisions alike.

Why: with ``--tp N`` each rank holds ``1/N`` of the attention heads, in its KV pool and in its queries. A thought's
score (``zoomr_sgl.scoring``: the mean over heads and layers of each head's best summary logit) computed on one rank
would be the mean over that rank's heads only, so ranks could pick different recalls; their allocators would then
drift apart and the next collective would hang or the outputs go wrong. Everything else ZoomR decides (segmenting,
markers, admission, the radix tree, offload order) follows from token ids and settings, which every rank shares.

Contract:
- ``TPConsensus(scheduler)``: ``size`` is the world size of the scheduler's ``tp_group`` (1 without TP), ``group``
  that group's CPU (gloo) group.
- ``scores(local)``: ``local`` float32 ``[T]`` on the host, this rank's per-thought scores over its own heads;
  returns the scores over all heads, ``[T]``, bit for bit the same on every rank: the ranks' vectors are gathered
  (an exact copy) and averaged in rank order (ranks hold equal head counts, so the mean of their means is the mean
  over all heads). Every rank calls it at the same point with the same ``T`` (the zoom is planned from shared state).
  With ``size`` 1 it returns ``local`` and does nothing else.
- ``lockstep``: True with TP. Host copies then land at fixed points (``DetailMover`` waits for them where it would
  otherwise ask whether they are done), because "done yet?" is timing and may differ between ranks.
- Each rank's host store keeps its own heads: it copies from its own KV pool, so nothing here moves KV.
- Debug (``ZOOMR_SGL_CHECK_TP=1``, on every test server): ``verify(what, values)`` gathers ``values`` (ints: a
  digest of the step's zoom decisions, the allocator's free slots) from every rank and raises ``RuntimeError`` naming
  ``what`` when they differ. Without TP or the switch it does nothing.
"""

from __future__ import annotations

import os
import zlib
from typing import Any, Sequence

import torch

CHECKS = os.environ.get("ZOOMR_SGL_CHECK_TP") == "1"


def digest(items) -> int:
    """A digest of ``repr(items)`` that is the same in every process (``hash`` of a str is salted per process)."""
    return zlib.crc32(repr(items).encode())


class TPConsensus:
    def __init__(self, scheduler: Any):
        tp = getattr(scheduler, "tp_group", None)  # SGLang's GroupCoordinator of the model's TP ranks
        self.size = int(getattr(tp, "world_size", 1) or 1)
        self.group = getattr(tp, "cpu_group", None) if self.size > 1 else None
        if self.size > 1 and self.group is None:
            raise RuntimeError(f"tp size {self.size} but the scheduler has no TP CPU group to agree over")

    @property
    def lockstep(self) -> bool:
        return self.size > 1

    @property
    def checking(self) -> bool:
        """Whether ``verify`` compares anything (TP and ``ZOOMR_SGL_CHECK_TP``): callers build its values only then."""
        return self.size > 1 and CHECKS

    def scores(self, local: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return local
        local = local.to("cpu", torch.float32).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.size)]
        torch.distributed.all_gather(parts, local, group=self.group)
        total = parts[0].clone()
        for p in parts[1:]:  # rank order: the same additions on every rank
            total += p
        return total / self.size

    def verify(self, what: str, values: Sequence[int]) -> None:
        if not self.checking:
            return
        mine = torch.tensor(list(values), dtype=torch.int64)
        parts = [torch.empty_like(mine) for _ in range(self.size)]
        torch.distributed.all_gather(parts, mine, group=self.group)
        if any(not torch.equal(p, parts[0]) for p in parts):
            raise RuntimeError(f"TP ranks disagree on {what}: {[p.tolist() for p in parts]}")
