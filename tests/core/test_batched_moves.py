"""A zoom's moves in batches (``DetailMover.recall_many``, ``evict_many``, ``land``): several details recalled
together land in their own positions with the KV they left with, evicted together they become holes again and hand
every slot back, and a mix with a detail recalled from PARKED keeps that one's slots; with the real pieces on CPU
(SGLang's token allocator, the host store, a thought table)."""

from __future__ import annotations

import torch

from tests.core.mover_world import mover_world, program_request
from zoomr_sgl.config import ZoomRConfig
from zoomr_sgl.thought_table import Location

OPEN, CLOSE = 700, 701


def closed_request(world, row: int, details: list[int]):
    """A program-mode request whose thoughts have details of ``details`` tokens, each closed by a one-token summary."""
    ids, n = [], 1
    for size in details:
        ids += [*range(n, n + size), OPEN, 900, CLOSE]
        n += size
    ids.append(950)  # the open thought
    st = program_request(world, row, ZoomRConfig(summary_mode="program"), OPEN, CLOSE, ids)
    closed = st.table.append(ids)
    assert [t.detail_len for t in closed] == details
    return st, [t.index for t in closed]


def resident(world, st) -> int:
    """Slots in the row up to the last token (whose KV the next step writes: ``device_tokens`` does not count it)."""
    return int((world.req_to_token[st.row, :st.table.length - 1] != 0).sum())


def kv_of(world, row: int, lo: int, hi: int):
    slots = world.req_to_token[row, lo:hi].long()
    return world.kv_pool.k_buffer[0][slots].clone(), world.kv_pool.v_buffer[0][slots].clone()


def test_details_recalled_and_evicted_together_keep_their_kv_and_hand_back_every_slot():
    world = mover_world(160, host_tokens=64)
    st, thoughts = closed_request(world, 1, [5, 3, 7, 4])
    spans = [st.span(i) for i in thoughts]
    before = [kv_of(world, 1, lo, hi) for lo, hi in spans]
    for i in thoughts:
        assert world.mover.offload(st, i)
    free = int(world.allocator.available_size())
    assert all(st.table.location(i) is Location.HOST for i in thoughts)
    assert int((world.req_to_token[1, :spans[-1][1]] != 0).sum()) == 3 * 3  # only the summaries (markers too) stay

    world.mover.recall_many(st, thoughts[1:])  # one allocation, one batched copy
    world.mover.land(st, wait=True)  # one write of every landed recall into the row
    assert int(world.allocator.available_size()) == free - (3 + 7 + 4)
    for i, (lo, hi), kv in zip(thoughts[1:], spans[1:], before[1:]):
        assert st.table.location(i) is Location.ZOOM
        assert bool((world.req_to_token[1, lo:hi] != 0).all())
        got = kv_of(world, 1, lo, hi)
        assert torch.equal(got[0], kv[0]) and torch.equal(got[1], kv[1])
    assert int((world.req_to_token[1, spans[0][0]:spans[0][1]] != 0).sum()) == 0  # not recalled: still holes
    assert st.device_tokens() == resident(world, st)

    world.mover.evict_many(st, [thoughts[3], thoughts[1]])  # any order: one gather, one write, one free
    assert int(world.allocator.available_size()) == free - 7
    assert st.table.location(thoughts[1]) is Location.HOST and st.table.location(thoughts[3]) is Location.HOST
    for lo, hi in (spans[1], spans[3]):
        assert int((world.req_to_token[1, lo:hi] != 0).sum()) == 0
    assert st.device_tokens() == resident(world, st)
    assert world.mover.totals["evictions"] == 2 and world.mover.totals["recalls"] == 3


def test_a_batch_with_a_parked_detail_keeps_its_slots_and_moves_the_rest():
    world = mover_world(160, host_tokens=64)
    st, thoughts = closed_request(world, 2, [4, 6, 5])
    world.mover.park(st, thoughts[0])  # the store refused it once: holes, its slots kept aside
    parked = st.parked[thoughts[0]].clone()
    for i in thoughts[1:]:
        assert world.mover.offload(st, i)
    free = int(world.allocator.available_size())

    world.mover.recall_many(st, thoughts)  # the parked one by its own slots, the others by one copy
    world.mover.land(st, wait=True)
    assert int(world.allocator.available_size()) == free - (6 + 5)
    assert torch.equal(world.req_to_token[2, st.span(thoughts[0])[0]:st.span(thoughts[0])[1]].long(), parked)
    assert all(st.table.location(i) is Location.ZOOM for i in thoughts)

    world.mover.evict_many(st, thoughts)
    assert st.table.location(thoughts[0]) is Location.PARKED and torch.equal(st.parked[thoughts[0]], parked)
    assert all(st.table.location(i) is Location.HOST for i in thoughts[1:])
    assert int(world.allocator.available_size()) == free  # the parked slots stay held, the others are back
    assert st.device_tokens() == resident(world, st) + len(parked)
