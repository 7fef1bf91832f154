"""Moves thought detail between device slots and the host store: the only writer of holes in ``req_to_token`` and
the only ZoomR caller of the allocator's ``free``.

Contract:
- Each move changes three things together: the request's ``req_to_token`` row (0 over a detail that leaves the
  device, fresh slot ids once a recall has landed), the allocator (slots freed or taken), and the thought's
  ``Location`` in the request's ``ThoughtTable``; and it keeps ``RequestZoom.holes`` / ``inflight_slots`` exact, so
  a request's device KV is known without reading its row.
- ``offload`` (DEVICE or PARKED -> OFFLOADING -> HOST): if ``may_take(st, n)`` allows (admission's host promises),
  a host block is taken (``make_host_room(n)`` asks the radix tree for rows when the store is full), the copy starts,
  the detail becomes holes at once (not attended from the next step on) and its slots stay held until the copy has
  landed. Returns False when the store refuses: the detail is *parked* (DEVICE -> PARKED: holes in the row, its slots
  kept in ``st.parked``), so the step attends what the policy says whatever the host store's room, and the thought
  joins ``st.host_refused`` (oldest first), which ``retry_refused`` offloads once there is room (the manager calls it
  as each later thought closes).
- ``demoted(st, index, slots, handle)``: a detail the radix tree demoted without waiting (``TreeBorrow``) is an
  offload from there on (DEVICE or PARKED -> OFFLOADING -> HOST), its slots freed once the copy has landed.
- ``drop`` (DEVICE or PARKED -> DROPPED): holes, slots freed. ``evict`` (ZOOM -> HOST): holes, slots freed (the host
  copy stays); a detail recalled from PARKED has no host copy and goes back there (holes, slots kept).
- ``forget(st, lo, hi)``: positions ``[lo, hi)`` a windowed policy no longer attends become holes and their slots are
  freed, outside the thought table (``st.forgotten_tokens`` counts them); the caller gives only positions the
  request owns that still hold a slot.
- ``recall`` (HOST -> RECALLING -> ZOOM): takes slots from the allocator (the caller checked the room) and starts
  the copy; the slots are written into the row when the copy has landed (``land``), from the next step on. From
  PARKED (-> ZOOM at once) it takes no slot and copies nothing: the parked slots go back into the row.
  ``recall_many(st, indices)`` does so for several at once: one allocation cut in order, the host copies of all of
  them batched (one handle); ``evict_many`` evicts several with one gather, one write and one free, ``park_many``
  parks several with one gather and one write; ``land`` maps every recall that has landed with one write and frees
  every landed offload with one free. A zoom moves dozens of prompt sentences, and its host time was per sentence
  before (H100, 32K prompts: 30 ms a decode step).
  ``recall_slots(st, index)`` / ``evict_slots(st, index)``: the allocator slots a recall takes / an eviction frees.
- ``land(st, wait)`` finishes the copies of ``st`` that have landed (all of them with ``wait``); ``land_busy`` does
  so for every request with copies in flight, and nothing for the others (no per-request work on a plain step).
  With ``lockstep`` (tensor parallel, ``zoomr_sgl.tp_consensus``) every ``land`` waits for all the copies, so each
  rank frees and maps the same slots at the same point.
- ``lose(st, index)``: the thought's host block is gone (dropped by the store): copies in flight end, a zoomed
  detail leaves the device, the thought is DROPPED.
- ``end(st)`` at release: waits for and frees copies in flight (an offload's block is complete then) and writes every
  parked detail's slots back into the row, so SGLang frees or caches them with the row like any device KV.
- Frees here never hold a hole (they are resident positions or fresh slots), so they skip the hole filter of
  ``hooks.free_without_holes``, a device read (``hooks.free_known_slots``).
- Slots are read from the row as device tensors, never copied to the host: a move does not synchronise.
- ``row_holes[row]`` (host) is the number of holes in the row of every running request, ZoomR's or not: set by
  ``set_prefix_holes`` when an extend writes a prefix the radix tree gave with host-backed holes, and again when its
  results are processed (SGLang's tree rewrites the row with what it already held: ``cache_unfinished_req`` gives a
  recomputed position the tree's hole back), then kept by every move above. It always matches ``req_to_token`` as
  the next forward will plan it (every row edit is issued before that forward on the stream it waits for), so the
  attention backend plans over the resident set without reading the device (``holes_of``).
- With the overlap scheduler a forward may still be reading a slot this process just freed (it was planned before
  the hole was written). Reuse by SGLang is a later forward on the same stream, so it is safe; a recall's
  host->device copy runs on a side stream, so it waits for the forward in flight (``recall_after``) before it
  writes its fresh slots.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch

from zoomr_sgl.host_store import HostDetailStore
from zoomr_sgl.request_state import Copy, RequestZoom
from zoomr_sgl.thought_table import Location

# Debug: compare the host-kept hole counts with the device wherever they are used (a device read each time).
CHECKS = os.environ.get("ZOOMR_SGL_CHECK_HOLES") == "1"


class DetailMover:
    def __init__(self, allocator, req_to_token: torch.Tensor, kv_pool, host: HostDetailStore,
                 make_host_room: Callable[[int], object], recall_after=None, lockstep: bool = False,
                 may_take: Callable[[RequestZoom, int], bool] | None = None):
        self.allocator = allocator
        self.req_to_token = req_to_token
        self.kv_pool = kv_pool
        self.host = host
        self.make_host_room = make_host_room
        self.may_take = may_take  # whether a request may take that many host rows now (admission's promises)
        self.recall_after = recall_after  # the forward stream with the overlap scheduler on CUDA, else None
        self.lockstep = lockstep  # TP: copies land where asked, waited for, never "when done" (timing differs per rank)
        self.row_holes = np.zeros(req_to_token.shape[0], dtype=np.int64)
        self.busy: dict[str, RequestZoom] = {}  # requests with copies in flight
        self.totals = dict(offloaded_tokens=0, recalled_tokens=0, recalls=0, evictions=0, parked_detail_tokens=0)

    # ------------------------------------------------------------------ the row
    def set_prefix_holes(self, row: int, holes: int) -> None:
        """An extend is about to write a prefix with ``holes`` host-backed holes into ``row``."""
        self.row_holes[row] = holes

    def holes_of(self, rows: list[int]) -> np.ndarray:
        return self.row_holes[rows]

    def forget_row(self, row: int) -> None:
        self.row_holes[row] = 0

    def _add_holes(self, st: RequestZoom, n: int) -> None:
        self.row_holes[st.row] += n

    def _unmap(self, st: RequestZoom, lo: int, hi: int) -> torch.Tensor:
        """The slots of ``[lo, hi)`` (a device tensor, cloned), now holes in the row."""
        slots = self.req_to_token[st.row, lo:hi].to(torch.int64)  # a copy: the row is int32
        self.req_to_token[st.row, lo:hi] = 0
        self._add_holes(st, hi - lo)
        return slots

    def _unmap_many(self, st: RequestZoom, spans) -> torch.Tensor:
        """``_unmap`` of several spans at once: their slots in span order (one gather), holes now (one write)."""
        positions = self.positions(spans)
        slots = self.req_to_token[st.row, positions].to(torch.int64)
        self.req_to_token[st.row, positions] = 0
        self._add_holes(st, len(positions))
        return slots

    def demoted(self, st: RequestZoom, index: int, slots: torch.Tensor, handle) -> None:
        """The radix tree demoted thought ``index``'s detail (``slots``, which were the tree's) into a block the caller
        has put in ``st.blocks``, the copy landing at ``handle``: the row gets holes there (a parked detail has them
        already) and from here on it is an offload (OFFLOADING, its slots held by the request until the copy has
        landed, then freed by ``land``, which the caller runs after its last ``demoted``: HOST)."""
        self._out_of_row(st, index)
        st.table.begin_offload(index)
        self._track(st, st.offloading, Copy(index, slots, handle))
        st.offloading_slots += len(slots)  # the caller lands them (``land``) once it has handed over the lot

    def _free(self, slots: torch.Tensor) -> None:
        from zoomr_sgl.hooks import free_known_slots

        free_known_slots(self.allocator, slots)

    # ------------------------------------------------------------------ moves
    def offload(self, st: RequestZoom, index: int) -> bool:
        t = st.table.thought(index)
        n = t.detail_len
        block = None
        if self.may_take is None or self.may_take(st, n):
            block = self.host.allocate(n, owner=(st.rid, index))
            if block is None and self.make_host_room(n):
                block = self.host.allocate(n, owner=(st.rid, index))
        if block is None:  # store full under keep_on_device: the detail waits on the device, out of attention
            if st.table.location(index) is Location.DEVICE:
                self.park(st, index)
            if index not in st.host_refused:
                st.host_refused.append(index)
            return False
        if index in st.host_refused:
            st.host_refused.remove(index)
        slots = self._out_of_row(st, index)
        handle = self.host.copy_from_device(block, self.kv_pool.k_buffer, self.kv_pool.v_buffer, slots)
        st.blocks[index] = block
        st.table.begin_offload(index)
        self._track(st, st.offloading, Copy(index, slots, handle))
        st.offloading_slots += n
        self.totals["offloaded_tokens"] += n
        self.land(st, wait=False)
        return True

    def retry_refused(self, st: RequestZoom) -> None:
        """Offloads the thoughts a full store refused, oldest first, until it refuses again."""
        for index in list(st.host_refused):
            loc = st.table.location(index)
            if loc in (Location.RECALLING, Location.ZOOM):  # recalled from PARKED: retried once evicted back there
                continue
            if loc not in (Location.DEVICE, Location.PARKED):  # moved since (e.g. dropped)
                st.host_refused.remove(index)
            elif not self.offload(st, index):
                return

    def drop(self, st: RequestZoom, index: int) -> None:
        self._free(self._out_of_row(st, index))
        st.table.drop(index)

    def park(self, st: RequestZoom, index: int) -> None:
        """A DEVICE detail leaves the resident set and keeps its slots (the radix tree's, for a prompt thought whose
        demotion the tree refused: never freed here, written back into the row at the release)."""
        t = st.table.thought(index)
        self._park(st, index, self._unmap(st, t.detail_start, t.detail_end))

    def park_many(self, st: RequestZoom, indices) -> None:
        """``park`` each of ``indices`` (DEVICE details) with one gather of their slots and one write of holes (a
        prompt's first zoom parks every sentence that may leave: thousands at 32K tokens)."""
        if len(indices) <= 1:
            for index in indices:
                self.park(st, index)
            return
        spans = [(t.detail_start, t.detail_end) for t in map(st.table.thought, indices)]
        slots = self._unmap_many(st, spans)
        at = 0
        for index, (lo, hi) in zip(indices, spans):
            self._park(st, index, slots[at:at + hi - lo])
            at += hi - lo

    def _park(self, st: RequestZoom, index: int, slots: torch.Tensor) -> None:
        """The detail's slots (already holes in the row) are kept aside; the thought becomes PARKED."""
        st.parked[index] = slots
        st.parked_slots += len(slots)
        if st.table.location(index) is Location.DEVICE:
            st.table.park(index)
            self.totals["parked_detail_tokens"] += len(slots)
        else:  # a ZOOM detail recalled from PARKED: evicted back there
            st.table.evict(index)

    def _out_of_row(self, st: RequestZoom, index: int) -> torch.Tensor:
        """The detail's slots, out of the row: a parked detail's (holes already), else unmapped now."""
        if st.table.location(index) is Location.PARKED:
            return self._unpark(st, index)
        t = st.table.thought(index)
        return self._unmap(st, t.detail_start, t.detail_end)

    def _back_into_row(self, st: RequestZoom, index: int) -> None:
        """A parked detail's own slots written back over its span of the row."""
        lo, hi = st.span(index)
        self.req_to_token[st.row, lo:hi] = self._unpark(st, index).to(self.req_to_token.dtype)
        self._add_holes(st, lo - hi)

    def _unpark(self, st: RequestZoom, index: int) -> torch.Tensor:
        """A parked detail's slots, no longer kept aside (the caller moves the thought on)."""
        slots = st.parked.pop(index)
        st.parked_slots -= len(slots)
        return slots

    def recall_slots(self, st: RequestZoom, index: int) -> int:
        """Allocator slots a recall of ``index`` takes: none from PARKED."""
        lo, hi = st.span(index)
        return 0 if st.table.location(index) is Location.PARKED else hi - lo

    def evict_slots(self, st: RequestZoom, index: int) -> int:
        """Allocator slots an eviction of ``index`` frees: none when it goes back to PARKED."""
        lo, hi = st.span(index)
        return hi - lo if st.table.has_host_copy(index) else 0

    def forget(self, st: RequestZoom, lo: int, hi: int) -> None:
        self._free(self._unmap(st, lo, hi))
        st.forgotten_tokens += hi - lo

    def evict(self, st: RequestZoom, index: int) -> None:
        lo, hi = st.span(index)
        slots = self._unmap(st, lo, hi)
        if st.table.has_host_copy(index):
            self._free(slots)
            st.table.evict(index)
        else:
            self._park(st, index, slots)
        self.totals["evictions"] += 1

    def evict_many(self, st: RequestZoom, indices) -> None:
        """``evict`` each of ``indices``; the details with a host copy leave the row together: one gather of their
        slots, one write of holes and one free for all of them (a zoom evicts dozens of prompt sentences)."""
        spans, gone = [], []
        for index in indices:
            if st.table.has_host_copy(index):
                spans.append(st.span(index))
                gone.append(index)
            else:  # recalled from PARKED: back there, its slots kept
                self.evict(st, index)
        if len(gone) <= 1:
            for index in gone:
                self.evict(st, index)
            return
        self._free(self._unmap_many(st, spans))
        for index in gone:
            st.table.evict(index)
        self.totals["evictions"] += len(gone)

    def positions(self, spans) -> torch.Tensor:
        """The positions of ``spans`` (``(lo, hi)`` each), in order, as one index on the row's device."""
        host = np.concatenate([np.arange(lo, hi, dtype=np.int64) for lo, hi in spans])
        return torch.from_numpy(host).to(self.req_to_token.device, non_blocking=True)

    def recall(self, st: RequestZoom, index: int) -> None:
        self.recall_many(st, [index])

    def recall_many(self, st: RequestZoom, indices) -> None:
        """Recall each of ``indices`` (see the contract): the ones on the host with one batched copy."""
        wanted = []
        for index in indices:
            self.totals["recalls"] += 1
            if st.table.location(index) is Location.PARKED:  # its own slots back into the row: no copy, no slot
                self._back_into_row(st, index)
                st.table.mark_recalled(index)
            else:
                wanted.append((index, *st.span(index)))
        if not wanted:
            return
        total = sum(hi - lo for _, lo, hi in wanted)
        fresh = self.allocator.alloc(total)  # one allocation for them all, cut in order
        if fresh is None:
            raise RuntimeError(f"recall of {total} tokens found no room (the caller checks the room first)")
        # SGLang hands out a view of its whole free list, and every free replaces that list by a new tensor (a cat): a
        # view kept while the copy lands pins the old list, one pool-sized tensor per recall (on an H200 with a
        # 44M-token pool, 330 MiB each: the server ran out of memory at 64 concurrent requests). A copy pins nothing.
        fresh = fresh.clone()
        batch, at = [], 0
        for index, lo, hi in wanted:
            batch.append((index, fresh[at:at + hi - lo]))
            at += hi - lo
            st.table.begin_recall(index)
        self.totals["recalled_tokens"] += total
        handle = self.host.copy_many_to_device([(st.blocks[i], slots) for i, slots in batch], self.kv_pool.k_buffer,
                                               self.kv_pool.v_buffer, after=self.recall_after)
        for i, slots in batch:
            self._track(st, st.recalling, Copy(i, slots, handle))

    def _track(self, st: RequestZoom, copies: list, copy: Copy) -> None:
        copies.append(copy)
        st.inflight_slots += len(copy.slots)
        self.busy[st.rid] = st

    # ------------------------------------------------------------------ copies landing
    def land(self, st: RequestZoom, wait: bool) -> None:
        wait = wait or self.lockstep
        if st.offloading:
            landed, st.offloading = _landed(st.offloading, self.lockstep)
            if landed:  # their slots go back in one free
                self._free(torch.cat([c.slots for c in landed]) if len(landed) > 1 else landed[0].slots)
            for c in landed:
                st.inflight_slots -= len(c.slots)
                st.offloading_slots -= len(c.slots)
                st.table.finish_offload(c.thought)
        if st.recalling:
            landed, st.recalling = _landed(st.recalling, wait)
            if landed:  # their fresh slots go into the row in one write
                positions = self.positions([st.span(c.thought) for c in landed])
                slots = torch.cat([c.slots for c in landed]) if len(landed) > 1 else landed[0].slots
                self.req_to_token[st.row, positions] = slots.to(self.req_to_token.dtype)
                self._add_holes(st, -len(positions))
            for c in landed:
                st.inflight_slots -= len(c.slots)
                st.table.finish_recall(c.thought)
        if not (st.offloading or st.recalling):
            self.busy.pop(st.rid, None)

    def land_busy(self) -> None:
        for st in list(self.busy.values()):
            self.land(st, wait=st.config.wait_for_recall)

    # ------------------------------------------------------------------ endings
    def lose(self, st: RequestZoom, index: int) -> None:
        del st.blocks[index]
        st.borrowed.discard(index)
        for copies in (st.offloading, st.recalling):
            for c in [c for c in copies if c.thought == index]:
                copies.remove(c)
                self._free(c.slots)
                st.inflight_slots -= len(c.slots)
                if copies is st.offloading:
                    st.offloading_slots -= len(c.slots)
        if not (st.offloading or st.recalling):
            self.busy.pop(st.rid, None)
        if st.table.location(index) is Location.ZOOM:
            lo, hi = st.span(index)
            self._free(self._unmap(st, lo, hi))
        st.table.drop(index)

    def end(self, st: RequestZoom, evict_zoom: bool) -> None:
        """Release: copies waited for and their slots freed; with ``evict_zoom`` the zoom buffer leaves too, so every
        offloaded detail is a hole backed by its block (what the radix tree adopts)."""
        for c in st.offloading + st.recalling:
            c.handle.wait()
            self._free(c.slots)
        for c in st.offloading:
            st.table.finish_offload(c.thought)  # the copy has landed: the block is complete
        st.offloading.clear()
        st.recalling.clear()
        st.inflight_slots = st.offloading_slots = 0
        self.busy.pop(st.rid, None)
        for i in list(st.parked):  # back into the row: SGLang frees or caches them with it
            self._back_into_row(st, i)
        if evict_zoom:
            for i in list(st.blocks):
                if st.table.location(i) is Location.ZOOM:
                    lo, hi = st.span(i)
                    self._free(self._unmap(st, lo, hi))


def _landed(copies: list[Copy], wait: bool) -> tuple[list[Copy], list[Copy]]:
    """``copies`` split into those that have landed (all of them, waited for, with ``wait``) and those in flight; a
    handle shared by several copies is asked once."""
    done: dict[int, bool] = {}
    landed, flying = [], []
    for c in copies:
        key = id(c.handle)
        if key not in done:
            if wait:
                c.handle.wait()
            done[key] = c.handle.done()
        (landed if done[key] else flying).append(c)
    return landed, flying
