"""Segmenter: spans on hand-made sequences, every documented edge case, and incremental == whole == an independent
forward-scan oracle on random sequences."""

import pytest
from hypothesis import assume, given, settings, strategies as st

from zoomr_sgl.segmenter import Segmenter, Thought, segment

OPEN, CLOSE = (1, 2), (7, 8)


def T(i, ds, de, se, closed=True):
    return Thought(i, ds, de, de, se, closed)


def test_multi_token_markers_tile_the_sequence_and_markers_belong_to_the_summary():
    #      0  1  2  3  4  5  6  7  8  9 10 11 12 13
    ids = [5, 5, 1, 2, 6, 7, 8, 5, 1, 2, 6, 6, 7, 8]
    assert segment(ids, OPEN, CLOSE) == (T(0, 0, 2, 7), T(1, 7, 8, 14))


def test_engine_mode_ignores_markers_in_the_prompt_program_mode_finds_them():
    prompt = [1, 2, 6, 7, 8]  # a whole summary inside the prompt
    ids = prompt + [5, 5, 1, 2, 6, 7, 8]
    assert segment(ids, OPEN, CLOSE, start=len(prompt)) == (T(0, 5, 7, 12),)
    assert segment(ids, OPEN, CLOSE, start=0) == (T(0, 0, 0, 5), T(1, 5, 7, 12))


def test_marker_straddling_start_is_not_a_marker():
    assert segment([1, 2, 6, 7, 8], OPEN, CLOSE, start=1) == ()


def test_closing_marker_without_opening_is_detail_text():
    ids = [5, 7, 8, 5, 1, 2, 7, 8]
    assert segment(ids, OPEN, CLOSE) == (T(0, 0, 4, 8),)


def test_nested_opening_is_summary_text_and_the_first_close_closes():
    ids = [5, 1, 2, 6, 1, 2, 6, 7, 8, 5, 7, 8]
    assert segment(ids, OPEN, CLOSE) == (T(0, 0, 1, 9),)


def test_unclosed_summary_is_reported_open_and_closes_later():
    seg = Segmenter(OPEN, CLOSE)
    assert seg.extend([5, 5, 1, 2, 6]) == []
    assert seg.thoughts == (T(0, 0, 2, 5, closed=False),)
    assert seg.open_summary.summary_end == 5 and seg.closed_thoughts == ()
    assert seg.extend([7, 8, 5]) == [T(0, 0, 2, 7)]
    assert seg.open_summary is None and seg.detail_start == 7


def test_empty_detail_and_markers_that_share_tokens_do_not_overlap():
    assert segment([1, 2, 7, 8], OPEN, CLOSE) == (T(0, 0, 0, 4),)
    # close (2, 3) may not reuse the 2 of open (1, 2)
    assert segment([1, 2, 3], (1, 2), (2, 3)) == (T(0, 0, 0, 3, closed=False),)
    assert segment([1, 2, 2, 3], (1, 2), (2, 3)) == (T(0, 0, 0, 4),)


def test_a_beacon_is_the_whole_summary_and_its_thought_closes_when_the_next_token_comes():
    B = (9,)
    #      0  1  2  3  4  5  6  7  8
    ids = [5, 5, 9, 5, 5, 5, 9, 9, 5]
    seg = Segmenter(B, ())
    assert seg.extend(ids[:3]) == [] and seg.open_summary == T(0, 0, 2, 3, closed=False)
    assert seg.extend(ids[3:4]) == [T(0, 0, 2, 3)]  # the beacon's KV exists once the next token is fed
    assert seg.extend(ids[4:]) == [T(1, 3, 6, 7), T(2, 7, 7, 8)]  # a beacon right after one: an empty detail
    assert segment([5, 1, 2, 5, 5], (1, 2), ()) == (T(0, 0, 1, 3),)  # a two-token beacon


@pytest.mark.parametrize("open_ids, close_ids", [((), (1,)), ((), ()), ((3, 4), (3, 4))])
def test_bad_markers_are_rejected(open_ids, close_ids):
    with pytest.raises(ValueError):
        Segmenter(open_ids, close_ids)


def oracle(ids, o, c, start):
    """Forward scan, written independently of Segmenter's suffix matching."""
    out, i, ds, ss = [], start, start, None
    while i < len(ids):
        if ss is None and tuple(ids[i:i + len(o)]) == o:
            ss, i = i, i + len(o)
        elif ss is not None and tuple(ids[i:i + len(c)]) == c:
            out.append(Thought(len(out), ds, ss, ss, i + len(c), True))
            ds, ss, i = i + len(c), None, i + len(c)
        else:
            i += 1
    if ss is not None:
        out.append(Thought(len(out), ds, ss, ss, len(ids), False))
    return tuple(out)


