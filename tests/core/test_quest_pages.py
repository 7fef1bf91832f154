"""Quest on the server's pieces (CPU): the segmenter's pages, the pages' key bounds, the planner's page scores
against the core's reference, and the server's pick (parked pages written back, unpicked ones parked again)."""

from __future__ import annotations

import pytest
import torch
from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator

from tests.core.mover_world import MoverWorld
from zoomr_sgl.config import ZoomRConfig
from zoomr_sgl.detail_mover import DetailMover
from zoomr_sgl.host_store import HostDetailStore
from zoomr_sgl.page_bounds import PageBounds
from zoomr_sgl.request_state import RequestZoom
from zoomr_sgl.segmenter import Segmenter
from zoomr_sgl.selection import policy_for
from zoomr_sgl.selection.quest import page_key_bounds, page_scores
from zoomr_sgl.thought_table import Location, ThoughtTable
from zoomr_sgl.zoom_plan import Plan, ZoomPlanner

POOL, HKV, D, HQ, PAGE = 256, 2, 8, 4, 4


def test_pages_tile_from_zero_and_close_when_the_next_token_comes():
    whole = Segmenter((9,), (10,), page_size=PAGE)
    closed = whole.extend(range(13))  # markers do not count in pages mode
    assert [(t.detail_start, t.detail_end, t.summary_start, t.summary_end) for t in closed] == [
        (0, 4, 4, 4), (4, 8, 8, 8), (8, 12, 12, 12)]
    one = Segmenter((9,), (10,), page_size=PAGE)
    assert [t for i in range(13) for t in [one.feed(i)] if t] == closed  # incremental = whole
    assert Segmenter((9,), (10,), page_size=PAGE).extend(range(12))[-1].detail_end == 8  # page 2 waits for token 12
    with pytest.raises(ValueError):
        Segmenter((9,), (10,), preset=[(0, 2)], start=2, page_size=PAGE)


def world() -> MoverWorld:
    allocator = TokenToKVPoolAllocator(POOL, torch.float32, "cpu", None, False)
    gen = torch.Generator().manual_seed(5)
    k = [torch.randn(POOL + 1, HKV, D, generator=gen) for _ in range(2)]
    v = [torch.randn(POOL + 1, HKV, D, generator=gen) for _ in range(2)]
    kv_pool = type("KV", (), {"k_buffer": k, "v_buffer": v})()
    req_to_token = torch.zeros(3, 64, dtype=torch.int32)
    host = HostDetailStore(2, 64, HKV, D, torch.float32, torch.device("cpu"))
    return MoverWorld(allocator, kv_pool, req_to_token, host,
                      DetailMover(allocator, req_to_token, kv_pool, host, make_host_room=lambda n: False))


def test_bounds_scores_and_the_pick_match_the_core_reference():
    w = world()
    cfg = ZoomRConfig(policy="quest", quest_page_size=PAGE, quest_top_pages=2, zoom_budget=3 * PAGE)
    table = ThoughtTable(cfg, (9,), (10,), 0, page_size=PAGE)
    n = 23
    w.req_to_token[1, :n] = w.allocator.alloc(n).to(torch.int32)
    st = RequestZoom(rid="r1", row=1, config=cfg, policy=policy_for("quest"), table=table, prompt_len=n,
                     protected_len=0, engine=False, open_ids=(9,), close_ids=(10,), row_holes=w.mover.row_holes)
    st.pages = PageBounds()
    closed = table.append(range(n))
    st.pages.add(w.kv_pool.k_buffer, w.req_to_token[1], closed[:3])  # in two goes, as steps close them
    st.pages.add(w.kv_pool.k_buffer, w.req_to_token[1], closed[3:])
    assert len(closed) == st.pages.count == 5
    keys = torch.stack([buf[w.req_to_token[1, :n].long()] for buf in w.kv_pool.k_buffer])  # [L, n, Hkv, D]
    kmin, kmax = page_key_bounds(keys, PAGE)
    got = st.pages.bounds(torch.arange(5))
    assert torch.equal(got[0], kmin[:, :5].transpose(0, 1)) and torch.equal(got[1], kmax[:, :5].transpose(0, 1))

    for t in closed:
        w.mover.park(st, t.index)
    query = torch.randn(2, HQ, D, generator=torch.Generator().manual_seed(1))
    planner = ZoomPlanner(w.kv_pool, w.req_to_token, (0, 1), w.mover, w.allocator)
    planner.run([(st, 0)], {0: query[0][None], 1: query[1][None]}, step=1, headroom=1)
    want = torch.sort(-page_scores(query, kmin[:, :5], kmax[:, :5]), stable=True).indices[:2].sort().values.tolist()
    assert [i for i in range(5) if table.location(i) is Location.ZOOM] == want
    assert all(table.location(i) is Location.PARKED for i in range(5) if i not in want)
    for i in range(5):  # a picked page's own slots are back in the row; a parked one's are holes
        row = w.req_to_token[1, i * PAGE:(i + 1) * PAGE]
        assert bool((row != 0).all()) if i in want else bool((row == 0).all())
    assert planner.totals["scored_pages"] == 5 and st.parked_slots == 3 * PAGE

    other = torch.flip(query, dims=[-1])  # another query: the pick moves, nothing is kept from the last one
    planner.run([(st, 0)], {0: other[0][None], 1: other[1][None]}, step=2, headroom=1)
    again = torch.sort(-page_scores(other, kmin[:, :5], kmax[:, :5]), stable=True).indices[:2].sort().values.tolist()
    assert [i for i in range(5) if table.location(i) is Location.ZOOM] == again
    table.check_invariants()
    w.mover.end(st, evict_zoom=False)
    assert bool((w.req_to_token[1, :n] != 0).all()) and st.parked_slots == 0  # parked slots back at the release
