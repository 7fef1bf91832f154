"""Debug: freed KV slots filled with NaN, so a step that reads a slot after it was freed turns its output NaN.

Contract (``ZOOMR_SGL_POISON_FREED=1`` in the scheduler's environment; off by default, and then nothing here runs):
- ``fill(slots)``: every slot handed back to SGLang's allocator (``hooks.free_without_holes``, the one path of every
  free, SGLang's and ZoomR's) gets NaN in every layer's K and V. The write is queued where a reuse would first write
  the slot: on the forward stream when the overlap scheduler runs on CUDA (SGLang's next forward, after the one in
  flight, which may still legally read a slot freed while it runs), else on the current stream. So a poisoned read
  means a plan still pointed at a slot after the earliest moment it could be reused: a hole not written, a free
  before the copy that read it had landed, a recall attended before its data.
- ``count(logits)``: in the sampler, the decode rows of a forward whose logits hold a NaN are added to a device
  counter (no host read); ``nan_rows()`` reads it (``/server_info``, the tests).
"""

from __future__ import annotations

import os

import torch

ENV_VAR = "ZOOMR_SGL_POISON_FREED"


class FreedSlotPoison:
    def __init__(self, kv_pool, stream=None):
        self.buffers = [*kv_pool.k_buffer, *kv_pool.v_buffer]
        self.stream = stream  # where a reuse first writes (the forward stream with overlap on CUDA), or None
        self._nan_rows = torch.zeros((), dtype=torch.int64, device=self.buffers[0].device)

    @staticmethod
    def enabled() -> bool:
        return os.environ.get(ENV_VAR) == "1"

    def fill(self, slots: torch.Tensor) -> None:
        if self.stream is None:
            self._fill(slots)
            return
        self.stream.wait_stream(torch.cuda.current_stream(slots.device))  # the slot list is made on this stream
        with torch.cuda.stream(self.stream):
            self._fill(slots)
        slots.record_stream(self.stream)

    def _fill(self, slots: torch.Tensor) -> None:
        idx = slots.to(self.buffers[0].device, torch.int64)
        for buf in self.buffers:
            buf.index_fill_(0, idx, float("nan"))

    def count(self, logits: torch.Tensor | None) -> None:
        if logits is not None and logits.numel():
            self._nan_rows += torch.isnan(logits).any(dim=-1).sum()

    def nan_rows(self) -> int:
        return int(self._nan_rows)