marker = st.lists(st.integers(0, 3), min_size=1, max_size=3).map(tuple)


@st.composite
def streams(draw):
    o, c = draw(marker), draw(st.one_of(marker, st.just(())))  # no closing marker: beacon mode
    if o == c:
        c = c + (4,)
    pieces = draw(st.lists(st.one_of(st.just(o), st.just(c), st.lists(st.integers(0, 5), max_size=6).map(tuple)),
                           max_size=14))
    ids = [t for p in pieces for t in p]
    start = draw(st.integers(0, len(ids)))
    cuts = sorted(draw(st.lists(st.integers(0, len(ids)), max_size=5)))
    return ids, o, c, start, cuts


@settings(max_examples=150, deadline=None)
@given(streams())
def test_incremental_equals_whole_equals_oracle(case):
    ids, o, c, start, cuts = case
    whole = segment(ids, o, c, start)
    assert whole == oracle(ids, o, c, start)
    seg, closed, prev = Segmenter(o, c, start), [], 0
    for cut in cuts + [len(ids)]:  # chunks of any size, checked at every chunk boundary
        closed += seg.extend(ids[prev:cut])
        prev = cut
        assert seg.thoughts == oracle(ids[:cut], o, c, start)
    assert tuple(closed) == tuple(t for t in whole if t.closed) == seg.closed_thoughts
    one = Segmenter(o, c, start)
    assert [t for t in map(one.feed, ids) if t] == closed
    # details and summaries tile [start, end of last summary) with no gap
    pos = start
    for t in whole:
        assert t.detail_start == pos and t.detail_end == t.summary_start
        pos = t.summary_end
    assert pos <= len(ids)


@settings(max_examples=150, deadline=None)
@given(streams())
def test_restart_keeps_earlier_closed_thoughts_then_segments_as_if_started_there(case):
    """``restart_at=P``: the thoughts closed before P (segmenting from 0), then exactly what ``start=P`` gives."""
    ids, o, c, restart, _ = case
    if restart == 0:
        with pytest.raises(ValueError):
            Segmenter(o, c, 0, restart_at=0)
        return
    assume(restart < len(ids))  # the restart happens when position ``restart`` is fed
    seg = Segmenter(o, c, 0, restart_at=restart)
    seg.extend(ids)
    before = [t for t in segment(ids[:restart], o, c, 0) if t.closed]
    after = segment(ids, o, c, restart)
    expected = tuple(before) + tuple(t._replace(index=t.index + len(before)) for t in after)
    assert seg.thoughts == expected


def test_restart_drops_an_open_summary_in_the_prompt():
    #      0  1  2  3  4  5  6 | 7  8  9 10 11 12
    ids = [5, 1, 2, 6, 7, 8, 1, 2, 6, 6, 1, 2, 5]  # prompt ids[:7]: a closed thought, then an opening marker
    seg = Segmenter(OPEN, CLOSE, 0, restart_at=7)
    seg.extend(ids)
    assert seg.closed_thoughts == (T(0, 0, 1, 6),)
    assert seg.open_summary == Thought(1, 7, 10, 10, 13, False)  # the prompt's open summary is gone; from 7 on


def test_preset_spans_close_first_as_thoughts_without_summaries_then_markers_follow():
    """SentenceKV's prompt sentences: spans before ``start`` close when the stream reaches their end, numbered first,
    with empty summaries; the gap between them is no thought; marker thoughts after ``start`` come next, the same as
    without presets, and markers inside a preset span are not markers."""
    prompt = [9, 9, 1, 2, 9, 9, 9, 9, 9, 7, 8, 9]  # markers inside the prompt: ignored before start
    out = [5, 5, 1, 2, 6, 7, 8, 5]
    seg = Segmenter((1, 2), (7, 8), start=len(prompt), preset=[(1, 4), (4, 11)])
    closed = [(pos, t) for pos, tok in enumerate(prompt + out) if (t := seg.feed(tok)) is not None]
    assert closed[0] == (3, Thought(0, 1, 4, 4, 4, True)) and closed[1] == (10, Thought(1, 4, 11, 11, 11, True))
    plain = segment(prompt + out, (1, 2), (7, 8), start=len(prompt))
    assert [t._replace(index=t.index + 2) for t in plain] == [t for _, t in closed[2:]] and len(closed) == 3
    with pytest.raises(ValueError, match="preset spans"):
        Segmenter((1, 2), (7, 8), start=5, preset=[(0, 6)])  # past start
    for bad in ([(2, 2)], [(0, 3), (2, 4)], [(3, 4), (0, 2)]):  # empty, overlapping, unsorted
        with pytest.raises(ValueError, match="preset spans"):
            Segmenter((1, 2), (7, 8), start=5, preset=bad)
