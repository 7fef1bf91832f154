"""Per-request ZoomR state: where each closed thought's detail lives, the zoom buffer, and memory accounting.

Contract:
- ``ThoughtTable`` owns the request's ``Segmenter``; ``append(ids)`` feeds new tokens (the prompt too: positions
  start at 0) and returns the thoughts they closed. A newly closed thought's detail is ``DEVICE``. ``preset`` spans
  (the segmenter's) are thoughts with no summary (``is_preset``): they move like any other, have no
  ``summary_span`` (it raises), and the policies that score summaries leave them alone. So are the pages of a table
  built with ``page_size`` (``quest``: the segmenter's pages mode).
- Each closed thought's detail is in one ``Location``. Legal moves (anything else raises ``ThoughtStateError``):
  ``DEVICE -> OFFLOADING -> HOST`` (``begin_offload``/``finish_offload``, or ``mark_offloaded`` in one go),
  ``DEVICE -> PARKED`` (``park``: the host store refused the detail; it keeps its device slots but leaves the
  resident set, and is zoomable like a ``HOST`` detail), ``PARKED -> OFFLOADING``/``HOST`` (room came later),
  ``HOST``/``PARKED -> RECALLING -> ZOOM`` (``begin_recall``/``finish_recall``, or ``mark_recalled``), ``ZOOM ->``
  its home (``evict``: ``HOST``, or ``PARKED`` for a detail recalled from there, which has no host copy:
  ``has_host_copy``), and any live location ``-> DROPPED`` (``drop``: summary_only, or the host store dropped its
  copy). ``free()`` ends the request: every detail and position is released and further moves raise.
- A thought with an empty detail has nothing to copy: the caller may ``mark_offloaded``/``drop`` it without touching
  the host store (which refuses empty blocks).
- Device slots are held by ``DEVICE``, ``OFFLOADING`` (until the copy has landed), ``PARKED``, ``RECALLING`` and
  ``ZOOM``.
  A step attends a detail only when it is ``DEVICE`` or ``ZOOM``: an offload or a recall in flight is not attended,
  so what a step reads never depends on copy timing.
- The zoom buffer (``RECALLING`` + ``ZOOM``) never holds more than ``config.zoom_budget`` tokens; a recall that
  would overflow it raises. LRU: ``apply`` stamps the thoughts a zoom selected; eviction order is by
  ``(last_used, index)``, oldest first.
- ``accounting()`` returns ``Accounting``: device KV tokens now and at peak, what full KV would hold, and counters.
- ``check_invariants()`` raises ``InvariantError`` (an ``AssertionError``) with a message on any inconsistency:
  tests call it after every operation.
"""

from __future__ import annotations

import enum
from typing import Iterable, NamedTuple, Sequence

import torch

from zoomr_sgl.config import ZoomRConfig
from zoomr_sgl.segmenter import Segmenter, Thought


class Location(enum.Enum):
    DEVICE = "device"  # in its original device slots
    OFFLOADING = "offloading"  # device -> host copy in flight; device slots still held
    HOST = "host"  # host copy only
    PARKED = "parked"  # no host copy (the store refused it): device slots kept, out of the resident set, zoomable
    RECALLING = "recalling"  # host -> zoom buffer copy in flight; zoom slots held, not attended yet
    ZOOM = "zoom"  # recalled into the zoom buffer (host copy kept, so eviction needs no copy)
    DROPPED = "dropped"  # gone for good
    FREED = "freed"  # the request ended


HOLDS_DEVICE = frozenset({Location.DEVICE, Location.OFFLOADING, Location.PARKED, Location.RECALLING, Location.ZOOM})
ATTENDED = frozenset({Location.DEVICE, Location.ZOOM})
IN_BUFFER = frozenset({Location.RECALLING, Location.ZOOM})
ZOOMABLE_HOMES = frozenset({Location.HOST, Location.PARKED})  # where a zoom recalls from and an eviction returns to
LIVE = frozenset(Location) - {Location.DROPPED, Location.FREED}


