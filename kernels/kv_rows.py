"""Every layer's K and V rows of a set of pool slots, moved to or from one token-major staging tensor in one launch:
the device side of a host copy (``zoomr_sgl.host_store``), so an offload or a recall is one kernel and one
contiguous host<->device copy instead of two copies per layer.

Contract:
- ``buffers``: the pool's per-layer buffers, K layers then V layers (SGLang's ``k_buffer + v_buffer``), each
  ``[pool_slots, H, D]`` with contiguous rows, one dtype and device. ``slots``: int ``[n]`` pool slots.
- ``gather_rows(buffers, slots, out=None)`` -> ``[n, len(buffers), H, D]``: ``out[t, b] = buffers[b][slots[t]]``.
- ``scatter_rows(buffers, slots, staging)``: ``buffers[b][slots[t]] = staging[t, b]`` for every ``t``, ``b``
  (``slots`` distinct).
- ``gather_rows_reference`` / ``scatter_rows_reference``: the same in torch (the reference the tests compare with).
Kernel: one program per (token, buffer), copying the ``H * D`` elements of one row in blocks; the buffers are
reached from the first one's pointer by element offsets (computed on the host from ``data_ptr``, once per buffer
list), so one launch covers every layer.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _move_rows_kernel(base, offsets, slots, staging, row_elems, num_buffers, TO_STAGING: tl.constexpr,
                      BLOCK: tl.constexpr):
    t = tl.program_id(0)
    b = tl.program_id(1)
    slot = tl.load(slots + t).to(tl.int64)
    row = base + tl.load(offsets + b) + slot * row_elems
    stage = staging + (t.to(tl.int64) * num_buffers + b) * row_elems
    for start in range(0, row_elems, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        mask = idx < row_elems
        if TO_STAGING:
            tl.store(stage + idx, tl.load(row + idx, mask=mask), mask=mask)
        else:
            tl.store(row + idx, tl.load(stage + idx, mask=mask), mask=mask)


_offset_cache: dict[tuple, torch.Tensor] = {}


def _offsets(buffers: Sequence[torch.Tensor]) -> torch.Tensor:
    first = buffers[0]
    key = tuple(b.data_ptr() for b in buffers) + (str(first.device),)
    cached = _offset_cache.get(key)
    if cached is None:
        for b in buffers:
            if b.dtype != first.dtype or b.device != first.device or b.shape[1:] != first.shape[1:] \
                    or b.stride(0) != first.shape[1] * first.shape[2] or b.stride(2) != 1 or b.stride(1) != b.shape[2]:
                raise ValueError("row buffers must share dtype, device and row shape, with contiguous rows")
        elem = first.element_size()
        cached = torch.tensor([(b.data_ptr() - first.data_ptr()) // elem for b in buffers], dtype=torch.int64)
        cached = cached.to(first.device)
        if len(_offset_cache) > 64:
            _offset_cache.clear()
        _offset_cache[key] = cached
    return cached


def _launch(buffers: Sequence[torch.Tensor], slots: torch.Tensor, staging: torch.Tensor, to_staging: bool) -> None:
    n = slots.shape[0]
    if n == 0:
        return
    first = buffers[0]
    row_elems = first.shape[1] * first.shape[2]
    if tuple(staging.shape) != (n, len(buffers), *first.shape[1:]) or not staging.is_contiguous() \
            or staging.dtype != first.dtype:
        raise ValueError(f"staging {tuple(staging.shape)} does not match {n} slots x {len(buffers)} buffers")
    _move_rows_kernel[(n, len(buffers))](
        first, _offsets(buffers), slots.to(first.device), staging, row_elems, len(buffers),
        TO_STAGING=to_staging, BLOCK=min(BLOCK, triton.next_power_of_2(row_elems)),
    )


def gather_rows(buffers: Sequence[torch.Tensor], slots: torch.Tensor,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
    first = buffers[0]
    if out is None:
        out = torch.empty((slots.shape[0], len(buffers), *first.shape[1:]), dtype=first.dtype, device=first.device)
    _launch(buffers, slots, out, to_staging=True)
    return out


def scatter_rows(buffers: Sequence[torch.Tensor], slots: torch.Tensor, staging: torch.Tensor) -> None:
    _launch(buffers, slots, staging, to_staging=False)


def gather_rows_reference(buffers: Sequence[torch.Tensor], slots: torch.Tensor) -> torch.Tensor:
    index = slots.to(buffers[0].device, torch.int64)
    return torch.stack([b[index] for b in buffers], dim=1)


def scatter_rows_reference(buffers: Sequence[torch.Tensor], slots: torch.Tensor, staging: torch.Tensor) -> None:
    index = slots.to(buffers[0].device, torch.int64)
    for i, b in enumerate(buffers):
        b[index] = staging[:, i]
