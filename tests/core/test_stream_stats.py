"""The stats' trip to a streaming client costs O(1) per chunk: built every ``every`` tokens and at the end, and the
HTTP side reads back from the end of the per-token list, never the whole of it. Counted, not timed; the slicing and
accumulation are SGLang 0.5.17's (``output_streamer`` slices ``[sent:len(output)]``, the tokenizer manager extends a
per-request list and hands the chunk all of it, or only the chunk's slice with incremental streaming)."""

from __future__ import annotations

import pytest

from zoomr_sgl.stream_stats import LatestStats, StatsFollower


def stream(tokens: int, every: int, incremental: bool, chunk: int = 1, admitted_at: int = 1):
    """Run one request through SGLang's slicing: returns the chunks' ``meta_info['zoomr']`` after the follower, the
    number of stats built, and the follower."""
    built = []

    def read():
        built.append(length)
        return {"full_kv_tokens": length}

    view, follower, accumulated, chunks, sent = None, StatsFollower(), [], [], 0
    for length in range(chunk, tokens + chunk, chunk):
        length = min(length, tokens)
        if length >= admitted_at and view is None:
            view = LatestStats(read, every)
        if length == tokens:
            view.finish({"full_kv_tokens": tokens, "final": True})
        piece = [] if view is None else view[sent:length]  # SGLang sends no entries for a request without the key
        sent = length
        accumulated.extend(piece)
        assert view is None or len(accumulated) == length  # the first slice covered the earlier tokens: aligned
        meta = {"zoomr": list(piece) if incremental else accumulated}
        follower.follow(meta)
        chunks.append(meta.get("zoomr"))
    return chunks, built, follower


@pytest.mark.parametrize("incremental", [False, True])
def test_stats_are_built_every_few_tokens_and_final_at_the_end(incremental):
    chunks, built, follower = stream(4000, every=16, incremental=incremental)
    assert len(built) <= 4000 // 16 + 2
    assert chunks[-1] == {"full_kv_tokens": 4000, "final": True}
    assert chunks[0] is not None  # admitted with the first token
    seen = [c["full_kv_tokens"] for c in chunks[:-1]]
    assert seen == sorted(seen) and all(length - s < 16 for length, s in zip(range(1, 4000), seen))
    # the HTTP side read back at most ``every`` entries per one-token chunk: O(1), not O(tokens so far)
    assert follower.entries_read <= 16 * len(chunks)


def test_chunks_before_admission_carry_no_stats_and_coalesced_chunks_keep_the_latest():
    chunks, built, _ = stream(300, every=16, incremental=False, chunk=7, admitted_at=20)
    assert chunks[:2] == [None, None]  # tokens 7 and 14 went out before the request was admitted
    assert all(isinstance(c, dict) for c in chunks[2:])
    assert chunks[-1]["final"] and len(built) <= 300 // 16 + 2


def test_a_non_streaming_response_gets_the_final_stats_in_its_one_slice():
    view = LatestStats(lambda: {"x": 1}, every=16)
    view.finish({"x": 2})
    piece = view[0:500]
    assert len(piece) == 500 and piece[-1] == {"x": 2} and piece[:-1] == [None] * 499
