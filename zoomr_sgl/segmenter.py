"""Segmentation: token ids and marker ids in, thoughts (detail span, summary span) out.

Contract:
- Positions are sequence positions: the first token fed is position 0. Tokens before ``start`` are counted but
  never segmented: in engine mode the server passes ``start=len(prompt)`` (the prompt is not a thought); in
  program mode ``start=0`` and thoughts written into the prompt by earlier ``gen`` calls are found like any other.
- ``restart_at`` (optional, > ``start``): when the stream reaches that position, whatever is open (the open thought's
  detail, an open summary) is dropped and segmentation restarts there exactly as with ``start=restart_at``; closed
  thoughts before it stay. Engine mode uses ``start=0, restart_at=len(prompt)`` when the prompt holds closed thoughts
  of earlier turns: they are the request's thoughts, the prompt's tail after them is never detail, and what the
  request generates is segmented as with ``start=len(prompt)``. The tiling below then holds from ``start`` up to
  the last thought closed before ``restart_at`` and again from ``restart_at``.
- A thought's detail runs from ``start`` (or from the end of the previous summary) up to the first token of the
  opening marker; its summary runs from the first token of the opening marker through the last token of the closing
  marker. So details and summaries tile the sequence from ``start`` with no gap, and the marker tokens, which stay on
  the device, belong to the summary. Spans are half-open ``[start, end)``. A detail may be empty.
- A marker counts only when all its tokens lie at or after the point where the current state began (``start``, the
  end of the opening marker, or the end of the previous summary), so no token is part of two markers.
- Edge cases, each a defined outcome:
  * a closing marker with no opening one is ordinary detail text;
  * an opening marker inside an open summary (nesting) is ordinary summary text; the first closing marker closes;
  * a summary still open at the end is reported as the last thought with ``closed=False`` and ``summary_end`` equal
    to the current length; only closed thoughts may be offloaded;
  * detail text after the last summary (no opening marker yet) is the open thought: not a ``Thought``;
    ``Segmenter.detail_start`` says where it begins.
- ``preset`` (optional): spans ``(lo, hi)`` before ``start``, sorted, disjoint and non-empty, that are thoughts
  without markers (SentenceKV's prompt sentences): span ``k`` closes as thought ``k`` when the stream reaches ``hi``,
  with an empty summary (``summary_start == summary_end == detail_end == hi``). They are thoughts
  ``0 .. len(preset) - 1``; marker thoughts, found from ``start`` on, are numbered after them. Positions before
  ``start`` outside every preset span stay outside every thought.
- Pages (``page_size`` > 0, the ``quest`` policy): no markers count; thought ``k`` is the page
  ``[start + k * page_size, start + (k + 1) * page_size)`` with an empty summary, closed when the token after it is fed
  (so its last token's KV has been written when a server sees it close). No presets or restart with pages.
- Beacon mode (``close_ids`` empty, Breadcrumbs): the opening marker alone is the summary. Its thought closes when
  the next token comes (that token is the next thought's first), so a closed thought's beacon has its KV written.
- Incremental: ``feed`` one token at a time, ``extend`` with chunks, or ``segment`` the whole sequence: the same ids
  give the same thoughts.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable, NamedTuple, Sequence


class Thought(NamedTuple):
    """One thought: detail ``[detail_start, detail_end)`` then summary ``[summary_start, summary_end)``."""

    index: int
    detail_start: int
    detail_end: int
    summary_start: int
    summary_end: int
    closed: bool

    @property
    def detail_len(self) -> int:
        return self.detail_end - self.detail_start

    @property
    def summary_len(self) -> int:
        return self.summary_end - self.summary_start


class Segmenter:
    """Incremental segmentation of one request's token stream (see the module contract)."""

    def __init__(self, open_ids: Sequence[int], close_ids: Sequence[int], start: int = 0,
                 restart_at: int | None = None, preset: Sequence[tuple[int, int]] = (), page_size: int = 0):
        self.open_ids, self.close_ids = tuple(open_ids), tuple(close_ids)
        if page_size < 0 or page_size and (preset or restart_at is not None):
            raise ValueError(f"pages of {page_size} tokens take no preset spans or restart")
        self.page_size = page_size
        if not self.open_ids:
            raise ValueError("the opening summary marker's ids must not be empty")
        if self.open_ids == self.close_ids:
            raise ValueError(f"opening and closing marker ids must differ; both are {self.open_ids}")
        if start < 0:
            raise ValueError(f"segmentation start must be >= 0, got {start}")
        if restart_at is not None and restart_at <= start:
            raise ValueError(f"restart_at must be after start {start}, got {restart_at}")
        self.start, self.restart_at = start, restart_at
        self.preset = tuple((int(lo), int(hi)) for lo, hi in preset)
        prev = 0
        for lo, hi in self.preset:
            if not prev <= lo < hi <= start:
                raise ValueError(f"preset spans must be sorted, disjoint, non-empty and end by start {start}; "
                                 f"got {self.preset}")
            prev = hi
        self.length = 0
        self._tail: deque[int] = deque(maxlen=max(len(self.open_ids), len(self.close_ids)))
        self._closed: list[Thought] = []
        self._detail_start = start
        self._summary_start: int | None = None  # set while a summary is open
        self._scan_from = start  # a marker must begin at or after this position

    @property
    def detail_start(self) -> int:
        """Where the current thought's detail begins (the open thought's, or the one whose summary is open)."""
        return self._detail_start

    @property
    def closed_thoughts(self) -> tuple[Thought, ...]:
        return tuple(self._closed)

    def closed_thought(self, index: int) -> Thought:
        """Closed thought ``index`` (without copying the list, as ``closed_thoughts`` does)."""
        return self._closed[index]

    @property
    def num_closed(self) -> int:
        return len(self._closed)

    @property
    def open_summary(self) -> Thought | None:
        """The thought whose summary has opened but not closed, if any."""
        if self._summary_start is None:
            return None
        s = self._summary_start
        return Thought(len(self._closed), self._detail_start, s, s, self.length, False)

    @property
    def thoughts(self) -> tuple[Thought, ...]:
        """Closed thoughts in order, then the one with an open summary, if any."""
        tail = self.open_summary
        return self.closed_thoughts + ((tail,) if tail else ())

    def feed(self, token_id: int) -> Thought | None:
        """Append one token; returns the thought it closed, if any."""
        pos = self.length
        self.length += 1
        self._tail.append(int(token_id))
        if pos < self.start:
            k = len(self._closed)
            if k < len(self.preset) and pos + 1 == self.preset[k][1]:  # a preset span ends here
                lo, hi = self.preset[k]
                self._closed.append(Thought(k, lo, hi, hi, hi, True))
                return self._closed[-1]
            return None
        if self.page_size:
            if pos - self._detail_start < self.page_size:
                return None
            lo, hi = self._detail_start, self._detail_start + self.page_size
            self._closed.append(Thought(len(self._closed), lo, hi, hi, hi, True))
            self._detail_start = hi
            return self._closed[-1]
        if pos == self.restart_at:  # drop what is open; segment on as if started here
            self._summary_start = None
            self._detail_start = self._scan_from = pos
        if self._summary_start is not None and not self.close_ids:  # a beacon, complete: this token follows it
            s = self._summary_start
            thought = Thought(len(self._closed), self._detail_start, s, s, pos, True)
            self._closed.append(thought)
            self._detail_start = self._scan_from = pos
            self._summary_start = None
            if self._ends_with(self.open_ids):  # a one-token beacon right after it (an empty detail)
                self._summary_start, self._scan_from = pos, pos + 1
            return thought
        if self._summary_start is None:
            if self._ends_with(self.open_ids):
                self._summary_start = pos + 1 - len(self.open_ids)
                self._scan_from = pos + 1
            return None
        if not self._ends_with(self.close_ids):
            return None
        s = self._summary_start
        thought = Thought(len(self._closed), self._detail_start, s, s, pos + 1, True)
        self._closed.append(thought)
        self._detail_start = self._scan_from = pos + 1
        self._summary_start = None
        return thought

    def extend(self, ids: Iterable[int]) -> list[Thought]:
        """Append tokens; returns the thoughts they closed, in order."""
        return [t for t in map(self.feed, ids) if t is not None]

    def _ends_with(self, marker: tuple[int, ...]) -> bool:
        n = len(marker)
        return self.length - n >= self._scan_from and tuple(self._tail)[-n:] == marker


def segment(
    ids: Sequence[int], open_ids: Sequence[int], close_ids: Sequence[int], start: int = 0
) -> tuple[Thought, ...]:
    """All thoughts of a whole sequence (closed ones, then an unclosed summary's), as ``Segmenter`` would give."""
    seg = Segmenter(open_ids, close_ids, start)
    seg.extend(ids)
    return seg.thoughts
