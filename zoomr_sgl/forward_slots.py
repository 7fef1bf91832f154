"""What ZoomR keeps per forward, so that the forward in flight and the forward whose results are being processed
never share a buffer (SGLang's overlap scheduler launches forward N+1 before it processes N's results).

Contract:
- Forwards are named by SGLang's ``batch.forward_iter`` (``Scheduler.forward_ct`` at launch; ``ScheduleBatch.copy``
  keeps it for the result processor). At most two forwards are outstanding at once and they are consecutive, so
  every per-forward buffer has one copy per parity ``forward_iter % 2``. A copy is written only for a forward whose
  same-parity predecessor has been processed: that predecessor no longer reads it, on the host or the device.
- Forced tokens (engine-mode markers): ``launch(forward_iter, forced)`` runs right before a decode forward is
  launched, with ``{row: token}`` for the rows that forward must emit a given token in (the requests' host queues
  hand each token to the row's next decode forward, whatever forwards run between). It writes those tokens, and -1
  over the rows its parity's copy forced last time, into that copy in one indexed write (nothing when neither set
  has a row). ``forced(forward_iter, req_pool_indices)``, in that forward's sampler, gives the token per batch row
  (-1: sample freely), or None when the forward forces no row.
- Queries at the scoring layers: ``keep_queries(forward_iter, bs, queries)`` runs in that forward after the model
  (the sampler hook). With ``graph_buffers`` (the CUDA backend's persistent ``[max_bs, Hq, D]`` buffers, rewritten by
  every forward) it copies their first ``bs`` rows into its parity's copy on the current (forward) stream; otherwise
  it keeps the tensors the backend handed over (``queries``: layer -> ``[bs, Hq, D]``, fresh per forward on CPU).
  ``queries(forward_iter)`` returns that forward's queries (layer -> ``[bs, Hq, D]``) when its results are
  processed, or ``{}`` when none were kept for it.
"""

from __future__ import annotations

import torch


class ForwardSlots:
    def __init__(self, rows: int, device: torch.device, graph_buffers: dict[int, torch.Tensor] | None = None):
        self.device = device
        self._forced = [torch.full((rows,), -1, dtype=torch.int64, device=device) for _ in range(2)]
        self._forced_rows: list[set[int]] = [set(), set()]
        self.graph_buffers = dict(graph_buffers or {})
        self._query_copies = [{layer: torch.zeros_like(buf) for layer, buf in self.graph_buffers.items()}
                              for _ in range(2)]
        self._kept: list[tuple[int, dict[int, torch.Tensor]] | None] = [None, None]  # (forward_iter, queries)

    # ------------------------------------------------------------------ forced tokens
    def launch(self, forward_iter: int, forced: dict[int, int]) -> None:
        p = forward_iter % 2
        changes = {row: -1 for row in self._forced_rows[p]}
        changes.update(forced)
        if changes:
            rows = torch.tensor(list(changes), dtype=torch.int64)
            tokens = torch.tensor(list(changes.values()), dtype=torch.int64)
            self._forced[p].index_put_((rows.to(self.device, non_blocking=True),),
                                       tokens.to(self.device, non_blocking=True))
        self._forced_rows[p] = set(forced)

    def forced(self, forward_iter: int, req_pool_indices: torch.Tensor) -> torch.Tensor | None:
        p = forward_iter % 2
        if not self._forced_rows[p]:
            return None
        return self._forced[p][req_pool_indices.to(self.device)]

    # ------------------------------------------------------------------ queries
    def keep_queries(self, forward_iter: int, bs: int, queries: dict[int, torch.Tensor]) -> None:
        p = forward_iter % 2
        if self.graph_buffers:
            copies = self._query_copies[p]
            for layer, buf in self.graph_buffers.items():
                copies[layer][:bs].copy_(buf[:bs])
            self._kept[p] = (forward_iter, {layer: copies[layer][:bs] for layer in copies})
        elif queries:
            self._kept[p] = (forward_iter, dict(queries))
        else:
            self._kept[p] = None

    def queries(self, forward_iter: int) -> dict[int, torch.Tensor]:
        kept = self._kept[forward_iter % 2]
        return kept[1] if kept is not None and kept[0] == forward_iter else {}
