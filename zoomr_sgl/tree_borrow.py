"""What a request borrows from the ZoomR radix tree: prompt thoughts whose detail is a tree-owned host block, and
tree-owned device detail it demotes to the host.

Contract (the manager's module docstring tells the whole story; this is the mechanism):
- ``prefix_holes(req)``: how many host-backed holes the prefix the tree matched for ``req`` holds (host data: the
  tree's host spans, clipped to ``len(req.prefix_indices)``); the extend that writes that prefix sets the row's
  count from it (``DetailMover.set_prefix_holes``).
- ``admit(st, req)``: the prefix holes (``st.reused_host_tokens``, from the row's count ``st.holes``, no device
  read) and which block backs which run (``st.tree_spans``).
- ``close_prompt_thought(st, index)``: a thought starting below ``protected_len``. Device detail stays (and, when the
  policy offloads and the detail is wholly tree-owned, is demoted, or parked where the tree refuses: its tree-owned
  slots out of this request's resident set, written back at its release; ``DetailMover.park``); holes backed by exactly one whole, live tree
  block start ``HOST`` with that block borrowed; any other holes make it ``DROPPED``.
- ``demote``: ``tree.demote`` makes the span one host node with a new tree-owned block; the row and
  ``req.prefix_indices`` get holes there (a parked detail's row has them already: ``demote_parked``, once per
  thought, for prompt sentences that left the device at their request's first zoom); refused (kept on the device, counted) when another running request reads
  it, the host store is full, or its rows are promised to other requests (``DetailMover.may_take``).
- Borrowed blocks are never freed by the request; ``release(st)`` forgets the request's borrows and hands its own
  blocks to the tree (``req.zoomr_host_spans``) when it will be inserted, else frees them.
- ``on_host_drop(block)``: the store dropped a block; every running request that borrowed or owned it loses that
  thought (``DetailMover.lose``).
"""

from __future__ import annotations

import torch

from zoomr_sgl.detail_mover import CHECKS, DetailMover
from zoomr_sgl.host_store import HostBlock, HostDetailStore
from zoomr_sgl.radix_tree import Demotion, hole_runs
from zoomr_sgl.request_state import RequestZoom
from zoomr_sgl.selection.base import DetailAction


