"""A full host store (keep_on_device): the refused thought's detail stays on the device, attended and counted in
``host_refused_tokens``, and is offloaded once room frees up (the manager retries as later thoughts close), with the
real pieces on CPU (SGLang's token allocator, the host store, a thought table)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator

from zoomr_sgl.config import ZoomRConfig
from zoomr_sgl.detail_mover import DetailMover
from zoomr_sgl.host_store import HostDetailStore
from zoomr_sgl.request_state import RequestZoom, request_stats
from zoomr_sgl.selection import policy_for
from zoomr_sgl.thought_table import Location, ThoughtTable

OPEN, CLOSE = 700, 701
POOL = 96


def test_a_refused_offload_keeps_the_detail_counted_and_is_retried_when_room_frees():
    allocator = TokenToKVPoolAllocator(POOL, torch.float32, "cpu", None, False)
    kv_pool = SimpleNamespace(k_buffer=[torch.randn(POOL + 1, 1, 2)], v_buffer=[torch.randn(POOL + 1, 1, 2)])
    req_to_token = torch.zeros(3, 64, dtype=torch.int32)
    host = HostDetailStore(1, 10, 1, 2, torch.float32)  # room for one 6-token detail
    mover = DetailMover(allocator, req_to_token, kv_pool, host, make_host_room=lambda n: False)
    cfg = ZoomRConfig(summary_mode="program", host_store_tokens=10)
    ids = [*range(1, 7), OPEN, 40, CLOSE, 50]  # a 6-token detail, its summary, then an open thought
    states = []
    for row in (1, 2):
        table = ThoughtTable(cfg, (OPEN,), (CLOSE,), 0)
        st = RequestZoom(rid=f"r{row}", row=row, config=cfg, policy=policy_for("zoomr"), table=table, prompt_len=0,
                         protected_len=0, engine=False, open_ids=(OPEN,), close_ids=(CLOSE,),
                         row_holes=mover.row_holes)
        req_to_token[row, :len(ids)] = allocator.alloc(len(ids)).to(torch.int32)
        (closed,) = table.append(ids)
        mover.offload(st, closed.index)
        states.append(st)
    first, second = states
    assert first.table.location(0) is Location.HOST and not first.host_refused
    assert second.table.location(0) is Location.DEVICE and second.host_refused == [0]
    assert request_stats(second).host_refused_tokens == 6 and request_stats(first).host_refused_tokens == 0
    assert int((req_to_token[2, :6] != 0).sum()) == 6  # still attended where it was

    mover.retry_refused(second)  # still full: nothing changes
    assert second.table.location(0) is Location.DEVICE and second.host_refused == [0]

    host.free(first.blocks.pop(0))  # the first request ends: its block goes
    mover.retry_refused(second)
    assert second.table.location(0) is Location.HOST and not second.host_refused
    assert request_stats(second).host_refused_tokens == 0 and int((req_to_token[2, :6] != 0).sum()) == 0
    n = second.table.length - 1
    assert second.device_tokens() == int((req_to_token[2, :n] != 0).sum()) + second.inflight_slots
