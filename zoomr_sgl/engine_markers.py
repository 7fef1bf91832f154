"""Engine mode: the server closes a thought by forcing the opening summary marker, and closes a long summary by
forcing the closing one; the sampler then emits those tokens in place of what it sampled.

Contract:
- ``decide(st, last_two)`` after a request's step: when nothing is queued, at a boundary (the open thought reached
  ``max_thought_tokens``, or ``min_thought_tokens`` and its last token completes ``thought_delimiter``) it queues the
  opening marker's ids; in a summary of ``max_summary_tokens`` it queues the closing marker's. ``last_two`` are the
  stream's last two token ids (the delimiter test decodes them once per distinct pair, cached).
- ``next_token(st)`` pops the token the request's row must emit next step (-1: none) into a pending host map;
  ``publish()`` writes the rows that changed into the device buffer ``force_next`` in one indexed write per step,
  and nothing on a step where no row changed. ``forced_ids(req_pool_indices)`` reads that buffer for the sampler
  hook; ``any_forced`` says whether any row is set (the hook skips its work otherwise).
- ``clear(row)`` at admission and release.
"""

from __future__ import annotations

import torch

from zoomr_sgl.request_state import RequestZoom


class EngineMarkers:
    def __init__(self, tokenizer, rows: int, device: torch.device):
        self.tokenizer = tokenizer
        self.device = device
        self.force_next = torch.full((rows,), -1, dtype=torch.int64, device=device)
        self._set: dict[int, int] = {}  # rows whose device entry is not -1, with their token
        self._changes: dict[int, int] = {}  # row -> token to write at publish
        self._delim_cache: dict[tuple[str, int, int], bool] = {}
        self._marker_cache: dict[str, tuple[int, ...]] = {}
        self.forced_markers = 0

    def marker_ids(self, text: str) -> tuple[int, ...]:
        ids = self._marker_cache.get(text)
        if ids is None:
            ids = tuple(self.tokenizer.encode(text, add_special_tokens=False))
            self._marker_cache[text] = ids
        return ids

    @property
    def any_forced(self) -> bool:
        return bool(self._set)

    def decide(self, st: RequestZoom, last_two: tuple[int, int] | None) -> None:
        if st.forced:
            return
        seg, cfg = st.table.segmenter, st.config
        open_summary = seg.open_summary
        if open_summary is None:
            n = seg.length - seg.detail_start
            boundary = n >= cfg.max_thought_tokens or (
                n >= cfg.min_thought_tokens and last_two is not None
                and self._ends_with_delimiter(last_two, cfg.thought_delimiter)
            )
            if boundary:
                st.forced.extend(st.open_ids)
                self._count(st)
        elif seg.length - open_summary.summary_start - len(st.open_ids) >= cfg.max_summary_tokens:
            st.forced.extend(st.close_ids)
            self._count(st)

    def _count(self, st: RequestZoom) -> None:
        st.forced_markers += 1
        self.forced_markers += 1

    def next_token(self, st: RequestZoom) -> None:
        token = st.forced.popleft() if st.forced else -1
        if token != self._set.get(st.row, -1):
            self._changes[st.row] = token

    def clear(self, row: int) -> None:
        if row in self._set or row in self._changes:
            self._changes[row] = -1

    def publish(self) -> None:
        if not self._changes:
            return
        rows = torch.tensor(list(self._changes), dtype=torch.int64)
        tokens = torch.tensor(list(self._changes.values()), dtype=torch.int64)
        self.force_next.index_put_((rows.to(self.device, non_blocking=True),), tokens.to(self.device, non_blocking=True))
        for row, token in self._changes.items():
            if token < 0:
                self._set.pop(row, None)
            else:
                self._set[row] = token
        self._changes.clear()

    def forced_ids(self, req_pool_indices: torch.Tensor) -> torch.Tensor:
        return self.force_next[req_pool_indices.to(self.force_next.device)]

    def _ends_with_delimiter(self, last_two: tuple[int, int], delimiter: str) -> bool:
        key = (delimiter, *last_two)
        hit = self._delim_cache.get(key)
        if hit is None:
            hit = delimiter in self.tokenizer.decode(list(last_two)) and delimiter not in self.tokenizer.decode(
                [last_two[0]])
            if len(self._delim_cache) > 1 << 16:
                self._delim_cache.clear()
            self._delim_cache[key] = hit
        return hit
