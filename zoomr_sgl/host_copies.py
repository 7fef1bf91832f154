"""The host store's copies: every layer's K and V rows between SGLang's device buffers and the store's host rows.

A mixin of ``HostDetailStore`` (``zoomr_sgl.host_store``: the buffer, blocks, allocation), kept apart because moving
rows is its own concept. Its contract is the store's (``copy_from_device``, ``copy_many_from_device``,
``copy_to_device``, ``copy_many_to_device``, ``CopyHandle``); here, how:
- On CPU every copy is synchronous, one indexed copy per layer for all the items of a call.
- On CUDA a copy runs on the store's side stream after the current stream's pending work. To the host, rows are
  staged on the device at most ``STAGING_ROWS`` at a time (one ``kernels.kv_rows`` gather over every layer each) and
  go across one contiguous copy per host run. To the device, one contiguous copy per host run lands in one staging
  tensor and one ``kernels.kv_rows`` scatter writes every layer. In both directions runs that follow one another on
  the host (blocks allocated one after another: a prompt's sentences, demoted together) go as one copy. The index
  tensors a copy reads are made on the side stream, or recorded on it.
- Every item of a call is checked before anything is copied; the buffers once per call (they are the same for all).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from zoomr_sgl.host_store import HostBlock

STAGING_ROWS = 2048  # rows staged on the device per gather of a copy to the host (Qwen3-8B: 294 MiB)


class CopyHandle:
    """Completion of one copy: ``done()`` asks without blocking, ``wait()`` blocks until it has landed."""

    def __init__(self, event: "torch.cuda.Event | None" = None):
        self.event = event

    def done(self) -> bool:
        return self.event is None or self.event.query()

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()


class HostCopies:
    """Mixin of ``HostDetailStore``; uses its ``k``, ``v``, ``kv``, ``device``, ``_stream``, ``_check`` and
    ``_add_pending``."""

    def copy_from_device(self, block: HostBlock, k_buffers: Sequence[torch.Tensor],
                         v_buffers: Sequence[torch.Tensor], slots: torch.Tensor) -> CopyHandle:
        """Device slots -> this block, every layer."""
        return self.copy_many_from_device([(block, slots)], k_buffers, v_buffers)

    def copy_many_from_device(self, items: Sequence[tuple[HostBlock, torch.Tensor]],
                              k_buffers: Sequence[torch.Tensor], v_buffers: Sequence[torch.Tensor]) -> CopyHandle:
        """Each ``(block, slots)`` of ``items``: its device slots -> the block, every layer, with one handle for all of
        them. On CUDA the rows are staged on the device at most ``STAGING_ROWS`` at a time (one gather each) and go
        to the host one contiguous copy per run, runs that follow one another merged (a prompt demotes thousands of
        sentences at once)."""
        runs = self._checked_runs(items, k_buffers, v_buffers)
        if not items:
            return CopyHandle()
        if self._stream is None:
            return self._copy_on_cpu(items, runs, k_buffers, v_buffers, to_host=True)
        from kernels.kv_rows import gather_rows

        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)  # the KV to offload is ready
        buffers = [*k_buffers, *v_buffers]
        with torch.cuda.stream(self._stream):  # the index made on our stream: its memory is ours until we are done
            slots = torch.cat([s.to(self.device, non_blocking=True) for _, s in items])
            at = 0
            for start, count in _pieces(runs, STAGING_ROWS):
                host = self.kv[start:start + count].view(count, len(buffers), *self.kv.shape[3:])
                host.copy_(gather_rows(buffers, slots[at:at + count]), non_blocking=True)
                at += count
        return self._handed(items)

    def copy_to_device(self, block: HostBlock, k_buffers: Sequence[torch.Tensor],
                       v_buffers: Sequence[torch.Tensor], slots: torch.Tensor, after=None) -> CopyHandle:
        """This block -> device slots, every layer (after the work queued on stream ``after``, if given)."""
        return self.copy_many_to_device([(block, slots)], k_buffers, v_buffers, after=after)

    def copy_many_to_device(self, items: Sequence[tuple[HostBlock, torch.Tensor]], k_buffers: Sequence[torch.Tensor],
                            v_buffers: Sequence[torch.Tensor], after=None) -> CopyHandle:
        """Each ``(block, slots)`` of ``items`` -> its device slots, every layer, with one handle for all of them. The
        blocks' runs are copied in order, and runs that follow one another on the host go as one copy (a prompt's
        sentences were demoted together, so their blocks mostly do)."""
        runs = self._checked_runs(items, k_buffers, v_buffers)
        if not items:
            return CopyHandle()
        if self._stream is None:
            return self._copy_on_cpu(items, runs, k_buffers, v_buffers, to_host=False)
        from kernels.kv_rows import scatter_rows

        buffers = [*k_buffers, *v_buffers]
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)  # the freshly allocated slots are ready
        if after is not None:
            self._stream.wait_stream(after)
        total = sum(count for _, count in runs)
        with torch.cuda.stream(self._stream):  # the index made on our stream: its memory is ours until we are done
            slots = torch.cat([s.to(self.device, non_blocking=True) for _, s in items])
            staged = torch.empty((total, len(buffers), *self.kv.shape[3:]), dtype=self.kv.dtype, device=self.device)
            at = 0
            for start, count in runs:  # one contiguous host->device copy per run, into its place in ``staged``
                staged[at:at + count].copy_(self.kv[start:start + count].view(count, len(buffers), *self.kv.shape[3:]),
                                            non_blocking=True)
                at += count
            scatter_rows(buffers, slots, staged)
        return self._handed(items)

    def _copy_on_cpu(self, items, runs, k_buffers, v_buffers, to_host: bool) -> CopyHandle:
        """CPU: synchronous, every item at once, one indexed copy per layer."""
        slots, rows = torch.cat([s for _, s in items]), _rows(runs)
        for host, bufs in ((self.k, k_buffers), (self.v, v_buffers)):
            for layer, buf in enumerate(bufs):
                if to_host:
                    host[layer, rows] = buf[slots].to(host.dtype)
                else:
                    buf[slots] = host[layer, rows]
        return CopyHandle()

    def _checked_runs(self, items, k_buffers, v_buffers) -> list[tuple[int, int]]:
        """Every item checked (the buffers once: they are the same for all), then the items' merged host runs."""
        self._validate_buffers(k_buffers, v_buffers)
        for block, slots in items:
            self._validate_block(block, slots)
        return _merged_runs(block for block, _ in items)

    def _handed(self, items) -> CopyHandle:
        """The handle of the copies just queued on our stream; each block's copy is pending until it lands, and each
        caller's index tensor is read on our stream."""
        event = torch.cuda.Event()
        event.record(self._stream)
        handle = CopyHandle(event)
        for block, s in items:
            if s.is_cuda:
                s.record_stream(self._stream)
            self._add_pending(block, handle)
        return handle

    def _validate_buffers(self, k_buffers, v_buffers) -> None:
        if len(k_buffers) != self.k.shape[0] or len(v_buffers) != self.v.shape[0]:
            raise ValueError(f"expected {self.k.shape[0]} layers of K and V buffers")
        for buf in (*k_buffers, *v_buffers):
            if buf.dtype != self.k.dtype or buf.shape[1:] != self.k.shape[2:]:
                raise ValueError(f"device buffer {tuple(buf.shape)} {buf.dtype} does not match the host store")

    def _validate_block(self, block, slots) -> None:
        self._check(block)
        if slots.dim() != 1 or slots.numel() != block.num_tokens:
            raise ValueError(f"{slots.numel()} slots for a block of {block.num_tokens} tokens")


def _merged_runs(blocks) -> list[tuple[int, int]]:
    """The blocks' runs ``(host start, count)`` in order, a run that starts where the last one ended merged into it."""
    runs: list[list[int]] = []
    for block in blocks:
        for start, count in block.runs:
            if runs and runs[-1][0] + runs[-1][1] == start:
                runs[-1][1] += count
            else:
                runs.append([start, count])
    return [(start, count) for start, count in runs]


def _rows(runs) -> torch.Tensor:
    """The host rows of ``runs``, in order, as one index."""
    return torch.cat([torch.arange(start, start + count) for start, count in runs])


def _pieces(runs, longest: int):
    """``runs`` cut into pieces of at most ``longest`` rows, in order."""
    for start, count in runs:
        for lo in range(0, count, longest):
            yield start + lo, min(longest, count - lo)
