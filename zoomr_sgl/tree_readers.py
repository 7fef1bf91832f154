"""Who may read a host node: the ZoomR radix tree hands a request host-backed holes only where its policy reads them.

A mixin of ``ZoomRRadixCache`` (``zoomr_sgl.radix_tree``), kept apart because it is its own concept: the match a
request gets, not how nodes are stored.

Why: host nodes come from requests of one policy (SentenceKV's prompt sentences demoted at its first zoom, a
``zoomr`` request's closed thoughts) and are matched by requests of any other. A request whose policy attends its
whole prompt (``full``, ``streaming``, ``quest``, or served without ZoomR) that got those holes would attend around
them: served wrong, silently (seen 2026-12-08: a ``full`` request after a ``sentencekv`` one on the same prompt answered
0 of 12, alone 11 of 12). And a ``zoomr`` request cannot zoom a prompt sentence, which is no thought of its own.

Contract:
- Every host piece says what it holds (``HostPiece.unit``: ``selection.base.THOUGHT`` or ``SENTENCE``); every
  request says what it reads (``req.zoomr_host_units``, written by the manager's ``screen`` from
  ``Policy.host_units``; absent, e.g. never screened: nothing). A request that reads every unit (``UNITS``) takes the
  stock paths below without a walk.
- ``match_prefix(params)`` with ``params.req`` (the scheduler's match for a request): the stock match, cut right
  before the first node on its chain with a piece the request does not read. Host nodes are whole (never part
  device), so the cut falls on a node boundary and the result's nodes and indices stay consistent; the rest of the
  prompt is prefilled again, on the device. Without ``params.req`` (the stock code's own re-match inside
  ``cache_unfinished_req``, priority estimates): stock.
- ``cache_unfinished_req(req, chunked)``: stock when the request reads every host node its computed tokens would meet
  in the tree (always when the tree holds none). Otherwise the tokens it recomputed are not folded back onto the
  tree's host nodes (the stock method would free its fresh slots and write the tree's holes into its row): the
  request keeps its own row as its prefix (``req.prefix_indices``; nothing inserted, its lock and
  ``cache_protected_len`` unchanged), as SGLang's chunk cache does. Its finished insert is stock: positions the tree
  already holds are duplicates, freed.
"""

from __future__ import annotations

import torch
from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams, MatchResult
from sglang.srt.mem_cache.radix_cache import RadixKey, TreeNode

from zoomr_sgl.selection.base import UNITS


class TreeReaders:
    """Mixin of ``ZoomRRadixCache`` (see the module contract); uses its ``_host_refs``, ``req_to_token_pool`` and
    ``TreeDemotion._chain``."""

    def match_prefix(self, params: MatchPrefixParams) -> MatchResult:
        result = super().match_prefix(params)
        units = self._partial_reader(params.req)
        if units is None:
            return result
        cut = self._first_unread(result.last_device_node, units)
        if cut is None:
            return result
        node, length = cut
        return result._replace(device_indices=result.device_indices[:length], last_device_node=node,
                               last_host_node=node, best_match_node=node)

    def cache_unfinished_req(self, req, chunked=False):
        units = None if self.disable else self._partial_reader(req)
        if units is None:
            return super().cache_unfinished_req(req, chunked)
        token_ids = req.get_fill_ids()
        met = super().match_prefix(MatchPrefixParams(key=RadixKey(token_ids, req.extra_key)))
        if self._first_unread(met.last_device_node, units) is None:
            return super().cache_unfinished_req(req, chunked)
        row = self.req_to_token_pool.req_to_token[req.req_pool_idx, :len(token_ids)]
        req.prefix_indices = row.to(dtype=torch.int64, copy=True)

    def _partial_reader(self, req) -> frozenset[str] | None:
        """The units ``req`` reads when the tree holds host nodes and it may not read them all; else None (stock)."""
        if req is None or not self._host_refs:
            return None
        units = getattr(req, "zoomr_host_units", frozenset())
        return None if UNITS <= units else units

    def _first_unread(self, last: TreeNode | None, units: frozenset[str]) -> tuple[TreeNode, int] | None:
        """The node right before the first node of the chain root -> ``last`` with a piece outside ``units``, and the
        number of positions up to it; None when the request reads every host node there."""
        for pos, node in self._chain(last):
            if any(piece.unit not in units for piece in getattr(node, "zoomr_host", ())):
                return node.parent, pos
        return None
