"""The ``sentencekv`` policy in the core: prompt sentences as preset thoughts, picked by the query against their mean
keys exactly as ``SentenceIndex.pick`` would, within ``sentence_budget`` beside the marker thoughts' zoom, one buffer
never over ``zoom_budget``; with budgets that cover everything it attends everything (dense attention)."""

import random

import pytest
import torch
from hypothesis import given, settings, strategies as st

from zoomr_sgl import sentence_index
from zoomr_sgl.config import ZoomRConfig
from zoomr_sgl.reference_attention import dense_decode_attention, reference_decode_attention
from zoomr_sgl.selection import StepInputs, policy_for
from zoomr_sgl.sentences import Sentence
from zoomr_sgl.thought_table import IN_BUFFER, Location, ThoughtTable

OPEN, CLOSE = (1, 2), (7, 8)
L, HQ, HKV, D, MAX_LEN = 2, 4, 2, 8, 300
POLICY = policy_for("sentencekv")


def marker_tokens(details, summary=2, tail=3):
    return [t for d in details for t in [5] * d + list(OPEN) + [6] * summary + list(CLOSE)] + [5] * tail


def request(cfg, sentence_lens, details, tail=5, seed=0):
    """A prompt of sentences (then ``tail`` tokens of open text), then marker thoughts; every closed detail
    offloaded. Returns the table, the keys, a query and the prompt's ``SentenceIndex``."""
    spans, pos = [], 0
    for n in sentence_lens:
        spans.append((pos, pos + n))
        pos += n
    start = pos + tail
    table = ThoughtTable(cfg, OPEN, CLOSE, start=start, preset=spans)
    for t in table.append([9] * start + marker_tokens(details)):
        table.mark_offloaded(t.index)
    table.check_invariants()
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(L, MAX_LEN, HKV, D, generator=g)
    index = sentence_index.build([keys[i] for i in range(L)], torch.arange(table.length),
                                 [Sentence(lo, hi, True) for lo, hi in spans])
    return table, keys, torch.randn(L, HQ, D, generator=g), index


def step_inputs(step, keys, query, index):
    scores = index.scores(query)
    return StepInputs(step, query, lambda p: keys[:, p], score_sentences=lambda idx: scores[list(idx)])


def buffered(table, preset: bool) -> int:
    return sum(s.thought.detail_len for s in table.states()
               if s.location in IN_BUFFER and table.is_preset(s.thought.index) == preset)


def test_the_sentence_pick_is_the_index_pick_and_the_markers_zoom_in_what_is_left():
    cfg = ZoomRConfig(zoom_budget=40, zoom_topk=1, zoom_interval=1, sentence_budget=25)
    table, keys, query, index = request(cfg, [6, 9, 4, 7, 5, 8], [6, 6, 6])
    sel = POLICY.select(table, step_inputs(0, keys, query, index))
    sentences = [i for i in sel.selected if table.is_preset(i)]
    assert tuple(sentences) == index.pick(index.scores(query), 25)  # the oracle: best first within the share
    markers = [i for i in sel.selected if not table.is_preset(i)]
    assert len(markers) == 1 and markers[0] == policy_for("zoomr").select(
        table, StepInputs(0, query, lambda p: keys[:, p])).selected[0]  # the markers' own zoomr pick
    assert set(sel.recall) == set(sel.selected) and sel.evict == ()
    table.apply(sel)
    for i in sel.recall:
        table.mark_recalled(i)
    table.check_invariants()
    assert buffered(table, True) <= 25 and buffered(table, True) + buffered(table, False) <= 40
    assert POLICY.to_score(table) == (6, 7, 8) and POLICY.sentences_to_score(table) == tuple(range(6))


def test_without_retain_only_the_last_pick_stays_and_a_missing_scorer_is_refused():
    cfg = ZoomRConfig(zoom_budget=30, zoom_topk=1, zoom_interval=1, sentence_budget=12, zoom_retain=False)
    table, keys, _, index = request(cfg, [4, 4, 4, 4, 4], [3])
    for step in range(4):
        query = torch.randn(L, HQ, D, generator=torch.Generator().manual_seed(10 + step))
        sel = POLICY.select(table, step_inputs(step, keys, query, index))
        table.apply(sel)
        for i in sel.recall:
            table.mark_recalled(i)
        table.check_invariants()
        in_zoom = {s.thought.index for s in table.states() if s.location is Location.ZOOM}
        assert in_zoom == set(sel.selected)
        assert {i for i in in_zoom if table.is_preset(i)} == set(index.pick(index.scores(query), 12))
    with pytest.raises(ValueError, match="sentence scores"):
        POLICY.select(table, StepInputs(0, query, lambda p: keys[:, p]))


def test_budgets_covering_everything_attend_everything_and_equal_dense_attention():
    sentence_lens, details = [5, 3, 8, 6], [4, 0, 7]
    cfg = ZoomRConfig(zoom_budget=sum(sentence_lens) + sum(details), sentence_budget=sum(sentence_lens),
                      zoom_topk=len(details), zoom_interval=1, wait_for_recall=True)
    table, keys, query, index = request(cfg, sentence_lens, details)
    assert len(table.attended_positions()) == table.length - sum(sentence_lens) - sum(details)
    sel = POLICY.select(table, step_inputs(0, keys, query, index))
    assert torch.equal(sel.positions, torch.arange(table.length))
    g = torch.Generator().manual_seed(7)
    k, v = torch.randn(table.length, HKV, D, generator=g), torch.randn(table.length, HKV, D, generator=g)
    q = torch.randn(1, HQ, D, generator=g)
    got = reference_decode_attention(q, k, v, [sel.positions])
    torch.testing.assert_close(got[0], dense_decode_attention(q[0], k, v), rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=6), st.lists(st.integers(0, 8), max_size=4),
       st.integers(1, 40), st.integers(1, 30), st.integers(1, 3), st.booleans(), st.integers(0, 2**16))
def test_random_runs_keep_the_invariants_and_both_budgets(sentence_lens, details, budget, share, topk, retain, seed):
    cfg = ZoomRConfig(zoom_budget=budget, sentence_budget=share, zoom_topk=topk, zoom_interval=1,
                      zoom_retain=retain)
    table, keys, _, index = request(cfg, sentence_lens, details, seed=seed)
    rng = random.Random(seed)
    for step in range(6):
        query = torch.randn(L, HQ, D, generator=torch.Generator().manual_seed(seed + step))
        sel = POLICY.select(table, step_inputs(step, keys, query, index))
        assert all(table.location(i) is Location.HOST for i in sel.recall)
        assert all(table.location(i) is Location.ZOOM for i in sel.evict)
        table.apply(sel)  # raises if the one buffer would overflow zoom_budget
        table.check_invariants()
        assert buffered(table, True) <= min(share, budget)
        for i in [s.thought.index for s in table.states() if s.location is Location.RECALLING]:
            if rng.random() < 0.5:  # copies land in any order, some later
                table.finish_recall(i)
        table.check_invariants()
