"""How a request's ZoomR stats travel from the scheduler to its client at O(1) cost per streamed chunk.

SGLang carries ``req.customized_info[key]``, a per-token list, from the scheduler to the HTTP side: the scheduler
slices it per streamed chunk (``[sent:len(output)]``), the main process appends each slice to the request's
accumulation and hands the chunk ``meta_info[key]``: the whole accumulation by reference (default streaming) or the
chunk's own slice (``--incremental-streaming-output``). Stats built for every token and a scan of the accumulation
on every chunk are both O(tokens so far) per chunk, O(n^2) per request: at 16K output tokens that scan alone held
SGLang's HTTP side to about 60% of what the GPU generated (issue 11's capacity benchmark, 2026-12-01).

Contract:
- ``LatestStats(read, every=STATS_EVERY)`` sits in ``req.customized_info['zoomr']``. A slice answers Nones and, as
  its last entry, ``read()`` (the stats of the moment, O(thoughts)) when at least ``every`` tokens went by since the
  last stats it answered, on its first slice, and on every slice after ``finish(final)``; otherwise Nones only. So a
  request builds and ships ``tokens / every`` stats over its life, and its final chunk has the exact final stats.
  Its first slice also covers the tokens streamed before it existed (the prefill's first token goes out before the
  request is admitted), so the accumulation stays aligned with the tokens.
- ``StatsFollower()``: one per response stream on the HTTP side. ``follow(meta)`` replaces the per-token list
  ``meta['zoomr']`` by one dict, the latest stats the stream has seen: it reads the list from its end back to the
  first entry that is not None (at most ``every`` entries, or the chunk's slice), and a chunk whose entries are all
  None gets the previous stats. Before any stats, the key is removed.
"""

from __future__ import annotations

from typing import Callable

STATS_EVERY = 16  # tokens between two stats a streamed request ships (the stats are stale by at most this much)


class LatestStats(list):
    """Per-token stats for SGLang's slicing: built every ``every`` tokens and at the end (see the module contract)."""

    def __init__(self, read: Callable[[], dict], every: int = STATS_EVERY):
        super().__init__()
        self.read = read
        self.every = every
        self.sliced = False
        self.final = False
        self.answered_at = 0  # the slice end (output length) of the last stats answered

    def finish(self, final: dict) -> None:
        """From now on every slice ends with ``final`` (the request was released; its stats no longer change)."""
        self.read = lambda: final
        self.final = True

    def __getitem__(self, item):
        if not isinstance(item, slice):
            return self.read()
        start = item.start or 0
        stop = start + 1 if item.stop is None else item.stop
        n = max(stop - (start if self.sliced else 0), 0)
        first, self.sliced = not self.sliced, True
        if not n:
            return []
        if first or self.final or stop - self.answered_at >= self.every:
            self.answered_at = stop
            return [None] * (n - 1) + [self.read()]
        return [None] * n

    def __reduce__(self):  # pickled (never in practice: SGLang slices it first) as the dict of the moment
        return (dict, (self.read(),))


class StatsFollower:
    """One response stream's latest stats (see the module contract)."""

    def __init__(self):
        self.latest: dict | None = None
        self.entries_read = 0  # how many list entries ``follow`` has looked at (the suite counts it)

    def follow(self, meta: dict) -> None:
        per_token = meta.get("zoomr")
        if not isinstance(per_token, list):
            return
        for i in range(len(per_token) - 1, -1, -1):
            self.entries_read += 1
            if per_token[i] is not None:
                self.latest = per_token[i]
                break
        if self.latest is None:
            del meta["zoomr"]
        else:
            meta["zoomr"] = self.latest
