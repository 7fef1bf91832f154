"""Policies over the shared mechanism: full and all-recalled zoomr equal dense attention, zoomr zooms into the thought
the query points at and evicts least recently used, the baselines attend what they say, invariants hold over random
multi-step runs, and permuting a batch changes no request's selection."""

import math
import random

import pytest
import torch
from hypothesis import given, settings, strategies as st

from zoomr_sgl.config import POLICIES, ZoomRConfig
from zoomr_sgl.reference_attention import dense_decode_attention, reference_decode_attention
from zoomr_sgl.selection import POLICY_REGISTRY, DetailAction, StepInputs, policy_for, select_batch
from zoomr_sgl.selection.quest import page_key_bounds, page_scores
from zoomr_sgl.scoring import thought_score
from zoomr_sgl.thought_table import Location, ThoughtTable

OPEN, CLOSE = (1, 2), (7, 8)
L, HQ, HKV, D, MAX_LEN = 2, 4, 2, 8, 400


def tokens(details, summary=2, tail=3):
    return [t for d in details for t in [5] * d + list(OPEN) + [6] * summary + list(CLOSE)] + [5] * tail


def settle(table, closed):
    """Do with newly closed details what the policy says (synchronously, as on CPU)."""
    action = policy_for(table.config.policy).detail_action
    for t in closed:
        if action is DetailAction.OFFLOAD:
            table.mark_offloaded(t.index)
        elif action is DetailAction.DROP:
            table.drop(t.index)
        table.check_invariants()


def request(cfg, details, prompt=4, seed=0):
    table = ThoughtTable(cfg, OPEN, CLOSE, start=prompt)
    settle(table, table.append([9] * prompt + tokens(details)))
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(L, MAX_LEN, HKV, D, generator=g)
    query = torch.randn(L, HQ, D, generator=g)
    return table, keys, query


def inputs(step, keys, query):
    return StepInputs(step, query, lambda p: keys[:, p])


def test_registry_matches_config_policies():
    assert tuple(POLICY_REGISTRY) == POLICIES
    assert all(policy_for(name).name == name for name in POLICIES)
    with pytest.raises(ValueError, match="unknown"):
        policy_for("oracle")


