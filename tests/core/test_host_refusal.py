"""A full host store (keep_on_device): the refused thought's detail is parked (it keeps its device slots, leaves the
resident set, counted in ``host_refused_tokens`` and ``parked_tokens``), a zoom recalls it by writing its own slots
back (no copy, no new slot), an eviction parks it again, it is offloaded once room frees up (the manager retries as
later thoughts close), and a release writes parked slots back into the row; with the real pieces on CPU (SGLang's
token allocator, the host store, a thought table)."""

from __future__ import annotations

import torch

from tests.core.mover_world import mover_world, program_request
from zoomr_sgl.config import ZoomRConfig
from zoomr_sgl.request_state import request_stats
from zoomr_sgl.thought_table import Location

OPEN, CLOSE = 700, 701
POOL = 96


def test_a_refused_offload_keeps_the_detail_counted_and_is_retried_when_room_frees():
    world = mover_world(POOL, host_tokens=10, dim=2)  # room for one 6-token detail
    allocator, kv_pool, req_to_token, host, mover = world
    cfg = ZoomRConfig(summary_mode="program", host_store_tokens=10)
    ids = [*range(1, 7), OPEN, 40, CLOSE, 50]  # a 6-token detail, its summary, then an open thought
    states = []
    for row in (1, 2):
        st = program_request(world, row, cfg, OPEN, CLOSE, ids)
        (closed,) = st.table.append(ids)
        mover.offload(st, closed.index)
        states.append(st)
    first, second = states
    assert first.table.location(0) is Location.HOST and not first.host_refused
    assert second.table.location(0) is Location.PARKED and second.host_refused == [0]
    stats = request_stats(second)
    assert (stats.host_refused_tokens, stats.parked_tokens, request_stats(first).host_refused_tokens) == (6, 6, 0)
    assert int((req_to_token[2, :6] != 0).sum()) == 0  # out of the resident set ...
    parked = second.parked[0].clone()
    free_before = int(allocator.available_size())
    n = second.table.length - 1
    assert second.device_tokens() == n == int((req_to_token[2, :n] != 0).sum()) + 6  # ... but its slots are held

    mover.recall(second, 0)  # a zoom picks it: its own slots go back, nothing is allocated
    assert second.table.location(0) is Location.ZOOM and int(allocator.available_size()) == free_before
    assert torch.equal(req_to_token[2, :6].long(), parked) and second.device_tokens() == n
    assert mover.recall_slots(second, 0) == 6 and mover.evict_slots(second, 0) == 0
    mover.evict(second, 0)  # no host copy: parked again, slots kept
    assert second.table.location(0) is Location.PARKED and int(allocator.available_size()) == free_before
    assert mover.recall_slots(second, 0) == 0 and int((req_to_token[2, :6] != 0).sum()) == 0

    mover.retry_refused(second)  # still full: nothing changes
    assert second.table.location(0) is Location.PARKED and second.host_refused == [0]

    host.free(first.blocks.pop(0))  # the first request ends: its block goes
    mover.retry_refused(second)  # offloaded from its parked slots, which are freed once the copy lands
    assert second.table.location(0) is Location.HOST and not second.host_refused and not second.parked
    assert request_stats(second).host_refused_tokens == 0 and int((req_to_token[2, :6] != 0).sum()) == 0
    assert int(allocator.available_size()) == free_before + 6
    assert second.device_tokens() == int((req_to_token[2, :n] != 0).sum()) + second.inflight_slots
    k, v = kv_pool.k_buffer[0][parked].clone(), kv_pool.v_buffer[0][parked].clone()
    kv_pool.k_buffer[0][parked] = kv_pool.v_buffer[0][parked] = float("nan")  # freed slots: anything may be there
    mover.recall(second, 0)  # the host copy was taken from the parked slots
    mover.land(second, wait=True)
    recalled = req_to_token[2, :6].long()
    assert torch.equal(kv_pool.k_buffer[0][recalled], k) and torch.equal(kv_pool.v_buffer[0][recalled], v)


def test_a_release_writes_parked_slots_back_into_the_row():
    world = mover_world(POOL, host_tokens=1, dim=2)  # too small for any detail
    req_to_token, mover = world.req_to_token, world.mover
    ids = [*range(1, 7), OPEN, 40, CLOSE, *range(10, 15), OPEN, 41, CLOSE, 50]
    st = program_request(world, 1, ZoomRConfig(summary_mode="program", host_store_tokens=1), OPEN, CLOSE, ids)
    table, row = st.table, req_to_token[1, :len(ids)].clone()
    for thought in table.append(ids):
        assert not mover.offload(st, thought.index)
    mover.recall(st, 1)  # one parked detail in the zoom buffer, one still parked
    assert [table.location(i) for i in (0, 1)] == [Location.PARKED, Location.ZOOM] and st.holes == 6
    mover.end(st, evict_zoom=True)
    assert torch.equal(req_to_token[1, :len(ids)], row) and st.holes == 0 and not st.parked and st.parked_slots == 0
