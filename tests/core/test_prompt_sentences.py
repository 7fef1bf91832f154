"""SentenceKV's first zoom with the real pieces (SGLang's allocator, the host store, a DetailMover), on the CPU and,
where there is one, on a CUDA device (the Triton mean-key kernel, pinned host copies): one index build for every
request due, each sentence's key equal to the mean of its keys, the sentences outside the sink and recent windows
parked (their slots kept, out of the row), and the planner's sentence scores equal to the index's own."""

from __future__ import annotations

import pytest
import torch

from tests.core.mover_world import MoverWorld
from zoomr_sgl.config import ZoomRConfig
from zoomr_sgl.detail_mover import DetailMover
from zoomr_sgl.host_store import HostDetailStore
from zoomr_sgl.prompt_sentences import PromptSentences
from zoomr_sgl.request_state import RequestZoom
from zoomr_sgl.selection import policy_for
from zoomr_sgl.sentences import SentenceEnds
from zoomr_sgl.thought_table import Location, ThoughtTable
from zoomr_sgl.zoom_plan import Plan, ZoomPlanner

OPEN, CLOSE, END = 900, 901, 7  # id 7 ends a sentence
POOL, HKV, D, HQ = 256, 2, 8, 4
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class _Tokenizer:  # PromptSentences decodes each id once: id 7 is "." (ends a sentence), the rest a word
    def __len__(self):
        return 16

    def decode(self, ids):
        return "." if ids == [END] else " w"


def world(device: str) -> MoverWorld:
    from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    allocator = TokenToKVPoolAllocator(POOL, dtype, device, None, False)
    gen = torch.Generator().manual_seed(3)
    k = [torch.randn(POOL + 1, HKV, D, generator=gen).to(device, dtype) for _ in range(2)]
    v = [torch.randn(POOL + 1, HKV, D, generator=gen).to(device, dtype) for _ in range(2)]
    kv_pool = type("KV", (), {"k_buffer": k, "v_buffer": v})()
    req_to_token = torch.zeros(4, 128, dtype=torch.int32, device=device)
    host = HostDetailStore(2, 64, HKV, D, dtype, torch.device(device))
    mover = DetailMover(allocator, req_to_token, kv_pool, host, make_host_room=lambda n: False)
    return MoverWorld(allocator, kv_pool, req_to_token, host, mover)


def request(w: MoverWorld, row: int, sentences: PromptSentences, cfg: ZoomRConfig, prompt: list[int]) -> RequestZoom:
    table = ThoughtTable(cfg, (OPEN,), (CLOSE,), len(prompt), preset=sentences.presets(cfg, prompt, (OPEN,)))
    w.req_to_token[row, :len(prompt)] = w.allocator.alloc(len(prompt)).to(torch.int32)
    st = RequestZoom(rid=f"r{row}", row=row, config=cfg, policy=policy_for("sentencekv"), table=table,
                     prompt_len=len(prompt), protected_len=len(prompt), engine=True, open_ids=(OPEN,),
                     close_ids=(CLOSE,), row_holes=w.mover.row_holes)
    table.append(prompt)
    return st


@pytest.mark.parametrize("device", DEVICES)
def test_the_first_zoom_indexes_every_due_request_at_once_and_parks_what_may_leave(device):
    w = world(device)
    sentences = PromptSentences(_Tokenizer())
    assert sentences.ends.flags == SentenceEnds([i == END for i in range(16)]).flags
    cfg = ZoomRConfig(policy="sentencekv", sentence_min_tokens=3, sink_tokens=3, recent_tokens=6)
    prompts = [[1, 2, END, 3, 4, 5, END, 1, 1, END, 2, 2, 2, END, 3, 3], [4, 4, 4, 4, END, 5, 5, END, 6, 6, 6]]
    sts = [request(w, row, sentences, cfg, p) for row, p in ((1, prompts[0]), (2, prompts[1]))]
    assert [list(s.table.segmenter.preset) for s in sts] == [[(0, 3), (3, 7), (7, 10), (10, 14)], [(0, 5), (5, 8)]]
    rows = [w.req_to_token[s.row].clone() for s in sts]
    sentences.leave(sts, w.req_to_token, w.kv_pool.k_buffer, (0, 1), w.host, w.mover)
    for st, row in zip(sts, rows):
        keys = st.sentences.keys
        for i, (lo, hi) in enumerate(st.table.segmenter.preset):
            for layer in (0, 1):
                expect = w.kv_pool.k_buffer[layer][row[lo:hi].long()].float().mean(0)
                torch.testing.assert_close(keys[i, layer], expect, atol=2e-2, rtol=2e-2)
    # sink 3 and recent 6: request 1 keeps (0, 3) and (10, 14) attended, parks (3, 7) and (7, 10); request 2 (11
    # tokens) may park nothing: (5, 8) ends past 11 - 6
    assert [sts[0].table.location(i) for i in range(4)] == [Location.DEVICE, Location.PARKED, Location.PARKED,
                                                            Location.DEVICE]
    assert [sts[1].table.location(i) for i in range(2)] == [Location.DEVICE, Location.DEVICE]
    assert bool((w.req_to_token[1, 3:10] == 0).all()) and torch.equal(w.req_to_token[1, 10:14], rows[0][10:14])
    assert sts[0].parked_slots == 7 and sts[0].device_tokens() == len(prompts[0]) - 1

    planner = ZoomPlanner(w.kv_pool, w.req_to_token, (0, 1), w.mover, w.allocator)
    queries = {layer: torch.randn(2, HQ, D).to(device) for layer in (0, 1)}
    q = torch.stack([queries[layer] for layer in (0, 1)], dim=1)  # [B, L, Hq, D]
    to_dev = lambda values, dtype=torch.int64: torch.tensor(values, dtype=dtype).to(device)  # noqa: E731
    plans = [Plan(sts[0], 0, (), (1, 2)), Plan(sts[1], 1, (), ())]
    scores = planner._score_sentences(plans, q, to_dev).cpu()
    torch.testing.assert_close(scores, sts[0].sentences.scores(q[0].float()).cpu()[[1, 2]], atol=1e-4, rtol=1e-4)
