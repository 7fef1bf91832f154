"""The ZoomR radix tree: SGLang's ``RadixCache`` whose nodes may be host-backed thought details.

Registered as radix-cache backend ``zoomr`` (``hooks.register_radix_tree``; the launcher passes
``--radix-cache-backend zoomr`` with ``--enable-zoomr``). Subclass of SGLang's ``RadixCache``: every method not
named here is stock, and the overrides call ``super()``.

Contract:
- **Node kinds.** A *device node* is stock: ``value`` holds device slot ids. A *host node* has
  ``value = zeros(len(key))`` (stock match/split/cat keep working, and a request matching it gets holes, 0, written
  into its ``req_to_token`` row by stock code) and ``node.zoomr_host``: a tuple of ``HostPiece(block, offset,
  length)`` that, concatenated, hold the KV of the node's positions (rows ``offset .. offset+length`` of the
  ``HostBlock``, all layers). A node is never part device, part host: inserts split new nodes at hole-run edges.
- **Host ownership.** Blocks attached to nodes belong to the tree; a block may back several nodes (a split cuts a
  piece in two), so the tree counts pieces per block and frees the block (``HostDetailStore.free``) when its last
  piece goes: a host leaf evicted, ``reset`` (``/flush_cache``). A block the store dropped (``drop_oldest``) is
  left alone; ``host_spans`` reports it as ``None`` (unbacked).
- **Device accounting.** ``evictable_size()``/``protected_size()``, the lock-ref walks, ``_delete_leaf`` and
  ``evict``'s count are in device slots only (host nodes count 0), so SGLang's idle check ``available + evictable +
  protected == total`` holds. ``evict(n)`` keeps evicting leaves (LRU) until ``n`` device slots are free or nothing
  is evictable; evicting a host leaf frees its host blocks. Locked nodes (a running request's ``last_node`` chain:
  the request reads them, host nodes included) are never evicted: stock lock refs.
- **Finished requests** (``cache_finished_req``). Before it, the ZoomR manager makes every offloaded detail of the
  request a hole in its row and sets ``req.zoomr_host_spans = [(start, end, HostBlock), ...]``: the request's own
  blocks, each backing exactly the hole run ``[start, end)``. The tree takes them over: the sequence is inserted
  with each hole run of the new part as its own host node carrying its block; spans that fall where the tree
  already had the text (duplicates) or that are not inserted are freed here. Hole runs below
  ``req.cache_protected_len`` are the tree's own (the request matched them). A hole run past it with no span
  (a dropped detail, ``summary_only``) cannot be cached: the insert stops at its start and everything after it is
  freed. With ``is_insert=False`` (retract, abort) the device slots are freed by the stock path and every span's
  block is freed. Holes are never freed as slots: the stock free paths hand them to the allocator, whose ``free``
  drops zeros (``hooks.free_without_holes``, installed with the tree).
- **Admission** (manager side): ``host_spans(node)`` lists ``HostSpan(start, end, block, offset)`` along the
  chain root -> ``node`` (positions in the request's sequence; contiguous pieces of one block merged), so a request
  whose prefix matched host nodes knows which holes each block backs. It reads them under its own lock.
- ``evict_host(num_tokens)`` evicts leaves (LRU, host and device) until that many host tokens are free; the
  manager calls it when the host store is full.
- ``attach_host_store(store)``: the manager's ``HostDetailStore`` (built after the tree). Without one the tree
  holds no host nodes (spans handed to it are an error).
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch
from sglang.srt.mem_cache.base_prefix_cache import (
    DecLockRefResult,
    EvictParams,
    EvictResult,
    IncLockRefResult,
    InsertParams,
    InsertResult,
)
from sglang.srt.mem_cache.radix_cache import RadixCache, TreeNode

from zoomr_sgl.host_store import HostBlock, HostDetailStore

logger = logging.getLogger("zoomr_sgl")

BACKEND_NAME = "zoomr"


class HostPiece(NamedTuple):
    """Rows ``offset .. offset+length`` of ``block`` back ``length`` consecutive positions of a host node."""

    block: HostBlock
    offset: int
    length: int


class HostSpan(NamedTuple):
    """Positions ``[start, end)`` of a matched sequence are holes backed by ``block`` rows ``offset..``;
    ``block`` is None where the host store dropped the block (the positions are unbacked)."""

    start: int
    end: int
    block: HostBlock | None
    offset: int


def hole_runs(values: torch.Tensor) -> list[tuple[int, int]]:
    """Maximal runs ``[start, end)`` of zeros in a 1-D tensor."""
    holes = (values == 0).to(torch.int8).cpu()
    if not bool(holes.any()):
        return []
    edges = torch.diff(holes, prepend=torch.zeros(1, dtype=torch.int8), append=torch.zeros(1, dtype=torch.int8))
    starts = (edges == 1).nonzero().flatten().tolist()
    ends = (edges == -1).nonzero().flatten().tolist()
    return list(zip(starts, ends))


class ZoomRRadixCache(RadixCache):
    """RadixCache with host-backed detail nodes (see the module contract)."""

    def __init__(self, params):
        self.host: HostDetailStore | None = None
        self._host_refs: dict[int, list] = {}  # block_id -> [block, pieces referencing it]
        self._finishing: tuple | None = None  # (req, spans) during cache_finished_req's insert
        self._deleted_leaves = 0
        self.counters = dict(evicted_device_tokens=0, evicted_host_tokens=0, adopted_blocks=0, freed_spans=0)
        super().__init__(params)

    def state(self) -> dict:
        """Figures for ``/server_info`` (the manager reports them under ``tree``)."""
        return {"evictable_device_tokens": int(self.evictable_size_), "protected_device_tokens": int(self.protected_size_),
                "host_tokens": self.host_tokens(), "host_blocks": len(self._host_refs), **self.counters}

    # ------------------------------------------------------------------ wiring
    def attach_host_store(self, store: HostDetailStore) -> None:
        self.host = store

    # ------------------------------------------------------------------ reading
    @staticmethod
    def holes(node: TreeNode) -> int:
        """Host-backed (zero-valued) positions of ``node``; cached, recomputed on split."""
        n = getattr(node, "zoomr_holes", None)
        if n is None:
            value = node.value
            n = 0 if value is None or len(value) == 0 else int((value == 0).sum())
            node.zoomr_holes = n
        return n

    def host_spans(self, node: TreeNode) -> list[HostSpan]:
        """Host-backed positions of the sequence root -> ``node``, in order, contiguous pieces merged."""
        chain = []
        while node is not None and node is not self.root_node:
            chain.append(node)
            node = node.parent
        spans: list[HostSpan] = []
        pos = 0
        for n in reversed(chain):
            at = pos
            for piece in getattr(n, "zoomr_host", ()):
                block = piece.block if self.host is not None and self.host.is_live(piece.block) else None
                last = spans[-1] if spans else None
                if (last is not None and block is not None and last.block == block and last.end == at
                        and last.offset + (last.end - last.start) == piece.offset):
                    spans[-1] = last._replace(end=at + piece.length)
                else:
                    spans.append(HostSpan(at, at + piece.length, block, piece.offset))
                at += piece.length
            pos += len(n.key)
        return spans

    def host_tokens(self) -> int:
        """Host rows the tree holds (whole blocks)."""
        live = self.host.is_live if self.host is not None else (lambda b: False)
        return sum(b.num_tokens for b, _ in self._host_refs.values() if live(b))

    # ------------------------------------------------------------------ device-only accounting
    # Stock code counts len(node.key) / len(node.value) slots per node; a host node holds none. Each override
    # calls the stock method and then takes the hole count back out, so the stock logic itself stays in SGLang.
    def _insert_helper(self, node, key, value, priority: int = 0, chunked: bool = False):
        before = self.evictable_size_
        prefix_len, last = super()._insert_helper(node, key, value, priority, chunked)
        if self.evictable_size_ != before:  # a new leaf: stock counted len(key) slots
            self.evictable_size_ -= self.holes(last)
        return prefix_len, last

    def inc_lock_ref(self, node: TreeNode) -> IncLockRefResult:
        if self.disable:
            return super().inc_lock_ref(node)
        holes = self._chain_holes(node, lock_ref=0)
        result = super().inc_lock_ref(node)
        self.evictable_size_ += holes
        self.protected_size_ -= holes
        return IncLockRefResult(delta=(result.delta or 0) + holes)

    def dec_lock_ref(self, node: TreeNode, params=None) -> DecLockRefResult:
        if self.disable:
            return super().dec_lock_ref(node, params)
        holes = self._chain_holes(node, lock_ref=1)
        result = super().dec_lock_ref(node, params)
        self.evictable_size_ -= holes
        self.protected_size_ += holes
        return DecLockRefResult(delta=(result.delta or 0) - holes)

    def _chain_holes(self, node: TreeNode, lock_ref: int) -> int:
        """Holes of the nodes on the chain to the root whose lock count is ``lock_ref`` now (the ones the stock
        walk moves between evictable and protected)."""
        n = 0
        while node is not None and node is not self.root_node:
            if node.lock_ref == lock_ref:
                n += self.holes(node)
            node = node.parent
        return n

    def _delete_leaf(self, node: TreeNode):
        super()._delete_leaf(node)
        self.evictable_size_ += self.holes(node)  # stock took len(key) slots out
        self._deleted_leaves += 1
        holes = self.holes(node)
        self.counters["evicted_device_tokens"] += len(node.key) - holes
        self.counters["evicted_host_tokens"] += holes
        self._release_pieces(getattr(node, "zoomr_host", ()))
        node.zoomr_host = ()

    def evict(self, params: EvictParams) -> EvictResult:
        """Evict until ``params.num_tokens`` DEVICE slots are free. Stock ``evict`` stops once it has counted that
        many positions, host nodes included, so it is called again for the rest while it still removes leaves."""
        if self.disable:
            return super().evict(params)
        target, freed = params.num_tokens, 0
        while freed < target and self.evictable_leaves:
            before, deleted = self.evictable_size_, self._deleted_leaves
            super().evict(EvictParams(num_tokens=target - freed))
            freed += before - self.evictable_size_
            if self._deleted_leaves == deleted:
                break
        return EvictResult(num_tokens_evicted=freed)

    def evict_host(self, num_tokens: int) -> int:
        """Evict leaves, oldest first, until ``num_tokens`` host rows are free; returns the rows freed."""
        if self.disable or self.host is None:
            return 0
        start = self.host_tokens()
        while start - self.host_tokens() < num_tokens and self.evictable_leaves:
            deleted = self._deleted_leaves
            super().evict(EvictParams(num_tokens=1))  # one leaf (stock stops after the first)
            if self._deleted_leaves == deleted:
                break
        return start - self.host_tokens()

    def _split_node(self, key, child: TreeNode, split_len: int):
        pieces = getattr(child, "zoomr_host", ())
        new_node = super()._split_node(key, child, split_len)
        new_node.zoomr_holes = child.zoomr_holes = None
        if pieces:
            left, right, at = [], [], 0
            for p in pieces:
                if at + p.length <= split_len:
                    left.append(p)
                elif at >= split_len:
                    right.append(p)
                else:  # the piece straddles the cut: one more piece of the same block
                    cut = split_len - at
                    left.append(HostPiece(p.block, p.offset, cut))
                    right.append(HostPiece(p.block, p.offset + cut, p.length - cut))
                    self._host_refs[p.block.block_id][1] += 1
                at += p.length
            new_node.zoomr_host, child.zoomr_host = tuple(left), tuple(right)
        return new_node

    def reset(self):
        for block, _ in getattr(self, "_host_refs", {}).values():
            if self.host is not None and self.host.is_live(block):
                self.host.free(block)
        if hasattr(self, "_host_refs"):
            self._host_refs.clear()
        super().reset()

    # ------------------------------------------------------------------ finished requests
    def cache_finished_req(self, req, is_insert: bool = True, *, kv_len_to_handle: int):
        spans = list(getattr(req, "zoomr_host_spans", None) or ())
        req.zoomr_host_spans = None
        if spans and self.host is None:
            raise RuntimeError("host spans handed to a ZoomR tree without a host store")
        inserting = is_insert and not self.disable and not self.disable_finished_insert
        adopted: set[int] = set()
        self._finishing = (req, spans, adopted) if inserting else None
        try:
            super().cache_finished_req(req, is_insert, kv_len_to_handle=kv_len_to_handle)
        finally:
            self._finishing = None
            for _, _, block in spans:
                if block.block_id not in adopted and self.host.is_live(block):
                    self.host.free(block)
                    self.counters["freed_spans"] += 1
            self.counters["adopted_blocks"] += len(adopted)

    def insert(self, params: InsertParams) -> InsertResult:
        if self._finishing is None:
            return super().insert(params)
        req, spans, adopted = self._finishing
        self._finishing = None  # one insert per finished request
        key, value = params.key, params.value
        protected = req.cache_protected_len
        by_run = {(s, e): b for s, e, b in spans}
        runs = hole_runs(value)
        # A hole run past the protected prefix with no block of the request is unbacked: insert only up to it.
        end = len(key)
        for s, e in runs:
            if e > protected and (s, e) not in by_run:
                end = max(s, protected)
                break
        if end < len(key):
            tail = value[end:]
            self.token_to_kv_pool_allocator.free(tail[tail != 0])
        result = super().insert(InsertParams(key=key[:end], value=value[:end], priority=params.priority,
                                             chunked=params.chunked))
        start = result.prefix_len
        node = result.last_device_node
        if start < end and node is not None and len(node.key) == end - start:
            self._make_host_nodes(node, start, [(s, e, by_run[(s, e)]) for s, e in runs
                                                if e > start and s < end and (s, e) in by_run], adopted)
        return InsertResult(prefix_len=start, last_device_node=node)

    def _make_host_nodes(self, node: TreeNode, start: int, runs: list, adopted: set[int]) -> None:
        """``node`` (new, unlocked) covers positions ``[start, start+len)``: split it at the edges of ``runs``
        (``(s, e, block)`` hole runs) and attach each run's block to its node."""
        edges = sorted({x for s, e, _ in runs for x in (s, e) if start < x < start + len(node.key)})
        parts, at = [], start
        for x in edges:  # split off the left part each time; ``node`` keeps the right part
            parts.append((at, self._split_node(node.key, node, x - at)))
            at = x
        parts.append((at, node))
        for s, e, block in runs:
            for pos, part in parts:
                lo, hi = max(pos, s), min(pos + len(part.key), e)
                if lo < hi and lo == pos and hi == pos + len(part.key):
                    part.zoomr_host = (HostPiece(block, lo - s, hi - lo),)
                    entry = self._host_refs.setdefault(block.block_id, [block, 0])
                    entry[1] += 1
                    adopted.add(block.block_id)

    def _release_pieces(self, pieces) -> None:
        for p in pieces:
            entry = self._host_refs.get(p.block.block_id)
            if entry is None:
                continue
            entry[1] -= 1
            if entry[1] <= 0:
                del self._host_refs[p.block.block_id]
                if self.host is not None and self.host.is_live(p.block):
                    self.host.free(p.block)


def zoomr_radix_cache_factory(ctx) -> Any:
    """``register_radix_cache_backend`` factory: the ZoomR tree, or SGLang's own choice where the radix cache is
    disabled (ChunkCache) or the model needs a hybrid tree (ZoomR does not serve those)."""
    from sglang.srt.mem_cache.registry import default_radix_cache_factory

    if ctx.disable_radix_cache or ctx.is_hybrid_swa or ctx.is_hybrid_ssm or ctx.enable_hierarchical_cache:
        return default_radix_cache_factory(ctx)
    return ZoomRRadixCache(ctx.params)


def register_backend() -> None:
    """Register ``zoomr`` once per process (the registry raises on duplicates)."""
    from sglang.srt.mem_cache.registry import get_radix_cache_factory, register_radix_cache_backend

    if get_radix_cache_factory(BACKEND_NAME) is None:
        register_radix_cache_backend(BACKEND_NAME, zoomr_radix_cache_factory)
