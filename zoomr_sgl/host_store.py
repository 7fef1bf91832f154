"""Host detail store: every layer's K and V of offloaded thoughts, in one preallocated host buffer.

Contract:
- ``HostDetailStore(num_layers, capacity_tokens, kv_heads, head_dim, dtype, device)`` allocates one token-major
  buffer ``kv`` ``[capacity_tokens, 2, num_layers, kv_heads, head_dim]`` (K then V of every layer, per row) once,
  page-locked at its exact size when ``device`` is CUDA (so copies can be asynchronous; ``cudaHostRegister`` on a
  plain allocation, because torch's pinned allocator rounds up to a power of two: 72 GiB asked, 128 GiB taken),
  plain on CPU; a buffer that cannot be locked raises ``HostStoreError`` with its size; ``k`` and ``v`` are its
  ``[num_layers, capacity_tokens, kv_heads, head_dim]`` views. Nothing is allocated afterwards.
- ``allocate(num_tokens, owner)`` returns a ``HostBlock`` (one or a few contiguous runs of rows, lowest addresses
  first), or ``None`` when it cannot: with ``host_full_fallback='keep_on_device'`` whenever the free rows do not
  suffice (the caller keeps the detail on the device; counted in ``refused``); with ``'drop_oldest'`` it first frees
  the oldest blocks until the request fits, reports each through ``on_drop(block)`` (the block's ``owner`` says whose
  it was) and counts ``dropped_blocks``/``dropped_tokens``; a request larger than the whole store is refused without
  dropping anything.
- ``copy_from_device(block, k_buffers, v_buffers, slots)`` copies rows ``slots`` of every layer's device buffers
  (``[pool_slots, kv_heads, head_dim]``, SGLang's MHATokenToKVPool layout) into the block; ``copy_to_device`` copies
  the block back into the given slots (they may differ from the ones it came from). ``len(slots)`` must equal the
  block's token count. On CPU both are synchronous; on CUDA they run on a side stream after the current stream's
  pending work, and the returned ``CopyHandle`` says when they landed (``done()``) or waits for them (``wait()``).
  On CUDA each run of a block is one contiguous host<->device copy of its rows, staged on the device by one
  ``kernels.kv_rows`` launch over every layer (not two copies per layer). ``copy_to_device(..., after=stream)``
  also waits for the work already queued on ``stream`` (a forward in flight that may still read those slots).
  ``copy_many_to_device(items, k_buffers, v_buffers, after)`` and ``copy_many_from_device(items, k_buffers,
  v_buffers)`` do the same for several ``(block, slots)`` at once with one handle for all (a zoom recalls dozens of
  prompt sentences at once, a prompt's first zoom demotes thousands). How the rows move: ``zoomr_sgl.host_copies``.
  Consumers on the compute stream must ``wait()`` (or ``handle.event`` must be waited on) before reading.
- ``sized_capacity(tokens, bytes_per_token, pool_tokens)`` is ``host_store_tokens``, or for 0 what
  ``auto_capacity(pool_tokens, bytes_per_token, available_bytes)`` gives: ``AUTO_POOL_MULTIPLE`` times the device
  pool's tokens (ZoomR admits more requests than the pool would hold with full KV, and each keeps its detail here),
  within ``AUTO_HOST_SHARE`` of the host's available memory.
- Never silent corruption: block ids are never reused, and any use of a freed or dropped block raises
  ``StaleBlockError``. ``free`` waits for the block's copies in flight before its rows can be handed out again.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import weakref
from typing import Callable, Hashable, NamedTuple

import torch

from zoomr_sgl.config import HOST_FULL_FALLBACKS
from zoomr_sgl.host_copies import CopyHandle, HostCopies


logger = logging.getLogger("zoomr_sgl")

AUTO_POOL_MULTIPLE = 4
AUTO_HOST_SHARE = 0.25


def auto_capacity(pool_tokens: int, bytes_per_token: int, available_bytes: int) -> int:
    """Tokens of an automatically sized store (see the module contract); at least one."""
    budget = int(available_bytes * AUTO_HOST_SHARE)
    return max(1, min(AUTO_POOL_MULTIPLE * pool_tokens, budget // bytes_per_token))


def sized_capacity(tokens: int, bytes_per_token: int, pool_tokens: int) -> int:
    """``tokens`` (``host_store_tokens``), or for 0 what ``auto_capacity`` gives this pool and host (logged)."""
    if tokens:
        return tokens
    import psutil

    available = psutil.virtual_memory().available
    tokens = auto_capacity(pool_tokens, bytes_per_token, available)
    logger.info("ZoomR host store: %d tokens (%.2f GiB; device pool %d tokens, host memory available %.1f GiB)",
                tokens, tokens * bytes_per_token / 2**30, pool_tokens, available / 2**30)
    return tokens


class StaleBlockError(RuntimeError):
    """A freed or dropped host block was used."""


class HostStoreError(MemoryError):
    """The host buffer could not be allocated or page-locked."""


def _page_locked(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, Callable[[], None]]:
    """A host tensor locked in place at its exact size, and the call that unlocks it (before it is freed)."""
    buffer = torch.empty(shape, dtype=dtype)
    nbytes = buffer.numel() * buffer.element_size()
    cudart = torch.cuda.cudart()
    err = cudart.cudaHostRegister(buffer.data_ptr(), nbytes, 0)
    if getattr(err, "value", err) != 0:
        raise HostStoreError(f"cannot page-lock a {nbytes / 2**30:.1f} GiB host store ({err}); "
                             "lower --zoomr-host-store-tokens")
    return buffer, lambda: cudart.cudaHostUnregister(buffer.data_ptr())


class HostBlock(NamedTuple):
    block_id: int
    runs: tuple[tuple[int, int], ...]  # (first row, row count) in the host buffer
    num_tokens: int
    owner: Hashable


class HostStoreStats(NamedTuple):
    capacity_tokens: int
    used_tokens: int
    blocks: int
    dropped_blocks: int
    dropped_tokens: int
    refused: int  # allocations answered with None


class HostDetailStore(HostCopies):
    """Preallocated host memory for offloaded thought detail (see the module contract)."""

    def __init__(
        self,
        num_layers: int,
        capacity_tokens: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        fallback: str = "keep_on_device",
        on_drop: Callable[[HostBlock], None] | None = None,
    ):
        if fallback not in HOST_FULL_FALLBACKS:
            raise ValueError(f"host store fallback must be one of {HOST_FULL_FALLBACKS}, got {fallback!r}")
        if min(num_layers, capacity_tokens, kv_heads, head_dim) <= 0:
            raise ValueError("host store dimensions must be positive")
        self.device = torch.device(device)
        self.fallback, self.on_drop = fallback, on_drop
        self.capacity_tokens = capacity_tokens
        pin = self.device.type == "cuda"
        shape = (capacity_tokens, 2, num_layers, kv_heads, head_dim)
        if pin:
            self.kv, unlock = _page_locked(shape, dtype)
            weakref.finalize(self, unlock)  # the closure keeps the buffer alive until it is unlocked
        else:
            self.kv = torch.empty(shape, dtype=dtype)
        self.k, self.v = (self.kv[:, i].permute(1, 0, 2, 3) for i in (0, 1))  # [L, capacity, Hkv, D] views
        self._free: list[tuple[int, int]] = [(0, capacity_tokens)]  # sorted, coalesced (start, count) runs
        self._blocks: dict[int, HostBlock] = {}  # insertion order = age, oldest first
        self._pending: dict[int, list[CopyHandle]] = {}
        self._ids = itertools.count()
        self._dropped_blocks = self._dropped_tokens = self._refused = 0
        self._stream = torch.cuda.Stream(self.device) if pin else None

    # ------------------------------------------------------------------ allocation
    def allocate(self, num_tokens: int, owner: Hashable = None) -> HostBlock | None:
        if num_tokens <= 0:
            raise ValueError(f"a host block needs at least one token, got {num_tokens}")
        if num_tokens > self.capacity_tokens:
            self._refused += 1
            return None
        while self._free_tokens() < num_tokens:
            if self.fallback == "keep_on_device" or not self._blocks:
                self._refused += 1
                return None
            oldest = next(iter(self._blocks.values()))
            self.free(oldest)
            self._dropped_blocks += 1
            self._dropped_tokens += oldest.num_tokens
            if self.on_drop is not None:
                self.on_drop(oldest)
        block = HostBlock(next(self._ids), self._take(num_tokens), num_tokens, owner)
        self._blocks[block.block_id] = block
        return block

    def free(self, block: HostBlock) -> None:
        self._check(block)
        for handle in self._pending.pop(block.block_id, ()):
            handle.wait()  # its rows must not be handed out while a copy still touches them
        del self._blocks[block.block_id]
        for run in block.runs:
            self._give_back(run)

    def is_live(self, block: HostBlock) -> bool:
        return self._blocks.get(block.block_id) == block

    def stats(self) -> HostStoreStats:
        used = self.capacity_tokens - self._free_tokens()
        return HostStoreStats(
            self.capacity_tokens, used, len(self._blocks), self._dropped_blocks, self._dropped_tokens, self._refused
        )

    # ------------------------------------------------------------------ internals
    def _add_pending(self, block: HostBlock, handle: CopyHandle) -> None:
        """``handle`` is a copy in flight of ``block`` (``free`` waits for it); the landed ones are forgotten."""
        self._pending[block.block_id] = [h for h in self._pending.get(block.block_id, ()) if not h.done()] + [handle]

    def _check(self, block: HostBlock) -> None:
        if not self.is_live(block):
            raise StaleBlockError(f"host block {block.block_id} (owner {block.owner!r}) was freed or dropped")

    def _free_tokens(self) -> int:
        return sum(count for _, count in self._free)

    def _take(self, n: int) -> tuple[tuple[int, int], ...]:
        # One run if some free run fits (first fit keeps copies to one per layer); else lowest runs first.
        for i, (start, count) in enumerate(self._free):
            if count >= n:
                self._free[i:i + 1] = [(start + n, count - n)] if count > n else []
                return ((start, n),)
        runs = []
        while n:
            start, count = self._free[0]
            use = min(n, count)
            runs.append((start, use))
            self._free[0:1] = [(start + use, count - use)] if count > use else []
            n -= use
        return tuple(runs)

    def _give_back(self, run: tuple[int, int]) -> None:
        i = bisect.bisect_left(self._free, run)
        self._free.insert(i, run)
        # coalesce with the neighbours so a later block can take one run
        if i + 1 < len(self._free) and self._free[i][0] + self._free[i][1] == self._free[i + 1][0]:
            self._free[i:i + 2] = [(self._free[i][0], self._free[i][1] + self._free[i + 1][1])]
        if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] == self._free[i][0]:
            self._free[i - 1:i + 1] = [(self._free[i - 1][0], self._free[i - 1][1] + self._free[i][1])]
