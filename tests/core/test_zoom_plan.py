"""The zoom's recall room, with the real pieces on CPU (SGLang's token allocator, the host store, a thought table):
a recall that does not fit leaves the next step's slots free and undoes the eviction that only made room for it;
one that fits evicts, recalls and keeps the request's device count exact."""

from __future__ import annotations

import pytest
import torch

from tests.core.mover_world import mover_world, program_request
from zoomr_sgl.config import ZoomRConfig
from zoomr_sgl.thought_table import Location, ZoomDecision
from zoomr_sgl.zoom_plan import ZoomPlanner

OPEN, CLOSE = 900, 901


def world(pool: int = 64, **config):
    w = mover_world(pool, host_tokens=256)
    allocator, req_to_token, mover = w.allocator, w.req_to_token, w.mover
    planner = ZoomPlanner(w.kv_pool, req_to_token, (0,), mover, allocator)
    cfg = ZoomRConfig(**{"zoom_budget": 8, "zoom_topk": 1, "summary_mode": "program", **config})
    ids = [*range(1, 9), OPEN, 50, CLOSE, *range(11, 19), OPEN, 51, CLOSE, 60, 61, 62]  # two thoughts, then open
    st = program_request(w, 1, cfg, OPEN, CLOSE, ids)
    table = st.table
    for t in table.append(ids):
        assert mover.offload(st, t.index)  # lands at once on CPU: both details are holes backed by host blocks
    mover.recall(st, 0)
    mover.land(st, wait=True)
    assert table.location(0) is Location.ZOOM and table.location(1) is Location.HOST
    return allocator, req_to_token, planner, st


def device_count_is_exact(st, req_to_token) -> bool:
    n = st.table.length - 1
    return st.device_tokens() == int((req_to_token[st.row, :n] != 0).sum()) + st.inflight_slots + st.parked_slots


def test_room_counts_the_slots_the_recalls_own_evictions_free():
    allocator, req_to_token, planner, st = world()
    available = allocator.available_size()
    room = planner._apply(st, ZoomDecision(selected=(1,), recall=(1,), evict=(0,)), room=4)  # 8 needed: 4 + 8 freed
    assert st.table.location(1) is Location.ZOOM and st.table.location(0) is Location.HOST
    assert room == 4 and allocator.available_size() == available and device_count_is_exact(st, req_to_token)


def test_a_recall_without_room_is_trimmed_and_its_eviction_undone():
    allocator, req_to_token, planner, st = world()
    available = allocator.available_size()
    before = req_to_token[1].clone()
    room = planner._apply(st, ZoomDecision(selected=(1,), recall=(1,), evict=(0,)), room=-1)  # next step's slots
    assert st.table.location(0) is Location.ZOOM and st.table.location(1) is Location.HOST  # nothing moved
    assert torch.equal(req_to_token[1], before) and allocator.available_size() == available and room == -1
    assert st.recalls_trimmed == 1 and planner.totals["recalls_trimmed"] == 1
    st.table.check_invariants()
    assert device_count_is_exact(st, req_to_token)


def test_a_recall_that_fits_evicts_and_recalls_with_an_exact_device_count():
    allocator, req_to_token, planner, st = world()
    available = allocator.available_size()
    planner._apply(st, ZoomDecision(selected=(1,), recall=(1,), evict=(0,)), room=available)
    assert st.table.location(0) is Location.HOST and st.table.location(1) is Location.ZOOM
    assert allocator.available_size() == available  # 8 freed by the eviction, 8 taken by the recall
    assert bool((req_to_token[1, 0:8] == 0).all()) and bool((req_to_token[1, 11:19] != 0).all())
    st.table.check_invariants()
    assert device_count_is_exact(st, req_to_token)


@pytest.mark.parametrize("retain", [True, False])
def test_an_eviction_the_budget_does_not_need_is_done_only_without_retain(retain):
    allocator, req_to_token, planner, st = world(zoom_budget=16, zoom_retain=retain)  # room for both details
    available = allocator.available_size()
    planner._apply(st, ZoomDecision(selected=(1,), recall=(1,), evict=(0,)), room=available)
    assert st.table.location(1) is Location.ZOOM
    assert st.table.location(0) is (Location.ZOOM if retain else Location.HOST)
    assert allocator.available_size() == available - (8 if retain else 0)
    st.table.check_invariants()
    assert device_count_is_exact(st, req_to_token)


def test_parked_details_swap_in_the_buffer_without_room_and_without_taking_or_freeing_a_slot():
    """With the host store refusing everything both details are parked: a zoom with no room at all (the allocator
    has nothing to spare) still swaps them, since a parked recall takes no slot and its eviction frees none."""
    world = mover_world(64, host_tokens=1)
    allocator, req_to_token, mover = world.allocator, world.req_to_token, world.mover
    planner = ZoomPlanner(world.kv_pool, req_to_token, (0,), mover, allocator)
    ids = [*range(1, 9), OPEN, 50, CLOSE, *range(11, 19), OPEN, 51, CLOSE, 60]
    cfg = ZoomRConfig(zoom_budget=8, zoom_topk=1, summary_mode="program")
    st = program_request(world, 1, cfg, OPEN, CLOSE, ids)
    table, row = st.table, req_to_token[1, :len(ids)].clone()
    for t in table.append(ids):
        assert not mover.offload(st, t.index)
    available = allocator.available_size()
    planner._apply(st, ZoomDecision(selected=(0,), recall=(0,), evict=()), room=-1)
    assert table.location(0) is Location.ZOOM and torch.equal(req_to_token[1, 0:8], row[0:8])
    room = planner._apply(st, ZoomDecision(selected=(1,), recall=(1,), evict=(0,)), room=-1)
    assert (table.location(0), table.location(1)) == (Location.PARKED, Location.ZOOM) and room == -1
    assert bool((req_to_token[1, 0:8] == 0).all()) and torch.equal(req_to_token[1, 11:19], row[11:19])
    assert allocator.available_size() == available and st.recalls_trimmed == 0
    table.check_invariants()
    assert device_count_is_exact(st, req_to_token) and st.device_tokens() == len(ids) - 1
