"""Demotion in the ZoomR radix tree: tree-owned device spans of a locked chain become host nodes, many at once.

A mixin of ``ZoomRRadixCache`` (``zoomr_sgl.radix_tree``: node kinds, host ownership, device accounting), kept apart
because it is its own concept: who may demote, how the chain is cut, and one wait for all the copies.

Contract:
- ``demote_spans(last_node, spans, k_buffers, v_buffers, owners)`` -> one ``Demotion`` per ``(start, end)`` span of
  the sequence root -> ``last_node``, in order. A span goes when ``can_demote`` holds for it (the chain covers it,
  its nodes are device nodes, and each has ``lock_ref == 1``: only the caller's request, which locks ``last_node``,
  reads it; stock ``inc_lock_ref`` walks the whole chain, so a node's ``lock_ref`` counts the running requests whose
  matched prefix holds it; waiting requests hold no lock and are re-matched right before the adder locks them) and
  the host store gives it a block (``evict_host`` first when it is full); else it is refused (``READ_ELSEWHERE``,
  ``HOST_FULL``) and nothing of it changes. The chain is cut at the edges of the spans that go (one walk; a split
  node inherits its lock and sizes do not change), each span becomes host nodes backed by its own new block (owned
  by the tree, ``owners[i]`` recorded), every layer's KV is copied there (one batched copy for all the spans,
  ``HostDetailStore.copy_many_from_device``, with one handle; the nodes' values are views of one tensor of zeros),
  and once it has landed (one wait on CUDA, none on CPU) their device slots go back to the allocator at once and
  ``protected_size_`` drops by their count (the nodes stay locked). The caller zeroes its own ``req_to_token`` row
  over what went. No device value is read: a node is a device node exactly when it has no host pieces. With
  ``wait=False`` nothing waits and nothing is freed: each ``Demotion`` carries its span's ``slots`` and the copy's
  ``handle``, and the caller frees the slots once the copy has landed (a running request's, like an offload's:
  ``DetailMover.demoted``), so the step goes on while the KV crosses to the host. ``units[i]`` (default
  ``THOUGHT``) is what span ``i`` holds, recorded on its pieces for ``tree_readers``.
- ``demote(last_node, start, end, k_buffers, v_buffers, owner)``: the same for one span.
- ``can_demote(last_node, start, end)``: the rule above, without the host store.
"""

from __future__ import annotations

import bisect
from typing import Sequence

import torch
from sglang.srt.mem_cache.radix_cache import TreeNode


class TreeDemotion:
    """Mixin of ``ZoomRRadixCache`` (see the module contract); uses its ``host``, ``root_node``, ``_split_node``,
    ``evict_host``, ``_host_refs``, ``protected_size_``, ``counters`` and ``token_to_kv_pool_allocator``."""

    def demote(self, last_node: TreeNode, start: int, end: int, k_buffers, v_buffers, owner=None):
        return self.demote_spans(last_node, [(start, end)], k_buffers, v_buffers, [owner])[0]

    def can_demote(self, last_node: TreeNode, start: int, end: int) -> bool:
        if self.disable or self.host is None:
            return False
        return self._demotable(self._chain(last_node), start, end)

    def demote_spans(self, last_node: TreeNode, spans: Sequence[tuple[int, int]], k_buffers, v_buffers,
                     owners: Sequence, wait: bool = True, units: Sequence[str] | None = None) -> list:
        from zoomr_sgl.hooks import free_known_slots
        from zoomr_sgl.radix_tree import Demotion, HostPiece
        from zoomr_sgl.selection.base import THOUGHT

        results = [Demotion(None, Demotion.READ_ELSEWHERE)] * len(spans)
        if self.disable or self.host is None:
            return results
        chain = self._chain(last_node)
        blocks = {}
        for i, (start, end) in enumerate(spans):
            if not self._demotable(chain, start, end):
                continue
            block = self.host.allocate(end - start, owner=owners[i])
            if block is None and self.evict_host(end - start):  # never this chain's nodes: they are locked
                block = self.host.allocate(end - start, owner=owners[i])
            if block is None:
                results[i] = Demotion(None, Demotion.HOST_FULL)
            else:
                blocks[i] = block
        if not blocks:
            return results
        self._split_at(chain, sorted({edge for i in blocks for edge in spans[i]}))
        chain = self._chain(last_node)
        starts = [pos for pos, _ in chain]
        like = chain[-1][1].value  # every demoted node's value: a view of one tensor of zeros (one fill, not one each)
        holes = torch.zeros(sum(spans[i][1] - spans[i][0] for i in blocks), dtype=like.dtype, device=like.device)
        copies, at = [], 0
        for i, block in blocks.items():
            start, end = spans[i]
            nodes = [node for _, node in chain[bisect.bisect_left(starts, start):bisect.bisect_left(starts, end)]]
            slots = torch.cat([node.value for node in nodes]).to(torch.int64)
            assert len(slots) == end - start, (spans[i], [len(node.key) for node in nodes])
            copies.append((block, slots))
            self._host_refs[block.block_id] = [block, len(nodes)]
            offset = 0
            for node in nodes:
                node.value = holes[at:at + len(node.key)]
                at += len(node.key)
                node.zoomr_holes = None
                node.zoomr_host = (HostPiece(block, offset, len(node.key), units[i] if units else THOUGHT),)
                offset += len(node.key)
            self.protected_size_ -= end - start  # locked (lock_ref 1) nodes: their slots were protected
            self.counters["demoted_tokens"] += end - start
        handle = self.host.copy_many_from_device(copies, k_buffers, v_buffers)  # every span at once, one handle
        for i, (block, slots) in zip(blocks, copies):
            results[i] = Demotion(block) if wait else Demotion(block, None, slots, handle)
        if not wait:
            return results  # the caller frees each span's slots once its copy has landed
        handle.wait()
        free_known_slots(self.token_to_kv_pool_allocator, torch.cat([slots for _, slots in copies]))  # landed
        return results

    # ------------------------------------------------------------------ the chain
    def _chain(self, last_node: TreeNode) -> list[tuple[int, TreeNode]]:
        """``(position, node)`` of the nodes root -> ``last_node``, in order."""
        nodes = []
        while last_node is not None and last_node is not self.root_node:
            nodes.append(last_node)
            last_node = last_node.parent
        out, pos = [], 0
        for node in reversed(nodes):
            out.append((pos, node))
            pos += len(node.key)
        return out

    @staticmethod
    def _demotable(chain: list[tuple[int, TreeNode]], start: int, end: int) -> bool:
        if not chain or not 0 <= start < end or end > chain[-1][0] + len(chain[-1][1].key):
            return False
        starts = [pos for pos, _ in chain]
        covering = chain[bisect.bisect_right(starts, start) - 1:bisect.bisect_left(starts, end)]
        return all(node.lock_ref == 1 and not getattr(node, "zoomr_host", ()) for _, node in covering)

    def _split_at(self, chain: list[tuple[int, TreeNode]], edges: list[int]) -> None:
        """Cut the chain's nodes at every edge strictly inside one (ascending edges)."""
        for pos, node in chain:
            end = pos + len(node.key)
            for edge in edges[bisect.bisect_right(edges, pos):bisect.bisect_left(edges, end)]:
                self._split_node(node.key, node, edge - pos)  # the new parent is [pos, edge); ``node`` the rest
                pos = edge
