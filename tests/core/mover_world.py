"""The real pieces a detail move touches, small and on CPU (SGLang's token allocator, a one-layer KV pool, a
``req_to_token`` table, the host store, a ``DetailMover``), and a request record over them: shared by the move and
zoom-plan tests."""

from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple

import torch
from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator

from zoomr_sgl.config import ZoomRConfig
from zoomr_sgl.detail_mover import DetailMover
from zoomr_sgl.host_store import HostDetailStore
from zoomr_sgl.request_state import RequestZoom
from zoomr_sgl.selection import policy_for
from zoomr_sgl.thought_table import ThoughtTable


class MoverWorld(NamedTuple):
    allocator: TokenToKVPoolAllocator
    kv_pool: SimpleNamespace  # k_buffer / v_buffer: one layer of random [pool + 1, 1, dim] (slot 0 is the hole)
    req_to_token: torch.Tensor
    host: HostDetailStore
    mover: DetailMover


def mover_world(pool: int, host_tokens: int, dim: int = 4, rows: int = 3, width: int = 128) -> MoverWorld:
    allocator = TokenToKVPoolAllocator(pool, torch.float32, "cpu", None, False)
    kv_pool = SimpleNamespace(k_buffer=[torch.randn(pool + 1, 1, dim)], v_buffer=[torch.randn(pool + 1, 1, dim)])
    req_to_token = torch.zeros(rows, width, dtype=torch.int32)
    host = HostDetailStore(1, host_tokens, 1, dim, torch.float32)
    mover = DetailMover(allocator, req_to_token, kv_pool, host, make_host_room=lambda n: False)
    return MoverWorld(allocator, kv_pool, req_to_token, host, mover)


def program_request(world: MoverWorld, row: int, cfg: ZoomRConfig, open_id: int, close_id: int,
                    ids: list[int]) -> RequestZoom:
    """A program-mode ``zoomr`` request in ``row`` whose sequence ``ids`` holds fresh slots; its table has not seen
    the ids yet (the caller appends them and moves what closes)."""
    table = ThoughtTable(cfg, (open_id,), (close_id,), 0)
    world.req_to_token[row, :len(ids)] = world.allocator.alloc(len(ids)).to(torch.int32)
    return RequestZoom(rid=f"r{row}", row=row, config=cfg, policy=policy_for("zoomr"), table=table, prompt_len=0,
                       protected_len=0, engine=False, open_ids=(open_id,), close_ids=(close_id,),
                       row_holes=world.mover.row_holes)
