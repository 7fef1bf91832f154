"""zoomr_sgl/sentences.py: prompt sentences for SentenceKV (properties over random streams, and a real tokenizer)."""

import pytest
from hypothesis import given, settings, strategies as st

from zoomr_sgl.sentences import SentenceEnds, sentences

VOCAB = ["a", " word", ".", "?\n", " end.\"", "\n\n", "3.5", " Dr", "!", ")"]
ENDS = SentenceEnds.from_texts(VOCAB)


def test_end_tokens_from_their_text():
    assert [ENDS(i) for i in range(len(VOCAB))] == [False, False, True, True, True, True, False, False, True, False]
    assert not ENDS(len(VOCAB)) and not ENDS(-1)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(ids=st.lists(st.integers(0, len(VOCAB) - 1), max_size=60), min_len=st.integers(1, 8), data=st.data())
def test_sentences_tile_the_range_and_close_at_the_first_allowed_end(ids, min_len, data):
    start = data.draw(st.integers(0, len(ids)))
    stop = data.draw(st.integers(start, len(ids)))
    got = sentences(ids, ENDS, min_len, start, stop)
    assert bool(got) == (stop > start) and all(s.tokens > 0 for s in got)
    assert [s.start for s in got] == ([start] + [s.end for s in got[:-1]] if got else [])  # no gap, no overlap
    assert (got[-1].end if got else start) == stop
    assert all(s.closed for s in got[:-1])
    for s in got:
        # where the span could have closed: an end token with at least min_len tokens before and at it
        could = [p for p in range(s.start, s.end) if p + 1 - s.start >= min_len and ENDS(ids[p])]
        assert could == ([s.end - 1] if s.closed else [])
    assert got == sentences(list(ids), ENDS, min_len, start, stop)  # deterministic


@settings(max_examples=200, deadline=None, derandomize=True)
@given(ids=st.lists(st.integers(0, len(VOCAB) - 1), max_size=60), min_len=st.integers(1, 8), data=st.data())
def test_a_prompts_prefix_splits_into_a_prefix_of_its_closed_sentences(ids, min_len, data):
    """What lets a later request that repeats a prompt's beginning find the same sentences (and borrow their host
    copies): segmenting from 0, the closed sentences of any prefix are the first closed sentences of the whole."""
    cut = data.draw(st.integers(0, len(ids)))
    whole = [s for s in sentences(ids, ENDS, min_len) if s.closed]
    part = [s for s in sentences(ids[:cut], ENDS, min_len) if s.closed]
    assert part == whole[:len(part)] and all(s.end <= cut for s in part)
    assert whole[len(part):] == [] or whole[len(part)].end > cut  # the next one had not closed by the cut


def test_records_prompt_splits_into_its_records():
    from tokenizers import Tokenizer

    from reasoner.tasks import problem
    from tests.server_process import REPO

    tok = Tokenizer.from_file(str(REPO / "models" / "zoomr-reasoner" / "tokenizer.json"))
    p = problem("heldout", "records", 1, prompt_chars=2000)
    ids = tok.encode(p.prompt).ids
    got = sentences(ids, SentenceEnds.from_tokenizer(tok), 4)
    texts = [tok.decode(ids[s.start:s.end]).strip() for s in got]
    records = p.prompt.split("\n")[1:-1]  # "Records:" (no sentence end) opens the first record's sentence
    assert texts == [f"Records:\n{records[0]}"] + records[1:] + [p.prompt.split("\n")[-1]]
    assert all(s.closed for s in got)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="min_len"):
        sentences([0, 2], ENDS, 0)
    with pytest.raises(ValueError, match="start"):
        sentences([0, 2], ENDS, 1, start=3)
    with pytest.raises(ValueError, match="start"):
        sentences([0, 2], ENDS, 1, start=2, stop=1)
