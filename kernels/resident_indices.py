"""Resident-set index building: FlashInfer's ``kv_indptr`` / ``kv_indices`` over each request's resident slots.

Contract:
- A request's resident entries are the positions ``p < seq_len`` of its ``req_to_token`` row with a non-zero slot
  (0 is a hole: slot 0 is never handed out), **plus position ``seq_len - 1`` whatever it holds**. In decode that
  position is the token being decoded (a fresh slot, never a hole), so the rule changes nothing for a real request;
  it gives a CUDA-graph padding row (``req_pool_idx`` 0, ``seq_len`` 1, ``req_to_token[0, 0] == 0``) one entry,
  slot 0 (valid memory, as stock SGLang attends it), so **every row with ``seq_len >= 1`` has length >= 1** and
  FlashInfer never plans an empty request. A row with ``seq_len == 0`` has length 0. ``keep_last=False`` drops that
  rule (the prefix part of an extend, whose last position may be a hole): then only non-zero slots count.
- ``resident_lengths(req_to_token, req_pool_indices, seq_lens)`` -> int32 ``[bs]``: the resident count per row
  (the host needs it for FlashInfer's plan).
- ``resident_indices(req_to_token, req_pool_indices, seq_lens, kv_indptr_out=None, kv_indices_out=None, max_len=None)``
  -> ``ResidentIndices(kv_indptr, kv_indices, lens)``: ``kv_indptr`` int32 ``[bs + 1]`` (0, then the cumulative
  lengths), ``kv_indices[kv_indptr[i]:kv_indptr[i+1]]`` = row ``i``'s resident slots in position order, cast to the
  output's dtype (int32 by default). ``kv_indptr_out`` (>= bs+1 elements) and ``kv_indices_out`` (>= the total) are
  written in place when given (SGLang's indptr buffer, FlashInfer's CUDA-graph indices buffer); otherwise
  ``kv_indices`` is allocated with ``sum(seq_lens)`` elements (an upper bound known without a device sync) and only
  its first ``kv_indptr[bs]`` are written. ``max_len`` (a host int >= max(seq_lens)) sizes the grid; by default
  the batch max when ``seq_lens`` is on the CPU, else the row width. Nothing here syncs with the device.
- ``resident_indices_reference(...)``: the same in plain torch, row by row; the kernels must equal it exactly.

Kernels: both launch one program per (row, chunk of ``chunk`` positions), so a long row is spread over many SMs.
``_count_kernel`` writes per-chunk counts; ``lens`` is their row sum and ``kv_indptr`` its cumsum (torch);
``_write_kernel`` places chunk ``c`` of row ``i`` at ``kv_indptr[i] + sum(counts[i, :c])`` and compacts inside the
chunk with a prefix sum over blocks. Two passes over the row bytes (4 B a position), no atomics, deterministic.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

CHUNK = 4096  # positions per program: 16 x 32K rows -> 128 programs, about one per H100 SM
BLOCK = 1024  # positions per inner step


class ResidentIndices(NamedTuple):
    kv_indptr: torch.Tensor  # int32 [bs + 1]
    kv_indices: torch.Tensor  # [>= kv_indptr[bs]] slots, row after row, position order
    lens: torch.Tensor  # int32 [bs]


@triton.jit
def _resident_mask(req_to_token, row_stride, req_pool_indices, seq_lens, row, pos, KEEP_LAST: tl.constexpr):
    pool_row = tl.load(req_pool_indices + row).to(tl.int64)
    n = tl.load(seq_lens + row).to(tl.int64)
    inside = pos < n
    slot = tl.load(req_to_token + pool_row * row_stride + pos, mask=inside, other=0)
    if KEEP_LAST:  # the last position always: see the module contract
        keep = inside & ((slot != 0) | (pos == n - 1))
    else:
        keep = inside & (slot != 0)
    return slot, keep


@triton.jit
def _count_kernel(req_to_token, row_stride, req_pool_indices, seq_lens, counts, n_chunks,
                  CHUNK: tl.constexpr, BLOCK: tl.constexpr, KEEP_LAST: tl.constexpr):
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    kept = tl.zeros((BLOCK,), dtype=tl.int32)
    for b in tl.static_range(0, CHUNK, BLOCK):
        pos = chunk.to(tl.int64) * CHUNK + b + tl.arange(0, BLOCK)
        _, keep = _resident_mask(req_to_token, row_stride, req_pool_indices, seq_lens, row, pos, KEEP_LAST)
        kept += keep.to(tl.int32)
    tl.store(counts + row * n_chunks + chunk, tl.sum(kept, axis=0))


@triton.jit
def _write_kernel(req_to_token, row_stride, req_pool_indices, seq_lens, counts, n_chunks, kv_indptr, kv_indices,
                  CHUNK: tl.constexpr, BLOCK: tl.constexpr, MAX_CHUNKS: tl.constexpr, KEEP_LAST: tl.constexpr):
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    earlier = tl.arange(0, MAX_CHUNKS)
    before = tl.load(counts + row * n_chunks + earlier, mask=earlier < chunk, other=0)
    out = tl.load(kv_indptr + row).to(tl.int64) + tl.sum(before, axis=0).to(tl.int64)
    for b in tl.static_range(0, CHUNK, BLOCK):
        pos = chunk.to(tl.int64) * CHUNK + b + tl.arange(0, BLOCK)
        slot, keep = _resident_mask(req_to_token, row_stride, req_pool_indices, seq_lens, row, pos, KEEP_LAST)
        k = keep.to(tl.int32)
        at = out + tl.cumsum(k, axis=0).to(tl.int64) - 1  # inclusive prefix sum -> this entry's place
        tl.store(kv_indices + at, slot.to(kv_indices.dtype.element_ty), mask=keep)
        out += tl.sum(k, axis=0).to(tl.int64)


def _grid_len(req_to_token, seq_lens, max_len) -> int:
    if max_len is None:
        max_len = int(seq_lens.max()) if seq_lens.device.type == "cpu" and seq_lens.numel() else req_to_token.shape[1]
    return max(1, max_len)


def _counts(req_to_token, req_pool_indices, seq_lens, max_len, chunk, block, keep_last) -> torch.Tensor:
    if chunk % block:
        raise ValueError(f"chunk {chunk} must be a multiple of block {block}")
    if req_to_token.stride(1) != 1:
        raise ValueError("req_to_token rows must be contiguous")
    bs = seq_lens.shape[0]
    n_chunks = triton.cdiv(_grid_len(req_to_token, seq_lens, max_len), chunk)
    counts = torch.empty((bs, n_chunks), dtype=torch.int32, device=req_to_token.device)
    if bs:
        _count_kernel[(bs, n_chunks)](
            req_to_token, req_to_token.stride(0), req_pool_indices, seq_lens, counts, n_chunks, CHUNK=chunk, BLOCK=block,
            KEEP_LAST=keep_last,
        )
    return counts


def resident_lengths(req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
                     max_len: Optional[int] = None, chunk: int = CHUNK, block: int = BLOCK,
                     keep_last: bool = True) -> torch.Tensor:
    """Resident entries per row, int32 ``[bs]`` (see the module contract)."""
    counts = _counts(req_to_token, req_pool_indices, seq_lens, max_len, chunk, block, keep_last)
    return counts.sum(dim=1, dtype=torch.int32)


def resident_indices(
    req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
    kv_indptr_out: Optional[torch.Tensor] = None, kv_indices_out: Optional[torch.Tensor] = None,
    max_len: Optional[int] = None, chunk: int = CHUNK, block: int = BLOCK, keep_last: bool = True,
) -> ResidentIndices:
    """FlashInfer's ``kv_indptr`` / ``kv_indices`` over the resident entries (see the module contract)."""
    bs = seq_lens.shape[0]
    device = req_to_token.device
    counts = _counts(req_to_token, req_pool_indices, seq_lens, max_len, chunk, block, keep_last)
    lens = counts.sum(dim=1, dtype=torch.int32)
    if kv_indptr_out is None:
        kv_indptr = torch.empty(bs + 1, dtype=torch.int32, device=device)
    else:
        kv_indptr = kv_indptr_out[: bs + 1]
    kv_indptr[:1] = 0
    kv_indptr[1:] = torch.cumsum(lens, dim=0)
    if kv_indices_out is None:
        # sum(seq_lens) bounds the total without reading it back from the device
        upper = int(seq_lens.sum()) if seq_lens.device.type == "cpu" else req_to_token.shape[1] * bs
        kv_indices_out = torch.empty(max(upper, 1), dtype=torch.int32, device=device)
    if bs:
        n_chunks = counts.shape[1]
        _write_kernel[(bs, n_chunks)](
            req_to_token, req_to_token.stride(0), req_pool_indices, seq_lens, counts, n_chunks, kv_indptr,
            kv_indices_out, CHUNK=chunk, BLOCK=block, MAX_CHUNKS=max(16, triton.next_power_of_2(n_chunks)),
            KEEP_LAST=keep_last,
        )
    return ResidentIndices(kv_indptr, kv_indices_out, lens)


def resident_indices_reference(
    req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor, keep_last: bool = True
) -> ResidentIndices:
    """The contract in plain torch, one row at a time: exact ``kv_indices`` of length ``kv_indptr[bs]``."""
    rows = []
    for pool_row, n in zip(req_pool_indices.tolist(), seq_lens.tolist()):
        slots = req_to_token[pool_row, :n]
        keep = slots != 0
        if n and keep_last:
            keep[n - 1] = True
        rows.append(slots[keep])
    lens = torch.tensor([len(r) for r in rows], dtype=torch.int32, device=req_to_token.device)
    kv_indptr = torch.zeros(len(rows) + 1, dtype=torch.int32, device=req_to_token.device)
    kv_indptr[1:] = torch.cumsum(lens, dim=0)
    kv_indices = torch.cat(rows).to(torch.int32) if rows else req_to_token.new_empty(0, dtype=torch.int32)
    return ResidentIndices(kv_indptr, kv_indices, lens)
