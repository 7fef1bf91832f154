"""Engine mode: the server closes a thought by forcing the opening summary marker, and closes a long summary by
forcing the closing one; the sampler then emits those tokens in place of what it sampled.

Contract:
- ``decide(st, last_two, processed)`` after a request's step (``processed``: the ``forward_iter`` whose token was
  just fed): when nothing is queued or still in flight, at a boundary (the open thought reached
  ``max_thought_tokens``, or ``min_thought_tokens`` and its last token completes ``thought_delimiter``) it queues the
  opening marker's ids on the request (``st.forced``); in a summary of ``max_summary_tokens`` it queues the closing
  marker's (beacon mode has none: the beacon is the whole summary). A token is in flight from the forward it was handed to until that forward is processed
  (``st.forced_forward``): with the overlap scheduler the forward after the processed one is already running, so
  the token decided now is emitted one token later than without it (a thought or summary one token longer).
  ``last_two`` are the stream's last two token ids (the delimiter test decodes them once per distinct pair, cached).
  Once the request's output holds ``thinking_end`` (``st.thinking_done``, kept by ``see_output``) the answer has
  begun: no thought is opened any more; a summary still open is closed as usual.
- ``see_output(st, output, new)`` after the request's ``new`` last output tokens were fed: marks the end of thinking
  when they complete the ``thinking_end`` marker's ids (tokenized once, like the summary markers).
- ``launch(forward_iter, rows)`` right before a decode forward is launched: each queued request whose row is in
  ``rows`` hands its next token to that forward; returns ``{row: token}`` for ``ForwardSlots.launch``. A token is
  handed only to a decode forward that holds the row, so a prefill between two decodes never loses one.
- ``clear(row)`` at admission and release.
"""

from __future__ import annotations

from zoomr_sgl.request_state import RequestZoom


class EngineMarkers:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._queued: dict[int, RequestZoom] = {}  # row -> request with tokens queued
        self._delim_cache: dict[tuple[str, int, int], bool] = {}
        self._marker_cache: dict[str, tuple[int, ...]] = {}
        self.forced_markers = 0

    def marker_ids(self, text: str) -> tuple[int, ...]:
        ids = self._marker_cache.get(text)
        if ids is None:
            ids = tuple(self.tokenizer.encode(text, add_special_tokens=False))
            self._marker_cache[text] = ids
        return ids

    def see_output(self, st: RequestZoom, output: list[int], new: int) -> None:
        """``output``: the request's output ids, the last ``new`` of them just fed."""
        end = self.marker_ids(st.config.thinking_end) if st.config.thinking_end else ()
        if st.thinking_done or not end:
            return
        tail = output[-(new + len(end) - 1):]
        st.thinking_done = any(tuple(tail[i:i + len(end)]) == end for i in range(len(tail) - len(end) + 1))

    def decide(self, st: RequestZoom, last_two: tuple[int, int] | None, processed: int) -> None:
        if st.forced or st.forced_forward > processed:  # a marker is queued or still in flight
            return
        seg, cfg = st.table.segmenter, st.config
        open_summary = seg.open_summary
        if open_summary is None:
            if st.thinking_done:  # the answer: no more thoughts
                return
            n = seg.length - seg.detail_start
            boundary = n >= cfg.max_thought_tokens or (
                n >= cfg.min_thought_tokens and last_two is not None
                and self._ends_with_delimiter(last_two, cfg.thought_delimiter)
            )
            if boundary:
                self._queue(st, st.open_ids)
        elif st.close_ids and seg.length - open_summary.summary_start - len(st.open_ids) >= cfg.max_summary_tokens:
            self._queue(st, st.close_ids)

    def _queue(self, st: RequestZoom, ids: tuple[int, ...]) -> None:
        st.forced.extend(ids)
        self._queued[st.row] = st
        st.forced_markers += 1
        self.forced_markers += 1

    def launch(self, forward_iter: int, rows: set[int]) -> dict[int, int]:
        if not self._queued:
            return {}
        handed = {}
        for row, st in list(self._queued.items()):
            if row not in rows:
                continue
            handed[row] = st.forced.popleft()
            st.forced_forward = forward_iter
            if not st.forced:
                del self._queued[row]
        return handed

    def clear(self, row: int) -> None:
        st = self._queued.pop(row, None)
        if st is not None:
            st.forced.clear()

    def _ends_with_delimiter(self, last_two: tuple[int, int], delimiter: str) -> bool:
        key = (delimiter, *last_two)
        hit = self._delim_cache.get(key)
        if hit is None:
            hit = delimiter in self.tokenizer.decode(list(last_two)) and delimiter not in self.tokenizer.decode(
                [last_two[0]])
            if len(self._delim_cache) > 1 << 16:
                self._delim_cache.clear()
            self._delim_cache[key] = hit
        return hit