class ThoughtStateError(ValueError):
    """An operation that the detail's current location does not allow."""


class InvariantError(AssertionError):
    """The per-request state is inconsistent; the message says how."""


class ThoughtState(NamedTuple):
    thought: Thought
    location: Location
    last_used: int | None  # LRU stamp while in the zoom buffer, else None


class ZoomDecision(NamedTuple):
    """What a policy decided on a zoom step (thought indices): the thoughts it picked (stamped most recently used),
    those to recall from the host, and those to evict from the zoom buffer."""

    selected: tuple[int, ...]
    recall: tuple[int, ...]
    evict: tuple[int, ...]


class Accounting(NamedTuple):
    full_kv_tokens: int  # what full KV would hold: every token of the sequence
    device_kv_tokens: int  # tokens whose KV holds device slots now
    peak_device_kv_tokens: int
    host_tokens: int  # detail tokens with a complete host copy (HOST, and RECALLING/ZOOM recalled from HOST)
    zoom_tokens: int  # zoom buffer (RECALLING + ZOOM)
    parked_tokens: int  # detail tokens in PARKED: on the device, not attended, no host copy
    dropped_tokens: int
    offloads: int
    recalls: int
    evictions: int
    drops: int


_MOVES: dict[str, tuple[frozenset[Location], Location]] = {
    "begin_offload": (frozenset({Location.DEVICE, Location.PARKED}), Location.OFFLOADING),
    "finish_offload": (frozenset({Location.OFFLOADING}), Location.HOST),
    "mark_offloaded": (frozenset({Location.DEVICE, Location.OFFLOADING, Location.PARKED}), Location.HOST),
    "park": (frozenset({Location.DEVICE}), Location.PARKED),
    "begin_recall": (ZOOMABLE_HOMES, Location.RECALLING),
    "finish_recall": (frozenset({Location.RECALLING}), Location.ZOOM),
    "mark_recalled": (ZOOMABLE_HOMES | {Location.RECALLING}, Location.ZOOM),
    "evict": (frozenset({Location.ZOOM}), Location.HOST),  # or PARKED: see ``_move``
    "drop": (LIVE, Location.DROPPED),
}


