"""ThoughtTable: legal and illegal moves, accounting by hand, invariants after random operation sequences, and an
invariant check that does catch corruption."""

import pytest
from hypothesis import given, settings, strategies as st

from zoomr_sgl.config import ZoomRConfig
from zoomr_sgl.thought_table import InvariantError, Location, ThoughtStateError, ThoughtTable

OPEN, CLOSE = (1, 2), (7, 8)


def thought_tokens(detail: int, summary: int = 1) -> list[int]:
    return [5] * detail + list(OPEN) + [6] * summary + list(CLOSE)


def make_table(details=(4, 6, 3), budget=10, prompt=3) -> ThoughtTable:
    table = ThoughtTable(ZoomRConfig(zoom_budget=budget), OPEN, CLOSE, start=prompt)
    closed = table.append([9] * prompt + [t for d in details for t in thought_tokens(d)] + [5, 5])
    assert [t.detail_len for t in closed] == list(details)
    table.check_invariants()
    return table


def test_accounting_by_hand():
    table = make_table()  # 3 prompt + (4+5) + (6+5) + (3+5) + 2 open = 33 tokens
    assert table.accounting().full_kv_tokens == 33 and table.accounting().device_kv_tokens == 33
    table.begin_offload(1)
    assert table.accounting().device_kv_tokens == 33  # slots held until the copy lands
    table.finish_offload(1)
    table.mark_offloaded(0)
    a = table.accounting()
    assert (a.device_kv_tokens, a.peak_device_kv_tokens, a.host_tokens, a.offloads) == (23, 33, 10, 2)
    table.begin_recall(1)
    assert table.accounting().device_kv_tokens == 29 and table.accounting().zoom_tokens == 6
    assert 12 not in table.attended_positions().tolist()  # a recall in flight is not attended
    table.finish_recall(1)
    assert set(range(12, 18)) <= set(table.attended_positions().tolist())
    table.evict(1)
    table.drop(2)
    a = table.accounting()
    assert (a.device_kv_tokens, a.dropped_tokens, a.recalls, a.evictions, a.drops) == (20, 3, 1, 1, 1)
    assert a.peak_device_kv_tokens == 33
    table.append([5] * 20)
    assert table.accounting().peak_device_kv_tokens == 40 and table.accounting().full_kv_tokens == 53
    table.check_invariants()
    table.free()
    table.check_invariants()
    assert table.accounting().device_kv_tokens == 0
    with pytest.raises(ThoughtStateError):
        table.append([5])


def test_illegal_moves_raise_and_change_nothing():
    table = make_table()
    for op in ("finish_offload", "begin_recall", "finish_recall", "evict"):
        with pytest.raises(ThoughtStateError, match=op):
            getattr(table, op)(0)
    with pytest.raises(ThoughtStateError, match="no closed thought"):
        table.mark_offloaded(3)
    table.mark_offloaded(0)
    table.drop(0)
    with pytest.raises(ThoughtStateError):
        table.drop(0)
    assert table.location(0) is Location.DROPPED and table.accounting().drops == 1
    table.check_invariants()


def test_recall_over_the_zoom_budget_raises():
    table = make_table(budget=8)
    for i in range(3):
        table.mark_offloaded(i)
    table.mark_recalled(0)  # 4 of 8
    with pytest.raises(ThoughtStateError, match="zoom buffer"):
        table.begin_recall(1)  # 6 more
    table.mark_recalled(2)  # 7 of 8
    assert table.zoom_tokens() == 7
    table.check_invariants()


@pytest.mark.parametrize("corrupt, needle", [
    (lambda t: setattr(t, "_off_device", t._off_device + 1), "off-device"),
    (lambda t: t._loc.__setitem__(1, Location.ZOOM), "LRU"),
    (lambda t: t._last_used.update({0: 99}), "LRU"),
    (lambda t: t._loc.pop(), "locations"),
])
def test_invariant_check_catches_corruption(corrupt, needle):
    table = make_table()
    table.mark_offloaded(0)
    corrupt(table)
    with pytest.raises(InvariantError, match=needle):
        table.check_invariants()