def attention_matches_dense(positions, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    k_seq, v_seq = torch.randn(length, HKV, D, generator=g), torch.randn(length, HKV, D, generator=g)
    q = torch.randn(1, HQ, D, generator=g)
    perm = torch.randperm(length + 7, generator=g)[:length]  # position -> pool slot, scattered
    k_pool, v_pool = torch.randn(length + 7, HKV, D), torch.randn(length + 7, HKV, D)
    k_pool[perm], v_pool[perm] = k_seq, v_seq
    got = reference_decode_attention(q, k_pool, v_pool, [perm[positions]])
    torch.testing.assert_close(got[0], dense_decode_attention(q[0], k_seq, v_seq), rtol=1e-5, atol=1e-6)


def test_full_policy_attends_everything_and_equals_dense():
    table, keys, query = request(ZoomRConfig(policy="full"), [5, 0, 9, 3])
    sel = policy_for("full").select(table, inputs(0, keys, query))
    assert torch.equal(sel.positions, torch.arange(table.length)) and sel.detail_action is DetailAction.KEEP
    attention_matches_dense(sel.positions, table.length)


def test_zoomr_with_budgets_covering_everything_equals_dense():
    details = [5, 7, 0, 9, 3]
    cfg = ZoomRConfig(zoom_budget=sum(details), zoom_topk=len(details), zoom_interval=1, wait_for_recall=True)
    table, keys, query = request(cfg, details)
    assert all(s.location is Location.HOST for s in table.states())
    sel = policy_for("zoomr").select(table, inputs(0, keys, query))
    assert sorted(sel.recall) == [0, 1, 3, 4]  # the empty detail has nothing to zoom into
    assert torch.equal(sel.positions, torch.arange(table.length))
    attention_matches_dense(sel.positions, table.length)
    # without waiting, the recalls are attended from the step after they land
    table = request(ZoomRConfig(zoom_budget=24, zoom_topk=5, zoom_interval=1), details)[0]
    sel = policy_for("zoomr").select(table, inputs(0, keys, query))
    assert len(sel.positions) == table.length - sum(details)
    table.apply(sel)
    for i in sel.recall:
        table.finish_recall(i)
    table.check_invariants()
    assert torch.equal(policy_for("zoomr").select(table, inputs(1, keys, query)).positions, torch.arange(table.length))


def point_at(keys, table, index):
    """A query that scores thought ``index`` highest: its summary keys and the query share one channel."""
    keys[:, table.summary_positions(index)] = 0.0
    keys[:, table.summary_positions(index), :, index % D] = 5.0
    query = torch.zeros(L, HQ, D)
    query[:, :, index % D] = 1.0
    return query


def test_zoomr_zooms_where_the_query_points_and_evicts_least_recently_used():
    cfg = ZoomRConfig(zoom_budget=12, zoom_topk=1, zoom_interval=4)  # room for three 4-token details
    table, keys, _ = request(cfg, [4] * 6)
    keys[:] = keys * 0.01
    policy = policy_for("zoomr")
    expected = [(2, ()), (0, ()), (5, ()), (0, ()), (3, (2,)), (1, (5,))]  # (recall, evict) per zoom
    for step, (target, evict) in enumerate(expected):
        query = point_at(keys, table, target)
        assert policy.select(table, inputs(4 * step + 1, keys, query)).recall == ()  # not a zoom step
        sel = policy.select(table, inputs(4 * step, keys, query))
        assert sel.selected == (target,) and sel.evict == evict
        assert sel.recall == (() if step == 3 else (target,))  # 0 is still in the buffer at the fourth zoom
        table.apply(sel)
        for i in sel.recall:
            table.mark_recalled(i)
        table.check_invariants()
    assert {s.thought.index for s in table.states() if s.location is Location.ZOOM} == {0, 3, 1}


def test_zoomr_without_retain_evicts_every_detail_the_zoom_did_not_pick():
    """``zoom_retain`` false: the buffer holds only what the last zoom picked, though the budget has room for more."""
    cfg = ZoomRConfig(zoom_budget=12, zoom_topk=1, zoom_interval=4, zoom_retain=False)
    table, keys, _ = request(cfg, [4] * 6)
    keys[:] = keys * 0.01
    policy = policy_for("zoomr")
    for step, target in enumerate([2, 0, 5, 0]):
        sel = policy.select(table, inputs(4 * step, keys, point_at(keys, table, target)))
        buffered = {s.thought.index for s in table.states() if s.location is Location.ZOOM}
        assert sel.selected == (target,) and set(sel.evict) == buffered - {target}
        table.apply(sel)
        for i in sel.recall:
            table.mark_recalled(i)
        table.check_invariants()
        assert {s.thought.index for s in table.states() if s.location is Location.ZOOM} == {target}


def test_zoomr_scores_through_score_summaries_when_given():
    """The manager's kernel scorer replaces the gather + reference: same scores, same choice; its scores decide."""
    cfg = ZoomRConfig(zoom_budget=8, zoom_topk=2, zoom_interval=1)
    table, keys, query = request(cfg, [4] * 5, seed=3)
    asked = []

    def reference(spans):  # per thought, through the one-thought definition
        asked.append([p.tolist() for p in spans])
        return torch.stack([thought_score(query, keys[:, p]) for p in spans])

    policy = policy_for("zoomr")
    plain = policy.select(table, inputs(0, keys, query))
    given = policy.select(table, StepInputs(0, query, None, reference))
    assert given[1:] == plain[1:] and torch.equal(given.positions, plain.positions) and len(asked) == 1
    assert asked[0] == [table.summary_positions(i).tolist() for i in range(5)]
    favour = lambda spans: torch.tensor([0.0, 0.0, 0.0, 2.0, 1.0])  # noqa: E731
    assert policy.select(table, StepInputs(0, query, None, favour)).recall == (3, 4)


def test_summary_only_drops_details_and_never_zooms():
    cfg = ZoomRConfig(policy="summary_only", zoom_interval=1)
    table, keys, query = request(cfg, [5, 6])
    assert [s.location for s in table.states()] == [Location.DROPPED] * 2
    sel = policy_for("summary_only").select(table, inputs(0, keys, query))
    assert sel.recall == sel.evict == () and sel.detail_action is DetailAction.DROP
    detail = set(range(4, 9)) | set(range(15, 21))
    assert sel.positions.tolist() == [p for p in range(table.length) if p not in detail]
    assert table.accounting().device_kv_tokens == table.length - 11


@pytest.mark.parametrize("sink, recent, expect", [(2, 3, [0, 1, 17, 18, 19]), (0, 4, [16, 17, 18, 19]),
                                                  (15, 10, list(range(20))), (3, 0, [0, 1, 2])])
def test_streaming_attends_sink_and_recent_window(sink, recent, expect):
    table = ThoughtTable(ZoomRConfig(policy="streaming", sink_tokens=sink, recent_tokens=recent), OPEN, CLOSE)
    table.append([5] * 20)
    assert policy_for("streaming").select(table, StepInputs(0)).positions.tolist() == expect


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 6), st.integers(0, 2**16))
def test_quest_page_bound_is_an_upper_bound(n, page, seed):
    g = torch.Generator().manual_seed(seed)
    keys, q = torch.randn(L, n, HKV, D, generator=g), torch.randn(L, HQ, D, generator=g)
    kmin, kmax = page_key_bounds(keys, page)
    bound = page_scores(q, kmin, kmax)
    logits = torch.einsum("lhd,lnhd->lhn", q, keys.repeat_interleave(HQ // HKV, dim=2)) / math.sqrt(D)
    for p in range(len(bound)):
        true = logits[:, :, p * page:(p + 1) * page].amax(-1).amax(-1).mean()
        assert bound[p] >= true - 1e-5


def test_quest_picks_the_pointed_page_plus_the_last_one():
    cfg = ZoomRConfig(policy="quest", quest_page_size=4, quest_top_pages=2)
    table = ThoughtTable(cfg, OPEN, CLOSE)
    table.append([5] * 30)  # pages 0..7, the last one partial
    keys = torch.zeros(L, MAX_LEN, HKV, D)
    keys[:, 9, :, 0] = 3.0  # page 2
    keys[:, 21, :, 1] = 2.0  # page 5
    query = torch.zeros(L, HQ, D)
    query[:, :, :2] = 1.0
    sel = policy_for("quest").select(table, inputs(3, keys, query))
    assert sel.positions.tolist() == [8, 9, 10, 11, 20, 21, 22, 23, 28, 29]
    assert sel.detail_action is DetailAction.KEEP
    small = ThoughtTable(cfg, OPEN, CLOSE)
    small.append([5] * 12)
    assert torch.equal(policy_for("quest").select(small, StepInputs(0)).positions, torch.arange(12))


def run_requests(order, cases, steps=6):
    """Drive several requests through decode steps, handling requests in ``order`` each step."""
    tables = {r: request(cfg, details, seed=r)[0] for r, (cfg, details) in enumerate(cases)}
    data = {r: request(cfg, details, seed=r)[1:] for r, (cfg, details) in enumerate(cases)}
    log = {r: [] for r in tables}
    for step in range(steps):
        sels = select_batch([tables[r] for r in order], [inputs(step, *data[r]) for r in order])
        for r, sel in zip(order, sels):
            log[r].append((sel.positions.tolist(), sel.selected, sel.recall, sel.evict))
            table = tables[r]
            table.apply(sel)
            for i in sel.recall:
                table.finish_recall(i)
            settle(table, table.append(tokens([step % 3 + 1], tail=0)))
            table.check_invariants()
    return log


def test_permuting_the_batch_changes_no_selection():
    rng = random.Random(3)
    cases = [(ZoomRConfig(policy=p, zoom_budget=rng.randint(4, 20), zoom_topk=rng.randint(1, 3), zoom_interval=2,
                          sink_tokens=3, recent_tokens=8, quest_page_size=4, quest_top_pages=2),
              [rng.randint(0, 8) for _ in range(rng.randint(1, 6))]) for p in POLICIES * 2]
    order = list(range(len(cases)))
    base = run_requests(order, cases)
    assert any(entry[2] for r in base for entry in base[r])  # some recalls happened
    for _ in range(2):
        rng.shuffle(order)
        assert run_requests(order, cases) == base


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=7), st.integers(1, 25), st.integers(1, 4),
       st.booleans(), st.integers(0, 2**16))
