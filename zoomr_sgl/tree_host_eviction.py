"""Host-row eviction in the ZoomR radix tree: leaves go, oldest first, until the host store has room.

A mixin of ``ZoomRRadixCache`` (``zoomr_sgl.radix_tree``: node kinds, host ownership, device accounting), kept apart
because it is its own concept: which leaves free host rows, and evicting exactly one leaf through the stock path.

Contract:
- ``evict_host(num_tokens)`` evicts leaves (LRU, by the tree's eviction strategy) until the host store has
  ``num_tokens`` free rows, and evicts nothing when the tree's host rows could not make that room anyway (the tree,
  device leaves included, is kept). It evicts only host leaves and device leaves below an unlocked host node
  (removing them exposes it as a leaf), never a device leaf on a branch with no host node, and never a locked node.
  Returns the tree's host rows freed. The manager and ``demote`` call it when the host store is full.
- Each leaf goes through the stock ``RadixCache.evict`` (slots freed, ``_delete_leaf``, events, metrics), which is
  made to see that leaf as the only evictable one.
"""

from __future__ import annotations

import heapq

from sglang.srt.mem_cache.base_prefix_cache import EvictParams
from sglang.srt.mem_cache.radix_cache import TreeNode


class TreeHostEviction:
    """Mixed into ``ZoomRRadixCache``: uses its ``host``, ``host_tokens()``, ``_deleted_leaves`` and stock state."""

    def evict_host(self, num_tokens: int) -> int:
        """Evict leaves, oldest first, until the host store has ``num_tokens`` free rows; nothing when even all of
        the tree's host rows would not make that room. Returns the tree's host rows freed."""
        if self.disable or self.host is None:
            return 0

        def free_rows() -> int:
            stats = self.host.stats()
            return stats.capacity_tokens - stats.used_tokens

        if free_rows() + self.host_tokens() < num_tokens:  # hopeless: keep the tree (device leaves included)
            return 0
        start = self.host_tokens()
        # Only leaves whose eviction frees host rows or exposes an (unlocked) host node above them; oldest first.
        heap = [(self.eviction_strategy.get_priority(x), id(x), x) for x in self.evictable_leaves
                if self._evicting_frees_host(x)]
        heapq.heapify(heap)
        while free_rows() < num_tokens and heap:
            _, _, x = heapq.heappop(heap)
            if x not in self.evictable_leaves:
                continue
            parent = x.parent
            if not self._evict_leaf(x):
                break
            if parent in self.evictable_leaves and self._evicting_frees_host(parent):
                heapq.heappush(heap, (self.eviction_strategy.get_priority(parent), id(parent), parent))
        return start - self.host_tokens()

    def _backs_host(self, node: TreeNode) -> bool:
        """``node`` holds host pieces of a live block (evicting it as a leaf can free host rows)."""
        return any(self.host is not None and self.host.is_live(p.block) for p in getattr(node, "zoomr_host", ()))

    def _evicting_frees_host(self, leaf: TreeNode) -> bool:
        """A host leaf, or a leaf with an unlocked host node above it (evicting that node's subtree, all unlocked
        since lock refs walk to the root, makes it a leaf). A leaf on a branch with no such node: False."""
        node = leaf
        while node is not None and node is not self.root_node and node.lock_ref == 0:
            if self._backs_host(node):
                return True
            node = node.parent
        return False

    def _evict_leaf(self, leaf: TreeNode) -> bool:
        """Evict exactly ``leaf`` through the stock ``evict`` (slots freed, ``_delete_leaf``, events, metrics): it
        sees ``leaf`` as the only evictable leaf and stops after it. False when nothing was deleted."""
        others = self.evictable_leaves
        others.discard(leaf)
        self.evictable_leaves = {leaf}
        deleted = self._deleted_leaves
        try:
            super().evict(EvictParams(num_tokens=1))
        finally:
            others |= self.evictable_leaves  # the parent, if ``leaf`` was its last child
            self.evictable_leaves = others
        return self._deleted_leaves != deleted