def test_a_parked_detail_holds_its_slots_out_of_attention_and_an_eviction_sends_it_back_there():
    table = make_table()  # thought 1: positions 12-17
    table.park(1)
    a = table.accounting()
    assert (a.device_kv_tokens, a.parked_tokens, a.host_tokens, a.offloads) == (33, 6, 0, 0)
    assert not set(range(12, 18)) & set(table.attended_positions().tolist())
    assert not table.has_host_copy(1)
    table.mark_recalled(1)  # its own slots back into the resident set
    assert table.location(1) is Location.ZOOM and table.zoom_tokens() == 6 and not table.has_host_copy(1)
    assert table.accounting().host_tokens == 0 and set(range(12, 18)) <= set(table.attended_positions().tolist())
    table.evict(1)  # no host copy: back to PARKED, not HOST
    assert table.location(1) is Location.PARKED and table.accounting().evictions == 1
    table.mark_offloaded(1)  # the store had room later
    assert table.location(1) is Location.HOST and table.has_host_copy(1)
    assert table.accounting().device_kv_tokens == 27 and table.accounting().offloads == 1
    table.mark_recalled(1)
    table.evict(1)
    assert table.location(1) is Location.HOST
    with pytest.raises(ThoughtStateError, match="park"):
        table.park(1)  # only a DEVICE detail parks
    table.check_invariants()


OPS = ("begin_offload", "finish_offload", "mark_offloaded", "begin_recall", "finish_recall", "mark_recalled",
       "evict", "drop", "park")


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=8), st.integers(1, 20),
       st.lists(st.tuples(st.sampled_from(OPS + ("append", "free")), st.integers(0, 9)), max_size=40))
def test_invariants_hold_after_random_operations(details, budget, ops):
    table = make_table(details, budget)
    expect = {i: Location.DEVICE for i in range(len(details))}  # an independent model of the locations
    copied = {i: False for i in range(len(details))}  # ... and of which details have a complete host copy
    for op, i in ops:
        if op == "free":
            if not table.finished:
                table.free()
                expect = {k: Location.FREED for k in expect}
        elif op == "append":
            if table.finished:
                with pytest.raises(ThoughtStateError):
                    table.append([5])
                continue
            for t in table.append(thought_tokens(i)):
                expect[t.index], copied[t.index] = Location.DEVICE, False
        else:
            before = table.accounting()
            try:
                getattr(table, op)(i)
            except ThoughtStateError:
                if not table.finished and i in expect:
                    assert table.accounting() == before and table.location(i) is expect[i]
                continue
            if op == "evict":  # back to where it came from: the host, or its parked slots
                assert table.location(i) is (Location.HOST if copied[i] else Location.PARKED)
            copied[i] = op in ("finish_offload", "mark_offloaded") or (copied[i] and op != "drop")
            expect[i] = table.location(i)
        table.check_invariants()
        assert [table.location(k) for k in sorted(expect)] == [expect[k] for k in sorted(expect)]
        off = sum(t.detail_len for t in table.thoughts if expect[t.index] in (Location.HOST, Location.DROPPED))
        a = table.accounting()
        assert a.device_kv_tokens == (0 if table.finished else table.length - off)
        assert a.zoom_tokens <= budget and a.peak_device_kv_tokens >= a.device_kv_tokens
        assert a.full_kv_tokens == table.length
        if not table.finished:
            copies = [t.detail_len for t in table.thoughts if copied[t.index] and expect[t.index] in
                      (Location.HOST, Location.RECALLING, Location.ZOOM)]
            assert a.host_tokens == sum(copies)
            assert a.parked_tokens == sum(t.detail_len for t in table.thoughts if expect[t.index] is Location.PARKED)


def test_preset_thoughts_move_like_others_have_no_summary_and_zoomr_leaves_them_alone():
    from zoomr_sgl.selection import policy_for
    from zoomr_sgl.selection.base import StepInputs

    table = ThoughtTable(ZoomRConfig(zoom_budget=10, zoom_interval=1), OPEN, CLOSE, start=6, preset=[(0, 2), (2, 5)])
    closed = table.append([9] * 6 + thought_tokens(4) + [5])
    assert [table.is_preset(t.index) for t in closed] == [True, True, False] and closed[1].summary_len == 0
    table.check_invariants()
    with pytest.raises(ValueError, match="no summary"):
        table.summary_span(1)
    table.mark_offloaded(1)  # the sentence's detail leaves the device; the prompt around it stays
    table.mark_offloaded(2)
    table.check_invariants()
    assert table.accounting().device_kv_tokens == table.length - 3 - 4
    assert table.attended_positions().tolist() == [0, 1, 5] + list(range(10, table.length))
    table.mark_recalled(1)
    table.check_invariants()
    assert policy_for("zoomr").to_score(table) == (2,)  # the preset is no candidate: it has no summary to score
    table.segmenter.preset = ((0, 3), (3, 5))  # corrupt: thought 0 is no longer the span the table was given
    with pytest.raises(InvariantError, match="preset thought 0"):
        table.check_invariants()
