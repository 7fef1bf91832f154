"""Per-request key bounds of closed pages, for the ``quest`` policy on the server.

Contract:
- ``PageBounds.add(k_buffers, row, pages)``: ``pages`` are page thoughts that just closed, consecutive, in order, the
  next ones after those already added (the segmenter's pages mode); ``row`` is the request's ``req_to_token`` row,
  read before the pages leave it. One gather of their slots at every scoring layer (``k_buffers``), then each page's
  per-channel min and max of its keys: ``kmin``/``kmax`` rows ``[L, Hkv, D]`` in the keys' dtype (a min or a max is
  one of the values, so nothing is rounded). No device value is read on the host.
- ``bounds(indices)``: those pages' ``(kmin, kmax)``, each ``[n, L, Hkv, D]``, for ``selection.quest.bound_scores``.
- Storage grows by doubling (amortised O(1) per page); it lives beside the KV pool, not in it: 2 x layers x heads x
  head dim values per page (12 KiB for 3 scoring layers of 8 x 128 bf16 heads).
"""

from __future__ import annotations

from typing import Sequence

import torch


class PageBounds:
    def __init__(self):
        self.count = 0
        self._lo: torch.Tensor | None = None  # [capacity, L, Hkv, D]
        self._hi: torch.Tensor | None = None

    def add(self, k_buffers: Sequence[torch.Tensor], row: torch.Tensor, pages) -> None:
        if not pages:
            return
        if pages[0].index != self.count:
            raise ValueError(f"page {pages[0].index} added after {self.count} pages")
        lo, hi = pages[0].detail_start, pages[-1].detail_end
        size = pages[0].detail_len
        n = len(pages)
        if hi - lo != n * size:
            raise ValueError("pages must be consecutive and of one size")
        slots = row[lo:hi].long()
        keys = torch.stack([buf[slots] for buf in k_buffers])  # [L, n * size, Hkv, D]
        L, _, Hkv, D = keys.shape
        keys = keys.view(L, n, size, Hkv, D)
        self._grow(self.count + n, (L, Hkv, D), keys.dtype, keys.device)
        self._lo[self.count:self.count + n] = keys.amin(dim=2).transpose(0, 1)
        self._hi[self.count:self.count + n] = keys.amax(dim=2).transpose(0, 1)
        self.count += n

    def bounds(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._lo[indices], self._hi[indices]

    def _grow(self, need: int, shape, dtype, device) -> None:
        have = 0 if self._lo is None else self._lo.shape[0]
        if need <= have:
            return
        cap = max(need, 2 * have, 64)
        lo = torch.empty((cap, *shape), dtype=dtype, device=device)
        hi = torch.empty_like(lo)
        if have:
            lo[:self.count], hi[:self.count] = self._lo[:self.count], self._hi[:self.count]
        self._lo, self._hi = lo, hi