class TreeBorrow:
    def __init__(self, tree, host: HostDetailStore, mover: DetailMover, requests: dict[str, RequestZoom]):
        self.tree = tree  # ZoomRRadixCache, or None with another tree
        self.host = host
        self.mover = mover
        self.requests = requests
        self._borrowers: dict[int, set[tuple[str, int]]] = {}  # tree block id -> (rid, thought) borrowing it
        self.totals = dict(demoted_tokens=0, kept_shared_tokens=0)

    def prefix_holes(self, req) -> int:
        prefix = getattr(req, "prefix_indices", None)
        if self.tree is None or req.last_node is None or prefix is None or not len(prefix):
            return 0
        return self.tree.prefix_holes(req.last_node, len(prefix))

    def admit(self, st: RequestZoom, req) -> None:
        if self.tree is None or req.last_node is None:
            return
        st.reused_host_tokens = st.holes  # the row's count, set from the tree when its prefill was launched
        if CHECKS:
            on_device = int((self.mover.req_to_token[st.row, :st.protected_len] == 0).sum())
            if on_device != st.holes:
                zeros = (self.mover.req_to_token[st.row, :st.protected_len] == 0).nonzero().flatten().tolist()
                raise RuntimeError(f"request {st.rid}: {on_device} prefix holes in its row, {st.holes} counted; "
                                   f"zeros {zeros} spans {self.tree.host_spans(req.last_node)} prefix "
                                   f"{len(req.prefix_indices)} protected {st.protected_len}")
        if st.reused_host_tokens:
            st.tree_spans = self.tree.host_spans(req.last_node)

    def make_host_room(self, num_tokens: int) -> bool:
        return self.tree is not None and bool(self.tree.evict_host(num_tokens))

    def close_prompt_thought(self, st: RequestZoom, index: int) -> None:
        t = st.table.thought(index)
        if t.detail_len == 0:
            return
        runs = self._prefix_hole_runs(st, t.detail_start, t.detail_end)
        if CHECKS:
            on_device = hole_runs(self.mover.req_to_token[st.row, t.detail_start:t.detail_end])
            if on_device != runs:
                raise RuntimeError(f"request {st.rid}: prompt thought {index} has hole runs {on_device} in its row, "
                                   f"{runs} from the tree's spans")
        if not runs:
            if st.table.is_preset(index):  # a prompt sentence: attended until the request's first zoom
                return
            if st.policy.detail_action is DetailAction.OFFLOAD and t.detail_end <= st.protected_len \
                    and not self._demote(st, [index])[0]:
                self.mover.park(st, index)  # the tree's slots, out of this request's resident set until its release
            return
        span = None
        if len(runs) == 1:
            lo, hi = t.detail_start + runs[0][0], t.detail_start + runs[0][1]
            span = next((s for s in st.tree_spans if s.start == lo and s.end == hi and s.offset == 0
                         and s.block is not None and s.block.num_tokens == hi - lo
                         and self.host.is_live(s.block)), None)
        if span is None:
            st.table.drop(index)
            return
        st.table.mark_offloaded(index)
        if (span.start, span.end) != (t.detail_start, t.detail_end):
            st.spans[index] = (span.start, span.end)
        self._borrow(st, index, span.block)

    @staticmethod
    def _prefix_hole_runs(st: RequestZoom, lo: int, hi: int) -> list[tuple[int, int]]:
        """Maximal hole runs of the row in ``[lo, hi)`` (below ``protected_len``), relative to ``lo``: the tree's host
        spans of the matched prefix, the only holes a prompt thought has when it closes (host data, no device read;
        ``ZOOMR_SGL_CHECK_HOLES=1`` compares them with the row)."""
        runs: list[tuple[int, int]] = []
        for s in st.tree_spans:
            a, b = max(s.start, lo) - lo, min(s.end, hi) - lo
            if a < b:
                if runs and runs[-1][1] == a:
                    runs[-1] = (runs[-1][0], b)
                else:
                    runs.append((a, b))
        return runs

    def demote_parked(self, st: RequestZoom, indices: list[int]) -> None:
        """Asks the tree, once per thought and all in one batch, to demote parked (tree-owned) details; a refused one
        stays parked."""
        todo = [i for i in indices if i not in st.demotion_tried and st.table.thought(i).detail_end <= st.protected_len]
        st.demotion_tried.update(indices)
        if todo:
            self._demote(st, todo)

    def _demote(self, st: RequestZoom, indices: list[int]) -> list[bool]:
        """Demote these thoughts' tree-owned device detail (``tree.demote_spans``); which ones went."""
        req, went = st.req, [False] * len(indices)
        if self.tree is None or req is None or req.last_node is None:
            return went
        thoughts = [st.table.thought(i) for i in indices]
        if self.mover.may_take is not None and not self.mover.may_take(st, sum(t.detail_len for t in thoughts)):
            return went  # those host rows are promised to requests charged by their bound
        results = self.tree.demote_spans(req.last_node, [(t.detail_start, t.detail_end) for t in thoughts],
                                         self.mover.kv_pool.k_buffer, self.mover.kv_pool.v_buffer,
                                         [("zoomr-tree", st.rid, i) for i in indices],  # 3-tuples: the tree's blocks
                                         wait=False)  # the step goes on; the request frees the slots once landed
        prefix = getattr(req, "prefix_indices", None)
        prefix = prefix.clone() if isinstance(prefix, torch.Tensor) else None
        for n, (i, t, result) in enumerate(zip(indices, thoughts, results)):
            if result.refused == Demotion.READ_ELSEWHERE:
                st.kept_shared_tokens += t.detail_len
                self.totals["kept_shared_tokens"] += t.detail_len
            if result.block is None:  # refused, or host store full under keep_on_device
                continue
            self._borrow(st, i, result.block)
            self.mover.demoted(st, i, result.slots, result.handle)  # holes now; the slots freed once the copy landed
            if prefix is not None and len(prefix) >= t.detail_end:
                prefix[t.detail_start:t.detail_end] = 0
            st.demoted_tokens += t.detail_len
            self.totals["demoted_tokens"] += t.detail_len
            went[n] = True
        if prefix is not None and any(went):
            req.prefix_indices = prefix
        return went

    def _borrow(self, st: RequestZoom, index: int, block: HostBlock) -> None:
        st.blocks[index] = block
        st.borrowed.add(index)
        self._borrowers.setdefault(block.block_id, set()).add((st.rid, index))

    def release(self, st: RequestZoom, req, insert: bool) -> None:
        handed = []
        for i, block in st.blocks.items():
            if i in st.borrowed:
                self._borrowers.get(block.block_id, set()).discard((st.rid, i))
                continue
            if not self.host.is_live(block):
                continue
            if self.tree is not None and insert:
                handed.append((*st.span(i), block))
            else:
                self.host.free(block)
        for block_id in [b for b, who in self._borrowers.items() if not who]:
            del self._borrowers[block_id]
        st.blocks.clear()
        if handed:
            req.zoomr_host_spans = handed  # the tree adopts them or frees them (radix_tree contract)

    def on_host_drop(self, block: HostBlock) -> None:
        """``drop_oldest`` took a host block back: its thought's detail is gone for good (counted by the store).
        The store waited for the block's copies, so the slots of a copy in flight can be freed now. A tree block
        may be borrowed by several running requests: each loses that thought."""
        owners = list(self._borrowers.pop(block.block_id, ()))
        if isinstance(block.owner, tuple) and len(block.owner) == 2:
            owners.append(block.owner)
        for rid, index in owners:
            st = self.requests.get(rid)
            if st is None or st.blocks.get(index) != block:
                continue
            self.mover.lose(st, index)