class ThoughtTable:
    """One request's thoughts, detail locations, zoom buffer and accounting (see the module contract)."""

    def __init__(self, config: ZoomRConfig, open_ids: Sequence[int], close_ids: Sequence[int], start: int = 0,
                 restart_at: int | None = None, preset: Sequence[tuple[int, int]] = (), page_size: int = 0):
        self.config = config
        self.segmenter = Segmenter(open_ids, close_ids, start, restart_at, preset, page_size)
        self.finished = False
        self._loc: list[Location] = []
        self._last_used: dict[int, int] = {}
        self._from_parked: set[int] = set()  # buffer members recalled from PARKED: no host copy, evicted back there
        self._clock = 0
        self._off_device = 0  # detail tokens not holding device slots (HOST, DROPPED)
        self._peak = 0
        self._counts = dict(offloads=0, recalls=0, evictions=0, drops=0)

    # ------------------------------------------------------------------ reading
    @property
    def length(self) -> int:
        return self.segmenter.length

    @property
    def thoughts(self) -> tuple[Thought, ...]:
        return self.segmenter.closed_thoughts

    def thought(self, index: int) -> Thought:
        """Closed thought ``index`` (``thoughts[index]`` without copying every thought)."""
        return self.segmenter.closed_thought(index)

    def location(self, index: int) -> Location:
        return self._loc[index]

    def has_host_copy(self, index: int) -> bool:
        """Whether thought ``index``'s detail has a complete host copy (``HOST``, or in the buffer recalled from it)."""
        loc = self._loc[index]
        return loc is Location.HOST or (loc in IN_BUFFER and index not in self._from_parked)

    def is_preset(self, index: int) -> bool:
        """Whether thought ``index`` is a preset span or a page (no summary; see the module contract)."""
        return index < len(self.segmenter.preset) or self.segmenter.page_size > 0

    def states(self) -> list[ThoughtState]:
        return [ThoughtState(t, self._loc[t.index], self._last_used.get(t.index)) for t in self.thoughts]

    def zoom_tokens(self) -> int:
        return sum(t.detail_len for t in self.thoughts if self._loc[t.index] in IN_BUFFER)

    def summary_span(self, index: int) -> tuple[int, int]:
        """``[lo, hi)``: the summary's own text (markers excluded), or its opening marker when it has no text. Never
        the closing marker: a thought closes when that marker is sampled, and the zoom of that same step must not
        read the marker's slot, whose KV the next forward writes (the slot may still hold a freed row)."""
        if self.is_preset(index):
            raise ValueError(f"thought {index} is a preset span: it has no summary")
        t = self.thought(index)
        lo, hi = t.summary_start + len(self.segmenter.open_ids), t.summary_end - len(self.segmenter.close_ids)
        return (lo, hi) if lo < hi else (t.summary_start, max(lo, t.summary_start + 1))

    def summary_positions(self, index: int) -> torch.Tensor:
        """``summary_span`` as int64 positions."""
        return torch.arange(*self.summary_span(index), dtype=torch.int64)

    def attended_positions(self, add: Iterable[int] = (), remove: Iterable[int] = ()) -> torch.Tensor:
        """Sorted positions a step attends by default: all but details not ``DEVICE``/``ZOOM``; ``add`` and
        ``remove`` name thoughts whose detail is attended or not regardless (a recall waited on, an eviction)."""
        mask = self._detail_mask(lambda i: self._loc[i] in ATTENDED)
        for i in add:
            t = self.thought(i)
            mask[t.detail_start:t.detail_end] = True
        for i in remove:
            t = self.thought(i)
            mask[t.detail_start:t.detail_end] = False
        return mask.nonzero().flatten()

    def device_positions(self) -> torch.Tensor:
        """Sorted positions whose KV holds device slots now."""
        return self._detail_mask(lambda i: self._loc[i] in HOLDS_DEVICE).nonzero().flatten()

    def accounting(self) -> Accounting:
        loc_tokens = {loc: 0 for loc in Location}
        for t in self.thoughts:
            loc_tokens[self._loc[t.index]] += t.detail_len
        L = Location
        return Accounting(
            full_kv_tokens=self.length,
            device_kv_tokens=self._device_tokens(),
            peak_device_kv_tokens=self._peak,
            host_tokens=loc_tokens[L.HOST] + loc_tokens[L.RECALLING] + loc_tokens[L.ZOOM]
            - sum(self.thought(i).detail_len for i in self._from_parked),
            zoom_tokens=loc_tokens[L.RECALLING] + loc_tokens[L.ZOOM],
            parked_tokens=loc_tokens[L.PARKED],
            dropped_tokens=loc_tokens[L.DROPPED],
            **self._counts,
        )

    # ------------------------------------------------------------------ changing
    def append(self, ids: Iterable[int]) -> list[Thought]:
        """Feed new tokens; returns the thoughts they closed (their detail is ``DEVICE``)."""
        self._require_live()
        closed = self.segmenter.extend(ids)
        self._loc.extend(Location.DEVICE for _ in closed)
        self._peak = max(self._peak, self._device_tokens())
        return closed

    def begin_offload(self, index: int) -> None:
        self._move("begin_offload", index)

    def finish_offload(self, index: int) -> None:
        self._move("finish_offload", index)

    def mark_offloaded(self, index: int) -> None:
        self._move("mark_offloaded", index)

    def park(self, index: int) -> None:
        self._move("park", index)

    def begin_recall(self, index: int) -> None:
        self._move("begin_recall", index)

    def finish_recall(self, index: int) -> None:
        self._move("finish_recall", index)

    def mark_recalled(self, index: int) -> None:
        self._move("mark_recalled", index)

    def evict(self, index: int) -> None:
        self._move("evict", index)

    def drop(self, index: int) -> None:
        self._move("drop", index)

    def apply(self, decision: ZoomDecision) -> None:
        """Apply a zoom decision (a ``ZoomDecision`` or a policy's ``Selection``): evict, begin the recalls
        (``RECALLING``; the caller copies and then calls ``finish_recall``), and stamp the selected thoughts."""
        for i in decision.evict:
            self.evict(i)
        for i in decision.recall:
            self.begin_recall(i)
        self.touch(decision.selected)

    def touch(self, selected: Sequence[int]) -> None:
        """Stamp thoughts in the zoom buffer as most recently used (one stamp for the whole zoom)."""
        if selected:
            self._clock += 1
            for i in selected:
                if self._loc[i] in IN_BUFFER:
                    self._last_used[i] = self._clock

    def free(self) -> None:
        """End the request: everything it holds is released."""
        self._require_live()
        self.finished = True
        self._loc = [Location.FREED] * len(self._loc)
        self._last_used.clear()
        self._from_parked.clear()

    # ------------------------------------------------------------------ checking
    def check_invariants(self) -> None:
        from zoomr_sgl.thought_invariants import check_table

        check_table(self)

    # ------------------------------------------------------------------ internals
    def _device_tokens(self) -> int:
        return 0 if self.finished else self.length - self._off_device

    def _detail_mask(self, keep) -> torch.Tensor:
        mask = torch.ones(self.length, dtype=torch.bool) if not self.finished else torch.zeros(0, dtype=torch.bool)
        for t in self.thoughts if not self.finished else ():
            if not keep(t.index):
                mask[t.detail_start:t.detail_end] = False
        return mask

    def _require_live(self) -> None:
        if self.finished:
            raise ThoughtStateError("the request has been freed")

    def _move(self, op: str, index: int) -> None:
        self._require_live()
        if not 0 <= index < len(self._loc):
            raise ThoughtStateError(f"{op}: no closed thought {index}")
        allowed, new = _MOVES[op]
        old = self._loc[index]
        if old not in allowed:
            raise ThoughtStateError(f"{op}: thought {index} is {old.value}")
        if op == "evict" and index in self._from_parked:
            new = Location.PARKED  # no host copy: back to its own device slots
        n = self.thought(index).detail_len
        if new in IN_BUFFER and old not in IN_BUFFER and self.zoom_tokens() + n > self.config.zoom_budget:
            raise ThoughtStateError(
                f"{op}: thought {index} ({n} tokens) does not fit the zoom buffer "
                f"({self.zoom_tokens()} of {self.config.zoom_budget} used)"
            )
        if old is Location.PARKED and new in IN_BUFFER:
            self._from_parked.add(index)
        elif new not in IN_BUFFER:
            self._from_parked.discard(index)
        was_on, now_on = old in HOLDS_DEVICE, new in HOLDS_DEVICE
        self._off_device += (was_on and not now_on) * n - (now_on and not was_on) * n
        self._loc[index] = new
        if new not in IN_BUFFER:
            self._last_used.pop(index, None)
        elif index not in self._last_used:
            self._clock += 1
            self._last_used[index] = self._clock
        if new is Location.HOST and old in (Location.DEVICE, Location.OFFLOADING, Location.PARKED):
            self._counts["offloads"] += 1
        elif new is Location.ZOOM and old is not Location.RECALLING or new is Location.RECALLING:
            self._counts["recalls"] += 1
        elif op == "evict":
            self._counts["evictions"] += 1
        elif new is Location.DROPPED:
            self._counts["drops"] += 1
        self._peak = max(self._peak, self._device_tokens())