def test_zoomr_random_runs_keep_every_invariant(details, budget, topk, wait, seed):
    cfg = ZoomRConfig(zoom_budget=budget, zoom_topk=topk, zoom_interval=1, wait_for_recall=wait)
    table, keys, query = request(cfg, details, seed=seed)
    rng = random.Random(seed)
    policy = policy_for("zoomr")
    for step in range(8):
        query = torch.randn(L, HQ, D, generator=torch.Generator().manual_seed(seed + step))
        sel = policy.select(table, inputs(step, keys, query))
        pos = sel.positions.tolist()
        assert pos == sorted(set(pos)) and len(sel.selected) <= topk
        assert all(table.location(i) is Location.HOST for i in sel.recall)
        assert all(table.location(i) is Location.ZOOM for i in sel.evict)
        table.apply(sel)
        table.check_invariants()
        if wait:
            for i in sel.recall:
                table.finish_recall(i)
        attended_now = set(table.device_positions().tolist())
        assert set(pos) <= attended_now  # nothing attended that is not on the device
        for i in [i for i, s in enumerate(table.states()) if s.location is Location.RECALLING]:
            if rng.random() < 0.5:  # copies land in any order, some later
                table.finish_recall(i)
        settle(table, table.append(tokens([rng.randint(0, 6)], tail=rng.randint(0, 2))))
        table.check_invariants()
